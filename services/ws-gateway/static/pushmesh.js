// @pushmesh/client 0.1.0 (Apache-2.0): built from clients/js/src by scripts/build.mjs; do not edit.

// src/backoff.ts
var Backoff = class {
  #attempt = 0;
  #base;
  #max;
  #random;
  constructor(options) {
    if (!(options.baseMs > 0) || !(options.maxMs >= options.baseMs)) {
      throw new RangeError(`backoff needs 0 < baseMs <= maxMs, got baseMs=${options.baseMs} maxMs=${options.maxMs}`);
    }
    this.#base = options.baseMs;
    this.#max = options.maxMs;
    this.#random = options.random ?? Math.random;
  }
  /** How many delays were handed out since the last reset. */
  get attempt() {
    return this.#attempt;
  }
  /** The upper bound of the next delay's window. */
  window() {
    return Math.min(this.#max, this.#base * 2 ** Math.min(this.#attempt, 30));
  }
  /** The next delay, in whole ms. */
  next() {
    const delay = Math.floor(this.#random() * this.window());
    this.#attempt++;
    return delay;
  }
  /** Start over from the smallest window (after a success). */
  reset() {
    this.#attempt = 0;
  }
};

// src/emitter.ts
var Emitter = class {
  #listeners = /* @__PURE__ */ new Map();
  /** Call `listener` on every `type` event; returns a function that removes it. */
  on(type, listener) {
    let set = this.#listeners.get(type);
    if (!set) this.#listeners.set(type, set = /* @__PURE__ */ new Set());
    set.add(listener);
    return () => this.off(type, listener);
  }
  /** Call `listener` on the next `type` event only. */
  once(type, listener) {
    const off = this.on(type, (event) => {
      off();
      listener(event);
    });
    return off;
  }
  off(type, listener) {
    this.#listeners.get(type)?.delete(listener);
  }
  /** @internal */
  emit(type, event) {
    const set = this.#listeners.get(type);
    if (!set || set.size === 0) return;
    for (const listener of [...set]) {
      try {
        listener(event);
      } catch (err) {
        reportListenerError(err);
      }
    }
  }
  /** @internal */
  listenerCount(type) {
    return this.#listeners.get(type)?.size ?? 0;
  }
};
function reportListenerError(err) {
  const report = globalThis.reportError;
  if (typeof report === "function") {
    report(err);
    return;
  }
  setTimeout(() => {
    throw err;
  }, 0);
}

// src/errors.ts
var PushmeshError = class extends Error {
  /** An SDK code (`ClientErrorCode`) or the gateway's reply code. */
  code;
  constructor(code, message, options) {
    super(message, options);
    this.name = "PushmeshError";
    this.code = code;
  }
};
var TimeoutError = class extends PushmeshError {
  constructor(what, ms) {
    super("timeout", `${what} timed out after ${ms} ms`);
    this.name = "TimeoutError";
  }
};
var ReplyError = class extends PushmeshError {
  constructor(code, message) {
    super(code, message);
    this.name = "ReplyError";
  }
};

// src/protocol.ts
function parseFrame(data) {
  if (typeof data !== "string") return void 0;
  let v;
  try {
    v = JSON.parse(data);
  } catch {
    return void 0;
  }
  if (typeof v !== "object" || v === null || typeof v.type !== "string") return void 0;
  switch (v.type) {
    case "welcome":
    case "reply":
    case "message":
    case "subscribed":
    case "unsubscribed":
    case "join":
    case "leave":
      return v;
    default:
      return void 0;
  }
}
var CloseCode = {
  /** The gateway is restarting (drain): reconnect at once. */
  SERVICE_RESTART: 1012,
  /** Slow consumer: the connection's outbound queue overflowed. */
  TRY_AGAIN_LATER: 1013,
  /** Disconnected through the server API. */
  DISCONNECTED: 4e3,
  /** The token is missing, malformed, badly signed or not allowed. */
  UNAUTHORIZED: 4001,
  /** The token expired. */
  TOKEN_EXPIRED: 4002,
  /** The user holds the most connections allowed. */
  TOO_MANY_CONNECTIONS: 4003,
  /** The gateway heard nothing from the client for two ping intervals. */
  IDLE_TIMEOUT: 4004
};
var ClientCloseCode = {
  /** `disconnect()` was called. */
  NORMAL: 1e3,
  /** No reply to a ping within `pingTimeoutMs`: the connection is dead or stuck. */
  NO_PONG: 3001,
  /** No welcome frame within `connectTimeoutMs` of starting to connect. */
  CONNECT_TIMEOUT: 3002,
  /** `getToken` failed or timed out before connecting. */
  TOKEN_UNAVAILABLE: 3003,
  /** Opening the WebSocket threw (a malformed URL, a blocked port…). */
  OPEN_FAILED: 3004
};

// src/positions.ts
var PositionTracker = class {
  #position;
  #floor;
  constructor(start) {
    this.#position = start ? { ...start } : void 0;
  }
  /** The position to send as `since` (undefined: never known). */
  get position() {
    return this.#position ? { ...this.#position } : void 0;
  }
  /** The subscription was made again and recovered from `since`: the messages after it follow. */
  recovered(since) {
    this.#floor = { ...since };
    this.#position = { ...since };
  }
  /**
   * The subscription was made without recovery (a first subscribe, or a
   * failed recovery): resume from the stream's current position when the
   * gateway told it, and accept whatever comes next.
   */
  restart(current) {
    this.#floor = void 0;
    if (current) this.#position = { ...current };
  }
  /** Judge a message at (`epoch`, `offset`) and advance. */
  accept(epoch, offset) {
    const floor = this.#floor;
    if (floor && floor.epoch === epoch && offset <= floor.offset) return { deliver: false };
    const base = floor ?? this.#position;
    let discontinuity;
    if (base) {
      if (base.epoch === "") {
        if (offset > 1) discontinuity = "gap";
      } else if (base.epoch !== epoch) {
        discontinuity = "epoch_changed";
      } else if (offset > base.offset + 1) {
        discontinuity = "gap";
      }
    }
    this.#floor = { epoch, offset };
    const p = this.#position;
    if (!p || p.epoch !== epoch || offset > p.offset) this.#position = { epoch, offset };
    return discontinuity ? { deliver: true, discontinuity } : { deliver: true };
  }
};

// src/subscription.ts
var PERMANENT = /* @__PURE__ */ new Set(["permission_denied", "invalid_channel", "limit_exceeded", "bad_request", "unknown_op"]);
var Subscription = class extends Emitter {
  channel;
  #state = "subscribing";
  #host;
  #tracker;
  /** The subscription has a position of its own to recover from (`since` given, or one subscribe done). */
  #baseline;
  #last;
  /** @internal Created by `Client.subscribe`. */
  constructor(host, channel, options = {}) {
    super();
    this.#host = host;
    this.channel = channel;
    this.#tracker = new PositionTracker(options.since);
    this.#baseline = options.since !== void 0;
    if (options.onMessage) this.on("message", options.onMessage);
  }
  get state() {
    return this.#state;
  }
  /** The last position delivered (or the stream's position at subscribe time): keep it to resume later with `since`. */
  get position() {
    return this.#tracker.position;
  }
  /**
   * Resolves with the `subscribed` event once the subscription is live
   * (at once if it is); rejects when it ends first or after `timeoutMs`.
   */
  ready(timeoutMs = this.#host.timeoutMs) {
    if (this.#state === "subscribed" && this.#last) return Promise.resolve(this.#last);
    if (this.#state === "unsubscribed") {
      return Promise.reject(new PushmeshError("unsubscribed", `subscription to ${this.channel} has ended`));
    }
    return new Promise((resolve, reject) => {
      const done = () => {
        clearTimeout(timer);
        offSub();
        offEnd();
      };
      const timer = setTimeout(() => {
        done();
        reject(new TimeoutError(`subscribe to ${this.channel}`, timeoutMs));
      }, timeoutMs);
      const offSub = this.on("subscribed", (e) => {
        done();
        resolve(e);
      });
      const offEnd = this.on("unsubscribed", (e) => {
        done();
        reject(e.error ?? new PushmeshError("unsubscribed", `subscription to ${this.channel} ended (${e.reason})`));
      });
    });
  }
  /**
   * Leave the channel. Messages stop at once; the promise resolves when
   * the gateway confirmed (at once when not connected), and rejects after
   * `timeoutMs`.
   */
  unsubscribe(timeoutMs = this.#host.timeoutMs) {
    if (this.#state === "unsubscribed") return Promise.resolve();
    return this.#host.unsubscribe(this, timeoutMs);
  }
  // ---- driven by the client -------------------------------------------
  /** @internal The `since` to send with the next subscribe. */
  _since() {
    return this.#tracker.position ?? { epoch: "", offset: 0 };
  }
  /** @internal */
  _setState(state) {
    if (this.#state !== "unsubscribed") this.#state = state;
  }
  /** @internal The gateway accepted a subscribe that carried `since`. */
  _subscribed(reply, since) {
    const position = reply.epoch !== void 0 ? { epoch: reply.epoch, offset: reply.offset ?? 0 } : void 0;
    const resubscribed = this.#last !== void 0;
    const recovering = this.#baseline;
    this.#baseline = true;
    this.#state = "subscribed";
    let recovered = false;
    if (!recovering) {
      this.#tracker.restart(position ?? { epoch: "", offset: 0 });
    } else if (reply.recovered === true) {
      recovered = true;
      this.#tracker.recovered(since);
    } else if (since.epoch === "" && (position === void 0 || position.epoch === "")) {
      recovered = true;
      this.#tracker.restart({ epoch: "", offset: 0 });
    } else {
      this.#tracker.restart(position ?? { epoch: "", offset: 0 });
    }
    const event = position ? { recovering, recovered, resubscribed, position } : { recovering, recovered, resubscribed };
    this.#last = event;
    this.emit("subscribed", event);
    if (!recovering || this.#state !== "subscribed") return;
    if (recovered) {
      this.emit("recovered", position ? { since, position } : { since });
    } else {
      this.emit("notRecovered", position ? { reason: "history", since, position } : { reason: "history", since });
    }
  }
  /** @internal A subscribe was refused; true when it is for good (the subscription has ended). */
  _refused(error) {
    this.emit("error", { error });
    if (!PERMANENT.has(error.code)) return false;
    this._ended({ reason: "refused", error });
    return true;
  }
  /** @internal A message for this channel. */
  _deliver(frame) {
    if (this.#state !== "subscribed") return;
    const message = { channel: this.channel, data: frame.data };
    if (typeof frame.epoch === "string" && typeof frame.offset === "number") {
      const before = this.#tracker.position;
      const verdict = this.#tracker.accept(frame.epoch, frame.offset);
      if (!verdict.deliver) return;
      message.epoch = frame.epoch;
      message.offset = frame.offset;
      if (verdict.discontinuity) {
        const position = { epoch: frame.epoch, offset: frame.offset };
        this.emit("notRecovered", before ? { reason: verdict.discontinuity, since: before, position } : { reason: verdict.discontinuity, position });
        if (this.#state !== "subscribed") return;
      }
    }
    this.emit("message", message);
  }
  /** @internal A join or leave frame for this channel. */
  _presence(kind, event) {
    if (this.#state === "subscribed") this.emit(kind, event);
  }
  /** @internal */
  _ended(event) {
    if (this.#state === "unsubscribed") return;
    this.#state = "unsubscribed";
    this.emit("unsubscribed", event);
  }
};

// src/token.ts
function tokenTimes(token) {
  const part = token.split(".")[1];
  if (!part) return void 0;
  try {
    const b64 = part.replace(/-/g, "+").replace(/_/g, "/");
    const claims = JSON.parse(atob(b64 + "=".repeat((4 - b64.length % 4) % 4)));
    if (typeof claims !== "object" || claims === null) return void 0;
    const { exp, iat } = claims;
    if (typeof exp !== "number" || !Number.isFinite(exp)) return void 0;
    const times = { expiresAt: exp * 1e3 };
    if (typeof iat === "number" && Number.isFinite(iat)) times.issuedAt = iat * 1e3;
    return times;
  } catch {
    return void 0;
  }
}
var MAX_TIMER = 2 ** 31 - 1;
function refreshDelay(times, receivedAt, now, aheadMs, minMs = 500) {
  const withIat = times.issuedAt !== void 0;
  const lifetime = withIat ? times.expiresAt - times.issuedAt : times.expiresAt - receivedAt;
  const remaining = withIat ? lifetime - (now - receivedAt) : times.expiresAt - now;
  const ahead = Math.min(aheadMs, lifetime / 2);
  return Math.min(MAX_TIMER, Math.max(minMs, Math.floor(remaining - ahead)));
}

// src/client.ts
var OPEN = 1;
var ABNORMAL_CLOSURE = 1006;
var ERROR_GRACE_MS = 100;
function positiveOr(value, fallback, name, allowZero = false) {
  if (value === void 0) return fallback;
  if (!Number.isFinite(value) || value < 0 || !allowZero && value === 0) {
    throw new RangeError(`${name} must be a ${allowZero ? "non-negative" : "positive"} number of ms, got ${value}`);
  }
  return value;
}
var Client = class extends Emitter {
  #url;
  #WebSocket;
  #getToken;
  #timeoutMs;
  #connectTimeoutMs;
  #pingIntervalMs;
  #pingTimeoutMs;
  #refreshAheadMs;
  #backoff;
  #retryBackoff;
  #host;
  #state = "disconnected";
  /** The app wants a connection (between `connect()` and `disconnect()` or a terminal close). */
  #want = false;
  #ws;
  /** Bumped whenever a connection attempt starts or ends: late callbacks of an older one check it. */
  #gen = 0;
  #info;
  #attempt = 0;
  #nextId = 1;
  #pending = /* @__PURE__ */ new Map();
  #subs = /* @__PURE__ */ new Map();
  /** Channels with an unsubscribe in flight: their stragglers are dropped, not passed on as `message`. */
  #leaving = /* @__PURE__ */ new Map();
  #waiters = /* @__PURE__ */ new Set();
  #reconnectTimer;
  #connectTimer;
  #pingTimer;
  #refreshTimer;
  /** Retries of refused subscribes and refreshes, cleared with the connection. */
  #retryTimers = /* @__PURE__ */ new Set();
  #lastHeard = 0;
  #token;
  /** When `#token` was received (ms since the epoch). */
  #tokenAt = 0;
  /** The token the gateway refused with 4001/4002, and the code. */
  #refused;
  #authId;
  #authAnswered = false;
  /** The gateway checked this connection's token (so it enforces its expiry, and takes `refresh`). */
  #authenticated = false;
  #refreshUnsupported = false;
  constructor(url, options = {}) {
    super();
    if (typeof url !== "string" && typeof url !== "function") {
      throw new TypeError("url must be a ws:// or wss:// URL, or a function returning one");
    }
    this.#url = url;
    const WS = options.WebSocket ?? globalThis.WebSocket;
    if (typeof WS !== "function") {
      throw new PushmeshError(
        "no_websocket",
        "no WebSocket constructor: this runtime has no global WebSocket (Node.js 20 needs --experimental-websocket; Node.js 22+ and browsers have it). Pass one as the WebSocket option."
      );
    }
    this.#WebSocket = WS;
    if (options.getToken !== void 0 && typeof options.getToken !== "function") {
      throw new TypeError("getToken must be a function returning the JWT (or a promise of it)");
    }
    this.#getToken = options.getToken;
    this.#token = options.token;
    this.#tokenAt = Date.now();
    this.#timeoutMs = positiveOr(options.timeoutMs, 1e4, "timeoutMs");
    this.#connectTimeoutMs = positiveOr(options.connectTimeoutMs, 1e4, "connectTimeoutMs");
    this.#pingIntervalMs = positiveOr(options.pingIntervalMs, 25e3, "pingIntervalMs", true);
    this.#pingTimeoutMs = positiveOr(options.pingTimeoutMs, 1e4, "pingTimeoutMs");
    this.#refreshAheadMs = positiveOr(options.refreshAheadMs, 3e4, "refreshAheadMs", true);
    const baseMs = positiveOr(options.minReconnectDelayMs, 500, "minReconnectDelayMs");
    const maxMs = positiveOr(options.maxReconnectDelayMs, Math.max(1e4, baseMs), "maxReconnectDelayMs");
    this.#backoff = new Backoff({ baseMs, maxMs });
    this.#retryBackoff = new Backoff({ baseMs: Math.max(baseMs, Math.min(1e3, maxMs)), maxMs });
    const timeoutMs = this.#timeoutMs;
    this.#host = {
      timeoutMs,
      unsubscribe: (sub, ms) => this.#unsubscribe(sub, ms)
    };
  }
  get state() {
    return this.#state;
  }
  /** The current connection's welcome (undefined while not connected). */
  get connection() {
    return this.#info ? { ...this.#info } : void 0;
  }
  /**
   * Connect, and stay connected until `disconnect()`. Resolves once
   * connected; rejects when the client gives up for good (the server said
   * not to reconnect, or auth failed with no new token) or after
   * `timeoutMs` (the client then keeps trying; `disconnect()` stops it).
   */
  connect(timeoutMs = this.#timeoutMs) {
    this.#want = true;
    if (this.#state === "connected" && this.#info) return Promise.resolve({ ...this.#info });
    if (this.#state === "disconnected" && this.#reconnectTimer === void 0) {
      this.#attempt = 0;
      this.#backoff.reset();
      void this.#open();
    }
    return new Promise((resolve, reject) => {
      const waiter = {
        resolve,
        reject,
        timer: setTimeout(() => {
          this.#waiters.delete(waiter);
          reject(new TimeoutError("connect", timeoutMs));
        }, timeoutMs)
      };
      this.#waiters.add(waiter);
    });
  }
  /** Close the connection (code 1000) and stop reconnecting. Subscriptions stay, and are made again by the next `connect()`. */
  disconnect() {
    this.#want = false;
    clearTimeout(this.#reconnectTimer);
    this.#reconnectTimer = void 0;
    if (this.#state !== "disconnected") {
      this.#closeSocket(ClientCloseCode.NORMAL, "client disconnect");
      this.#closed(ClientCloseCode.NORMAL, "disconnect() called");
    } else {
      this.#gen++;
    }
    this.#settleWaiters(new PushmeshError("disconnected", "disconnect() was called before the client connected"));
  }
  /**
   * Subscribe to `channel`. The subscription is made now when connected,
   * else on the next connection, and again on every reconnection (with
   * `since`, to recover what was missed). One subscription per channel.
   */
  subscribe(channel, options = {}) {
    if (typeof channel !== "string" || channel.length === 0) throw new TypeError("channel must be a non-empty string");
    if (this.#subs.has(channel)) {
      throw new PushmeshError(
        "already_subscribed",
        `already subscribed to ${JSON.stringify(channel)}: use getSubscription(), or unsubscribe() first`
      );
    }
    const sub = new Subscription(this.#host, channel, options);
    this.#subs.set(channel, sub);
    if (this.#state === "connected") this.#sendSubscribe(sub);
    return sub;
  }
  getSubscription(channel) {
    return this.#subs.get(channel);
  }
  /** The subscriptions, in the order they were made. */
  get subscriptions() {
    return [...this.#subs.values()];
  }
  /** Round-trip a `ping` command; resolves with the time it took (ms). */
  async ping(timeoutMs = this.#timeoutMs) {
    const start = performance.now();
    await this.#command({ op: "ping" }, timeoutMs);
    return performance.now() - start;
  }
  /**
   * Publish `data` to a channel whose namespace allows client publishes
   * (your backend may change or refuse it first). Resolves with the
   * message's stream position once a hub accepted it; rejects with a
   * `ReplyError` (e.g. `permission_denied`) or a `TimeoutError`. Not
   * retried: a publish whose answer was lost may have happened.
   */
  async publish(channel, data, timeoutMs = this.#timeoutMs) {
    const reply = await this.#command({ op: "publish", channel, data }, timeoutMs);
    return { epoch: reply.epoch ?? "", offset: reply.offset ?? 0 };
  }
  /** Call `method` on your backend through the gateway; resolves with its answer. */
  async rpc(method, data, timeoutMs = this.#timeoutMs) {
    const cmd = data === void 0 ? { op: "rpc", method } : { op: "rpc", method, data };
    const reply = await this.#command(cmd, timeoutMs);
    return reply.data;
  }
  /** Who is subscribed to `channel` (namespaces with `presence`). */
  async presence(channel, timeoutMs = this.#timeoutMs) {
    const reply = await this.#command({ op: "presence", channel }, timeoutMs);
    return reply.data;
  }
  // ---- connecting ------------------------------------------------------
  async #open() {
    this.#reconnectTimer = void 0;
    if (!this.#want || this.#state !== "disconnected") return;
    const gen = ++this.#gen;
    let url;
    try {
      url = typeof this.#url === "function" ? this.#url() : this.#url;
    } catch (err) {
      this.emit("error", { error: new PushmeshError("protocol", `the url function threw: ${String(err)}`, { cause: err }) });
      this.#closed(ClientCloseCode.OPEN_FAILED, "the url function threw");
      return;
    }
    this.#setState("connecting");
    this.emit("connecting", { attempt: ++this.#attempt, url });
    if (gen !== this.#gen) return;
    this.#connectTimer = setTimeout(() => {
      if (gen !== this.#gen) return;
      this.#closeSocket(ClientCloseCode.CONNECT_TIMEOUT, "connect timeout");
      this.#closed(ClientCloseCode.CONNECT_TIMEOUT, `no welcome from the gateway within ${this.#connectTimeoutMs} ms`);
    }, this.#connectTimeoutMs);
    let token;
    try {
      token = await this.#tokenForConnect();
    } catch (err) {
      if (gen !== this.#gen) return;
      const error = err instanceof PushmeshError ? err : new PushmeshError("token", `getToken failed: ${String(err)}`, { cause: err });
      if (error.code === "unauthorized" || error.code === "token_expired") {
        this.#giveUp(error);
      } else {
        this.emit("error", { error });
        this.#closed(ClientCloseCode.TOKEN_UNAVAILABLE, error.message);
      }
      return;
    }
    if (gen !== this.#gen) return;
    let ws;
    try {
      ws = new this.#WebSocket(url);
    } catch (err) {
      const error = new PushmeshError("protocol", `cannot open a WebSocket to ${url}: ${String(err)}`, { cause: err });
      this.emit("error", { error });
      this.#closed(ClientCloseCode.OPEN_FAILED, error.message);
      return;
    }
    this.#ws = ws;
    this.#authId = void 0;
    this.#authAnswered = false;
    ws.onopen = () => {
      if (ws !== this.#ws || !token) return;
      this.#authId = this.#nextId++;
      ws.send(JSON.stringify({ id: this.#authId, op: "auth", token }));
    };
    ws.onmessage = (event) => {
      if (ws === this.#ws) this.#frame(event.data);
    };
    ws.onclose = (event) => {
      if (ws !== this.#ws) return;
      this.#ws = void 0;
      this.#closed(event.code, event.reason ?? "");
    };
    ws.onerror = () => {
      setTimeout(() => {
        if (ws !== this.#ws) return;
        this.#closeSocket(ClientCloseCode.NORMAL, "connection failed");
        this.#closed(ABNORMAL_CLOSURE, "the connection failed (an error event with no close event)");
      }, ERROR_GRACE_MS);
    };
  }
  /** The token to connect with; may call `getToken`. */
  async #tokenForConnect() {
    const refused = this.#refused;
    if (!this.#getToken) return this.#token;
    if (this.#token && !refused && !this.#tokenDue()) return this.#token;
    const token = await this.#callGetToken();
    if (refused && token === refused.token) {
      const code = refused.code === CloseCode.TOKEN_EXPIRED ? "token_expired" : "unauthorized";
      throw new PushmeshError(code, `getToken returned the token the gateway refused (${refused.code}); not reconnecting`);
    }
    this.#refused = void 0;
    this.#token = token;
    this.#tokenAt = Date.now();
    return token;
  }
  async #callGetToken() {
    const getToken = this.#getToken;
    const token = await withTimeout(Promise.resolve().then(getToken), this.#timeoutMs, "getToken");
    if (typeof token !== "string" || token.length === 0) {
      throw new PushmeshError("token", "getToken must return the JWT as a non-empty string");
    }
    return token;
  }
  /** Whether the current token is due for replacement. */
  #tokenDue() {
    const times = this.#token ? tokenTimes(this.#token) : void 0;
    if (!times) return false;
    return refreshDelay(times, this.#tokenAt, Date.now(), this.#refreshAheadMs, 0) <= 0;
  }
  // ---- frames ----------------------------------------------------------
  #frame(data) {
    this.#lastHeard = performance.now();
    const frame = parseFrame(data);
    if (!frame) {
      const text = typeof data === "string" ? data.slice(0, 80) : `a ${typeof data} frame`;
      this.emit("error", { error: new PushmeshError("protocol", `not a frame of the pushmesh protocol: ${text}`) });
      return;
    }
    switch (frame.type) {
      case "welcome":
        return this.#welcome(frame);
      case "reply":
        return this.#reply(frame);
      case "message":
        return this.#message(frame);
      case "subscribed":
        this.emit("serverSubscribed", { channel: frame.channel });
        return;
      case "join":
      case "leave": {
        const event = { channel: frame.channel, connection: frame.connection };
        if (frame.user !== void 0) event.user = frame.user;
        this.#subs.get(frame.channel)?._presence(frame.type, event);
        return;
      }
      case "unsubscribed": {
        const sub = this.#subs.get(frame.channel);
        if (sub) {
          this.#subs.delete(frame.channel);
          sub._ended({ reason: "server" });
        }
        this.emit("serverUnsubscribed", { channel: frame.channel });
        return;
      }
    }
  }
  #welcome(frame) {
    if (this.#state !== "connecting") return;
    clearTimeout(this.#connectTimer);
    this.#connectTimer = void 0;
    this.#authenticated = this.#authAnswered;
    const info = { connection: frame.connection, gateway: frame.gateway };
    if (frame.user !== void 0) info.user = frame.user;
    this.#info = info;
    this.#attempt = 0;
    this.#backoff.reset();
    this.#retryBackoff.reset();
    const subs = [...this.#subs.values()];
    this.#setState("connected");
    this.emit("connected", { ...info });
    if (this.state !== "connected") return;
    this.#settleWaiters(void 0, info);
    this.#startLiveness();
    this.#scheduleRefresh();
    for (const sub of subs) {
      if (this.state !== "connected") return;
      if (this.#subs.get(sub.channel) === sub && sub.state !== "unsubscribed") this.#sendSubscribe(sub);
    }
  }
  #reply(frame) {
    if (frame.id !== null && frame.id === this.#authId) {
      this.#authId = void 0;
      this.#authAnswered = true;
      return;
    }
    const pending = frame.id === null ? void 0 : this.#pending.get(frame.id);
    if (!pending) {
      if (frame.error) this.emit("error", { error: new ReplyError(frame.error.code, frame.error.message) });
      return;
    }
    this.#pending.delete(frame.id);
    clearTimeout(pending.timer);
    if (frame.error) pending.reject(new ReplyError(frame.error.code, frame.error.message));
    else pending.resolve(frame);
  }
  #message(frame) {
    if (typeof frame.channel === "string") {
      const sub = this.#subs.get(frame.channel);
      if (sub) {
        sub._deliver(frame);
        return;
      }
      if (this.#leaving.has(frame.channel)) return;
    }
    const message = { data: frame.data };
    if (typeof frame.channel === "string") message.channel = frame.channel;
    if (typeof frame.epoch === "string") message.epoch = frame.epoch;
    if (typeof frame.offset === "number") message.offset = frame.offset;
    this.emit("message", message);
  }
  // ---- commands --------------------------------------------------------
  /**
   * Send a command; `pending` hears its reply (or failure) synchronously,
   * in frame order: a subscribe's reply must be handled before the
   * recovered messages right behind it, which a promise's `then` (run
   * later, as a microtask) would not guarantee.
   */
  #send(cmd, timeoutMs, pending) {
    const ws = this.#ws;
    if (this.#state !== "connected" || !ws || ws.readyState !== OPEN) {
      pending.reject(new PushmeshError("not_connected", `cannot send ${cmd.op}: not connected`));
      return;
    }
    const id = this.#nextId++;
    const timer = setTimeout(() => {
      this.#pending.delete(id);
      pending.reject(new TimeoutError(`${cmd.op} (command ${id})`, timeoutMs));
    }, timeoutMs);
    this.#pending.set(id, { ...pending, timer });
    try {
      ws.send(JSON.stringify({ id, ...cmd }));
    } catch (err) {
      clearTimeout(timer);
      this.#pending.delete(id);
      pending.reject(new PushmeshError("connection_closed", `cannot send ${cmd.op}: ${String(err)}`, { cause: err }));
    }
  }
  #command(cmd, timeoutMs) {
    return new Promise((resolve, reject) => this.#send(cmd, timeoutMs, { resolve, reject }));
  }
  #sendSubscribe(sub) {
    const since = sub._since();
    const gen = this.#gen;
    sub._setState("subscribing");
    this.#send({ op: "subscribe", channel: sub.channel, since }, this.#timeoutMs, {
      resolve: (reply) => {
        if (gen !== this.#gen || this.#subs.get(sub.channel) !== sub) return;
        sub._subscribed(reply, since);
      },
      reject: (err) => {
        if (gen !== this.#gen || this.#subs.get(sub.channel) !== sub) return;
        if (err.code === "connection_closed" || err.code === "not_connected") return;
        if (sub._refused(err)) {
          this.#subs.delete(sub.channel);
          return;
        }
        if (err.code === "closing") return;
        this.#later(this.#retryBackoff.next(), () => {
          if (gen === this.#gen && this.#subs.get(sub.channel) === sub && sub.state === "subscribing") {
            this.#sendSubscribe(sub);
          }
        });
      }
    });
  }
  #unsubscribe(sub, timeoutMs) {
    const channel = sub.channel;
    if (this.#subs.get(channel) === sub) this.#subs.delete(channel);
    sub._ended({ reason: "client" });
    if (this.#state !== "connected") return Promise.resolve();
    this.#leaving.set(channel, (this.#leaving.get(channel) ?? 0) + 1);
    const gen = this.#gen;
    const done = () => {
      if (gen !== this.#gen) return;
      const n = (this.#leaving.get(channel) ?? 1) - 1;
      if (n > 0) this.#leaving.set(channel, n);
      else this.#leaving.delete(channel);
    };
    return this.#command({ op: "unsubscribe", channel }, timeoutMs).then(
      () => done(),
      (err) => {
        done();
        if (err.code === "connection_closed" || err.code === "not_connected") return;
        throw err;
      }
    );
  }
  // ---- liveness --------------------------------------------------------
  #startLiveness() {
    if (this.#pingIntervalMs === 0) return;
    this.#lastHeard = performance.now();
    this.#armPing(this.#pingIntervalMs);
  }
  #armPing(delay) {
    clearTimeout(this.#pingTimer);
    this.#pingTimer = setTimeout(() => this.#checkLiveness(), delay);
  }
  #checkLiveness() {
    if (this.#state !== "connected") return;
    const silent = performance.now() - this.#lastHeard;
    if (silent < this.#pingIntervalMs) {
      this.#armPing(this.#pingIntervalMs - silent);
      return;
    }
    const gen = this.#gen;
    this.#command({ op: "ping" }, this.#pingTimeoutMs).then(
      () => {
        if (gen === this.#gen) this.#armPing(this.#pingIntervalMs);
      },
      (err) => {
        if (gen !== this.#gen || !(err instanceof TimeoutError)) return;
        const reason = `no reply to a ping within ${this.#pingTimeoutMs} ms`;
        this.#closeSocket(ClientCloseCode.NO_PONG, "no reply to ping");
        this.#closed(ClientCloseCode.NO_PONG, reason);
      }
    );
  }
  // ---- token refresh ---------------------------------------------------
  #scheduleRefresh() {
    clearTimeout(this.#refreshTimer);
    this.#refreshTimer = void 0;
    if (!this.#getToken || !this.#authenticated || this.#refreshUnsupported || !this.#token) return;
    const times = tokenTimes(this.#token);
    if (!times) return;
    const delay = refreshDelay(times, this.#tokenAt, Date.now(), this.#refreshAheadMs);
    this.#refreshTimer = setTimeout(() => void this.#refresh(), delay);
  }
  async #refresh() {
    const gen = this.#gen;
    const retry = () => this.#later(this.#retryBackoff.next(), () => void (gen === this.#gen && this.#refresh()));
    let token;
    try {
      token = await this.#callGetToken();
    } catch (err) {
      if (gen !== this.#gen) return;
      const error = err instanceof PushmeshError ? err : new PushmeshError("token", `getToken failed: ${String(err)}`, { cause: err });
      this.emit("error", { error });
      retry();
      return;
    }
    if (gen !== this.#gen) return;
    if (token === this.#token) {
      retry();
      return;
    }
    try {
      await this.#command({ op: "refresh", token }, this.#timeoutMs);
    } catch (err) {
      if (gen !== this.#gen) return;
      const error = err;
      if (error.code === "connection_closed" || error.code === "not_connected") return;
      if (error.code === "unknown_op") {
        this.#refreshUnsupported = true;
      } else {
        retry();
      }
      this.emit("error", { error });
      return;
    }
    if (gen !== this.#gen) return;
    this.#token = token;
    this.#tokenAt = Date.now();
    this.#retryBackoff.reset();
    const times = tokenTimes(token);
    this.emit("refreshed", times ? { expiresAt: times.expiresAt } : {});
    this.#scheduleRefresh();
  }
  // ---- the end of a connection ----------------------------------------
  /** Close the current socket from this side; its own close event will be ignored. */
  #closeSocket(code, reason) {
    const ws = this.#ws;
    this.#ws = void 0;
    if (!ws) return;
    ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
    try {
      ws.close(code, reason);
    } catch {
    }
  }
  /** A connection (or an attempt at one) ended: clean up, tell the app, decide what next. */
  #closed(code, reason) {
    const wasConnected = this.#state === "connected";
    this.#gen++;
    this.#ws = void 0;
    this.#info = void 0;
    this.#authId = void 0;
    for (const timer of [this.#connectTimer, this.#pingTimer, this.#refreshTimer, ...this.#retryTimers]) clearTimeout(timer);
    this.#connectTimer = this.#pingTimer = this.#refreshTimer = void 0;
    this.#retryTimers.clear();
    const closed = new PushmeshError("connection_closed", `the connection closed (${code}${reason ? `: ${reason}` : ""}) before the reply`);
    for (const pending of this.#pending.values()) {
      clearTimeout(pending.timer);
      pending.reject(closed);
    }
    this.#pending.clear();
    this.#leaving.clear();
    for (const sub of this.#subs.values()) sub._setState("subscribing");
    this.#setState("disconnected");
    let delay = 0;
    let terminal;
    if (this.#want) {
      if (code === CloseCode.UNAUTHORIZED || code === CloseCode.TOKEN_EXPIRED) {
        const what = code === CloseCode.UNAUTHORIZED ? "unauthorized" : "token_expired";
        if (this.#getToken) {
          this.#refused = { token: this.#token, code };
          delay = this.#backoff.next();
        } else {
          terminal = new PushmeshError(what, `the gateway refused the token (${code}: ${reason}); not reconnecting without getToken`);
        }
      } else if (code === CloseCode.DISCONNECTED || code === CloseCode.TOO_MANY_CONNECTIONS || code >= 4005 && code <= 4999) {
        terminal = new PushmeshError("closed_by_server", `the server closed the connection (${code}${reason ? `: ${reason}` : ""}); not reconnecting`);
      } else if (code === CloseCode.SERVICE_RESTART && wasConnected) {
        this.#backoff.reset();
        delay = 0;
      } else {
        delay = this.#backoff.next();
      }
    }
    if (terminal) this.#want = false;
    const reconnect = this.#want;
    this.emit("disconnected", reconnect ? { code, reason, reconnect, delayMs: delay } : { code, reason, reconnect });
    if (terminal) this.#giveUp(terminal);
    if (reconnect && this.#want && this.#state === "disconnected" && this.#reconnectTimer === void 0) {
      this.#reconnectTimer = setTimeout(() => void this.#open(), delay);
    }
  }
  /** Stop for good: tell the app why, and fail the `connect()` promises. */
  #giveUp(error) {
    this.#want = false;
    if (this.#state !== "disconnected") {
      this.#closeSocket(ClientCloseCode.NORMAL, "giving up");
      this.#closed(ClientCloseCode.NORMAL, error.message);
    }
    this.emit("error", { error });
    this.#settleWaiters(error);
  }
  #settleWaiters(error, info) {
    for (const waiter of this.#waiters) {
      clearTimeout(waiter.timer);
      if (error) waiter.reject(error);
      else waiter.resolve({ ...info });
    }
    this.#waiters.clear();
  }
  #setState(state) {
    this.#state = state;
  }
  /** A timer that dies with the connection. */
  #later(delay, fn) {
    const timer = setTimeout(() => {
      this.#retryTimers.delete(timer);
      fn();
    }, delay);
    this.#retryTimers.add(timer);
  }
};
function withTimeout(promise, ms, what) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new TimeoutError(what, ms)), ms);
    promise.then(
      (value) => {
        clearTimeout(timer);
        resolve(value);
      },
      (err) => {
        clearTimeout(timer);
        reject(err);
      }
    );
  });
}
export {
  Backoff,
  Client,
  ClientCloseCode,
  CloseCode,
  Emitter,
  PositionTracker,
  PushmeshError,
  ReplyError,
  Subscription,
  TimeoutError,
  refreshDelay,
  tokenTimes,
  withTimeout
};
