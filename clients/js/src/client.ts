/**
 * The connection to a pushmesh gateway, kept alive for the app.
 *
 * One WebSocket at a time. The client owns the hard parts every app would
 * otherwise write itself (docs/sdk.md says what each does):
 *
 * - reconnecting with exponential backoff and full jitter; at once after
 *   1012 (the gateway drains: the next one is elsewhere); never after the
 *   server said "stop" (4000, 4003, 4005–4999), nor after an auth failure
 *   (4001, 4002) unless `getToken` yields a new token;
 * - making every subscription again on each new connection with `since`,
 *   so the gateway sends what was missed, and telling the app when it
 *   could not (`notRecovered`);
 * - dropping duplicates and spotting holes by stream position;
 * - liveness: a `ping` command when the connection has been silent for
 *   `pingIntervalMs`, and a new connection when its reply does not come
 *   within `pingTimeoutMs` (a browser cannot see WebSocket pings, so a
 *   half-open TCP connection would otherwise look alive forever);
 * - presenting a fresh token on the live connection (`refresh`) before the
 *   current one expires.
 *
 * Every promise it returns has a deadline (`timeoutMs` by default).
 */

import { Backoff } from "./backoff.js";
import { Emitter } from "./emitter.js";
import { PushmeshError, ReplyError, TimeoutError } from "./errors.js";
import type { StreamPosition } from "./positions.js";
import {
  ClientCloseCode,
  CloseCode,
  type Command,
  type MessageFrame,
  parseFrame,
  type ReplyFrame,
  type WelcomeFrame,
} from "./protocol.js";
import { type PresenceEvent, type SubscribeOptions, Subscription, type SubscriptionHost } from "./subscription.js";
import { refreshDelay, tokenTimes } from "./token.js";

/** The part of the WHATWG `WebSocket` the client uses. */
export interface WebSocketLike {
  readonly readyState: number;
  onopen: ((event: unknown) => void) | null;
  onmessage: ((event: { data: unknown }) => void) | null;
  onclose: ((event: { code: number; reason: string }) => void) | null;
  onerror: ((event: unknown) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}

export type WebSocketConstructor = new (url: string) => WebSocketLike;

export interface ClientOptions {
  /** A JWT, for a gateway that requires one (sent as the first frame, not in the URL). */
  token?: string;
  /**
   * Fetches a JWT: called before connecting when there is no valid token,
   * ahead of the current token's expiry (the new one is presented on the
   * live connection), and after the gateway refused a token (4001/4002).
   */
  getToken?: () => string | Promise<string>;
  /** The WebSocket constructor; the global one by default (Node.js 20 has it only with --experimental-websocket). */
  WebSocket?: WebSocketConstructor;
  /** The deadline of every promise the client returns, in ms (10,000). */
  timeoutMs?: number;
  /** How long a connection attempt may take to reach the welcome frame, in ms (10,000). */
  connectTimeoutMs?: number;
  /** The first reconnect window, in ms (500): the delay is drawn from [0, window], which doubles per attempt. */
  minReconnectDelayMs?: number;
  /** The largest reconnect window, in ms (10,000). */
  maxReconnectDelayMs?: number;
  /** Send a `ping` after this long without hearing from the gateway, in ms (25,000; 0: never). */
  pingIntervalMs?: number;
  /** Reconnect when a ping is not answered within this, in ms (10,000). */
  pingTimeoutMs?: number;
  /** Fetch the next token this long before the current one expires, in ms (30,000; at most half its lifetime). */
  refreshAheadMs?: number;
}

export type ConnectionState = "disconnected" | "connecting" | "connected";

export interface ConnectingEvent {
  /** 1 for the first attempt since the last successful connection. */
  attempt: number;
  url: string;
}

export interface ConnectedEvent {
  /** This connection's id (a backend sends to it with `POST /send {"connection": …}`). */
  connection: string;
  gateway: string;
  /** The token's `sub`, when the gateway authenticated one. */
  user?: string;
}

export interface DisconnectedEvent {
  /** The close code: the gateway's (docs/protocol.md), the browser's (1006: the connection failed), or the client's own (`ClientCloseCode`). */
  code: number;
  reason: string;
  /** Whether the client will connect again by itself. */
  reconnect: boolean;
  /** When it will, how soon (ms). */
  delayMs?: number;
}

/** A delivery no subscription took: a broadcast, a direct send, or a channel the backend subscribed this connection to. */
export interface ClientMessage<T = unknown> {
  channel?: string;
  data: T;
  epoch?: string;
  offset?: number;
}

/** The answer to `presence()`. */
export interface PresenceAnswer {
  channel: string;
  connections: number;
  users: number;
  clients: { connection: string; user?: string }[];
  /** True when some gateway did not answer in time: the lists may be short. */
  partial: boolean;
}

export interface ClientEvents {
  connecting: ConnectingEvent;
  connected: ConnectedEvent;
  disconnected: DisconnectedEvent;
  error: { error: PushmeshError };
  message: ClientMessage;
  /** The backend subscribed this connection to a channel (`POST /subscribe`); its messages come as `message` events. */
  serverSubscribed: { channel: string };
  /** The backend unsubscribed this connection from a channel (`POST /unsubscribe`). */
  serverUnsubscribed: { channel: string };
  /** A new token was accepted on the live connection. */
  refreshed: { expiresAt?: number };
}

interface Pending {
  resolve: (reply: ReplyFrame) => void;
  reject: (error: PushmeshError) => void;
  timer: ReturnType<typeof setTimeout>;
}

interface Waiter {
  resolve: (event: ConnectedEvent) => void;
  reject: (error: PushmeshError) => void;
  timer: ReturnType<typeof setTimeout>;
}

const OPEN = 1;
/** What browsers report when a connection failed or dropped without a close frame. */
const ABNORMAL_CLOSURE = 1006;
/** How long after an `error` event a `close` event must come before the client acts without one. */
const ERROR_GRACE_MS = 100;

function positiveOr(value: number | undefined, fallback: number, name: string, allowZero = false): number {
  if (value === undefined) return fallback;
  if (!Number.isFinite(value) || value < 0 || (!allowZero && value === 0)) {
    throw new RangeError(`${name} must be a ${allowZero ? "non-negative" : "positive"} number of ms, got ${value}`);
  }
  return value;
}

export class Client extends Emitter<ClientEvents> {
  readonly #url: string | (() => string);
  readonly #WebSocket: WebSocketConstructor;
  readonly #getToken: (() => string | Promise<string>) | undefined;
  readonly #timeoutMs: number;
  readonly #connectTimeoutMs: number;
  readonly #pingIntervalMs: number;
  readonly #pingTimeoutMs: number;
  readonly #refreshAheadMs: number;
  readonly #backoff: Backoff;
  readonly #retryBackoff: Backoff;
  readonly #host: SubscriptionHost;

  #state: ConnectionState = "disconnected";
  /** The app wants a connection (between `connect()` and `disconnect()` or a terminal close). */
  #want = false;
  #ws: WebSocketLike | undefined;
  /** Bumped whenever a connection attempt starts or ends: late callbacks of an older one check it. */
  #gen = 0;
  #info: ConnectedEvent | undefined;
  #attempt = 0;
  #nextId = 1;
  #pending = new Map<number, Pending>();
  #subs = new Map<string, Subscription<never>>();
  /** Channels with an unsubscribe in flight: their stragglers are dropped, not passed on as `message`. */
  #leaving = new Map<string, number>();
  #waiters = new Set<Waiter>();

  #reconnectTimer: ReturnType<typeof setTimeout> | undefined;
  #connectTimer: ReturnType<typeof setTimeout> | undefined;
  #pingTimer: ReturnType<typeof setTimeout> | undefined;
  #refreshTimer: ReturnType<typeof setTimeout> | undefined;
  /** Retries of refused subscribes and refreshes, cleared with the connection. */
  #retryTimers = new Set<ReturnType<typeof setTimeout>>();
  #lastHeard = 0;

  #token: string | undefined;
  /** When `#token` was received (ms since the epoch). */
  #tokenAt = 0;
  /** The token the gateway refused with 4001/4002, and the code. */
  #refused: { token: string | undefined; code: number } | undefined;
  #authId: number | undefined;
  #authAnswered = false;
  /** The gateway checked this connection's token (so it enforces its expiry, and takes `refresh`). */
  #authenticated = false;
  #refreshUnsupported = false;

  constructor(url: string | (() => string), options: ClientOptions = {}) {
    super();
    if (typeof url !== "string" && typeof url !== "function") {
      throw new TypeError("url must be a ws:// or wss:// URL, or a function returning one");
    }
    this.#url = url;
    const WS = options.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
    if (typeof WS !== "function") {
      throw new PushmeshError(
        "no_websocket",
        "no WebSocket constructor: this runtime has no global WebSocket (Node.js 20 needs --experimental-websocket; " +
          "Node.js 22+ and browsers have it). Pass one as the WebSocket option.",
      );
    }
    this.#WebSocket = WS;
    if (options.getToken !== undefined && typeof options.getToken !== "function") {
      throw new TypeError("getToken must be a function returning the JWT (or a promise of it)");
    }
    this.#getToken = options.getToken;
    this.#token = options.token;
    this.#tokenAt = Date.now();
    this.#timeoutMs = positiveOr(options.timeoutMs, 10_000, "timeoutMs");
    this.#connectTimeoutMs = positiveOr(options.connectTimeoutMs, 10_000, "connectTimeoutMs");
    this.#pingIntervalMs = positiveOr(options.pingIntervalMs, 25_000, "pingIntervalMs", true);
    this.#pingTimeoutMs = positiveOr(options.pingTimeoutMs, 10_000, "pingTimeoutMs");
    this.#refreshAheadMs = positiveOr(options.refreshAheadMs, 30_000, "refreshAheadMs", true);
    const baseMs = positiveOr(options.minReconnectDelayMs, 500, "minReconnectDelayMs");
    const maxMs = positiveOr(options.maxReconnectDelayMs, Math.max(10_000, baseMs), "maxReconnectDelayMs");
    this.#backoff = new Backoff({ baseMs, maxMs });
    this.#retryBackoff = new Backoff({ baseMs: Math.max(baseMs, Math.min(1000, maxMs)), maxMs });
    const timeoutMs = this.#timeoutMs;
    this.#host = {
      timeoutMs,
      unsubscribe: (sub, ms) => this.#unsubscribe(sub, ms),
    };
  }

  get state(): ConnectionState {
    return this.#state;
  }

  /** The current connection's welcome (undefined while not connected). */
  get connection(): ConnectedEvent | undefined {
    return this.#info ? { ...this.#info } : undefined;
  }

  /**
   * Connect, and stay connected until `disconnect()`. Resolves once
   * connected; rejects when the client gives up for good (the server said
   * not to reconnect, or auth failed with no new token) or after
   * `timeoutMs` (the client then keeps trying; `disconnect()` stops it).
   */
  connect(timeoutMs: number = this.#timeoutMs): Promise<ConnectedEvent> {
    this.#want = true;
    if (this.#state === "connected" && this.#info) return Promise.resolve({ ...this.#info });
    if (this.#state === "disconnected" && this.#reconnectTimer === undefined) {
      this.#attempt = 0;
      this.#backoff.reset();
      void this.#open();
    }
    return new Promise((resolve, reject) => {
      const waiter: Waiter = {
        resolve,
        reject,
        timer: setTimeout(() => {
          this.#waiters.delete(waiter);
          reject(new TimeoutError("connect", timeoutMs));
        }, timeoutMs),
      };
      this.#waiters.add(waiter);
    });
  }

  /** Close the connection (code 1000) and stop reconnecting. Subscriptions stay, and are made again by the next `connect()`. */
  disconnect(): void {
    this.#want = false;
    clearTimeout(this.#reconnectTimer);
    this.#reconnectTimer = undefined;
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
  subscribe<T = unknown>(channel: string, options: SubscribeOptions<T> = {}): Subscription<T> {
    if (typeof channel !== "string" || channel.length === 0) throw new TypeError("channel must be a non-empty string");
    if (this.#subs.has(channel)) {
      throw new PushmeshError(
        "already_subscribed",
        `already subscribed to ${JSON.stringify(channel)}: use getSubscription(), or unsubscribe() first`,
      );
    }
    const sub = new Subscription<T>(this.#host, channel, options);
    this.#subs.set(channel, sub as Subscription<never>);
    if (this.#state === "connected") this.#sendSubscribe(sub as Subscription<never>);
    return sub;
  }

  getSubscription(channel: string): Subscription | undefined {
    return this.#subs.get(channel) as Subscription | undefined;
  }

  /** The subscriptions, in the order they were made. */
  get subscriptions(): Subscription[] {
    return [...this.#subs.values()] as Subscription[];
  }

  /** Round-trip a `ping` command; resolves with the time it took (ms). */
  async ping(timeoutMs: number = this.#timeoutMs): Promise<number> {
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
  async publish(channel: string, data: unknown, timeoutMs: number = this.#timeoutMs): Promise<StreamPosition> {
    const reply = await this.#command({ op: "publish", channel, data }, timeoutMs);
    return { epoch: reply.epoch ?? "", offset: reply.offset ?? 0 };
  }

  /** Call `method` on your backend through the gateway; resolves with its answer. */
  async rpc<R = unknown>(method: string, data?: unknown, timeoutMs: number = this.#timeoutMs): Promise<R> {
    const cmd: Command = data === undefined ? { op: "rpc", method } : { op: "rpc", method, data };
    const reply = await this.#command(cmd, timeoutMs);
    return reply.data as R;
  }

  /** Who is subscribed to `channel` (namespaces with `presence`). */
  async presence(channel: string, timeoutMs: number = this.#timeoutMs): Promise<PresenceAnswer> {
    const reply = await this.#command({ op: "presence", channel }, timeoutMs);
    return reply.data as PresenceAnswer;
  }

  // ---- connecting ------------------------------------------------------

  async #open(): Promise<void> {
    this.#reconnectTimer = undefined;
    if (!this.#want || this.#state !== "disconnected") return;
    const gen = ++this.#gen;
    let url: string;
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
    // Whatever happens from here until the welcome must happen in time.
    this.#connectTimer = setTimeout(() => {
      if (gen !== this.#gen) return;
      this.#closeSocket(ClientCloseCode.CONNECT_TIMEOUT, "connect timeout");
      this.#closed(ClientCloseCode.CONNECT_TIMEOUT, `no welcome from the gateway within ${this.#connectTimeoutMs} ms`);
    }, this.#connectTimeoutMs);

    let token: string | undefined;
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

    let ws: WebSocketLike;
    try {
      ws = new this.#WebSocket(url);
    } catch (err) {
      const error = new PushmeshError("protocol", `cannot open a WebSocket to ${url}: ${String(err)}`, { cause: err });
      this.emit("error", { error });
      this.#closed(ClientCloseCode.OPEN_FAILED, error.message);
      return;
    }
    this.#ws = ws;
    this.#authId = undefined;
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
      this.#ws = undefined;
      this.#closed(event.code, event.reason ?? "");
    };
    // The close event that follows carries what there is to know, except
    // where none follows: Node.js 20's WebSocket reports a refused
    // handshake (a gateway answering 503 while it drains or has no hub)
    // with an error alone and stays CONNECTING for ever. Treat an error
    // with no close event soon after as the connection's end.
    ws.onerror = () => {
      setTimeout(() => {
        if (ws !== this.#ws) return;
        this.#closeSocket(ClientCloseCode.NORMAL, "connection failed");
        this.#closed(ABNORMAL_CLOSURE, "the connection failed (an error event with no close event)");
      }, ERROR_GRACE_MS);
    };
  }

  /** The token to connect with; may call `getToken`. */
  async #tokenForConnect(): Promise<string | undefined> {
    const refused = this.#refused;
    if (!this.#getToken) return this.#token;
    if (this.#token && !refused && !this.#tokenDue()) return this.#token;
    const token = await this.#callGetToken();
    if (refused && token === refused.token) {
      const code = refused.code === CloseCode.TOKEN_EXPIRED ? "token_expired" : "unauthorized";
      throw new PushmeshError(code, `getToken returned the token the gateway refused (${refused.code}); not reconnecting`);
    }
    this.#refused = undefined;
    this.#token = token;
    this.#tokenAt = Date.now();
    return token;
  }

  async #callGetToken(): Promise<string> {
    const getToken = this.#getToken as () => string | Promise<string>;
    const token = await withTimeout(Promise.resolve().then(getToken), this.#timeoutMs, "getToken");
    if (typeof token !== "string" || token.length === 0) {
      throw new PushmeshError("token", "getToken must return the JWT as a non-empty string");
    }
    return token;
  }

  /** Whether the current token is due for replacement. */
  #tokenDue(): boolean {
    const times = this.#token ? tokenTimes(this.#token) : undefined;
    if (!times) return false;
    return refreshDelay(times, this.#tokenAt, Date.now(), this.#refreshAheadMs, 0) <= 0;
  }

  // ---- frames ----------------------------------------------------------

  #frame(data: unknown): void {
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
        const event: PresenceEvent = { channel: frame.channel, connection: frame.connection };
        if (frame.user !== undefined) event.user = frame.user;
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

  #welcome(frame: WelcomeFrame): void {
    if (this.#state !== "connecting") return;
    clearTimeout(this.#connectTimer);
    this.#connectTimer = undefined;
    // With auth, the gateway answers the auth command before the welcome;
    // a gateway without auth welcomes first (and refuses the command).
    this.#authenticated = this.#authAnswered;
    const info: ConnectedEvent = { connection: frame.connection, gateway: frame.gateway };
    if (frame.user !== undefined) info.user = frame.user;
    this.#info = info;
    this.#attempt = 0;
    this.#backoff.reset();
    this.#retryBackoff.reset();
    const subs = [...this.#subs.values()];
    this.#setState("connected");
    this.emit("connected", { ...info });
    // (A listener may have disconnected already.)
    if (this.state !== "connected") return;
    this.#settleWaiters(undefined, info);
    this.#startLiveness();
    this.#scheduleRefresh();
    for (const sub of subs) {
      if (this.state !== "connected") return;
      if (this.#subs.get(sub.channel) === sub && sub.state !== "unsubscribed") this.#sendSubscribe(sub);
    }
  }

  #reply(frame: ReplyFrame): void {
    if (frame.id !== null && frame.id === this.#authId) {
      this.#authId = undefined;
      this.#authAnswered = true;
      return;
    }
    const pending = frame.id === null ? undefined : this.#pending.get(frame.id);
    if (!pending) {
      if (frame.error) this.emit("error", { error: new ReplyError(frame.error.code, frame.error.message) });
      return;
    }
    this.#pending.delete(frame.id as number);
    clearTimeout(pending.timer);
    if (frame.error) pending.reject(new ReplyError(frame.error.code, frame.error.message));
    else pending.resolve(frame);
  }

  #message(frame: MessageFrame): void {
    if (typeof frame.channel === "string") {
      const sub = this.#subs.get(frame.channel);
      if (sub) {
        sub._deliver(frame);
        return;
      }
      if (this.#leaving.has(frame.channel)) return;
    }
    const message: ClientMessage = { data: frame.data };
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
  #send(cmd: Command, timeoutMs: number, pending: Omit<Pending, "timer">): void {
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

  #command(cmd: Command, timeoutMs: number): Promise<ReplyFrame> {
    return new Promise((resolve, reject) => this.#send(cmd, timeoutMs, { resolve, reject }));
  }

  #sendSubscribe(sub: Subscription<never>): void {
    const since = sub._since();
    const gen = this.#gen;
    sub._setState("subscribing");
    this.#send({ op: "subscribe", channel: sub.channel, since }, this.#timeoutMs, {
      resolve: (reply) => {
        if (gen !== this.#gen || this.#subs.get(sub.channel) !== sub) return;
        sub._subscribed(reply, since);
      },
      reject: (err: PushmeshError) => {
        if (gen !== this.#gen || this.#subs.get(sub.channel) !== sub) return;
        // The connection ended: the subscribe is made again on the next one.
        if (err.code === "connection_closed" || err.code === "not_connected") return;
        if (sub._refused(err)) {
          this.#subs.delete(sub.channel);
          return;
        }
        if (err.code === "closing") return;
        // unavailable, a timeout: try again on this connection.
        this.#later(this.#retryBackoff.next(), () => {
          if (gen === this.#gen && this.#subs.get(sub.channel) === sub && sub.state === "subscribing") {
            this.#sendSubscribe(sub);
          }
        });
      },
    });
  }

  #unsubscribe(sub: Subscription<never>, timeoutMs: number): Promise<void> {
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
      (err: PushmeshError) => {
        done();
        // Closed meanwhile: the membership ended with the connection.
        if (err.code === "connection_closed" || err.code === "not_connected") return;
        throw err;
      },
    );
  }

  // ---- liveness --------------------------------------------------------

  #startLiveness(): void {
    if (this.#pingIntervalMs === 0) return;
    this.#lastHeard = performance.now();
    this.#armPing(this.#pingIntervalMs);
  }

  #armPing(delay: number): void {
    clearTimeout(this.#pingTimer);
    this.#pingTimer = setTimeout(() => this.#checkLiveness(), delay);
  }

  #checkLiveness(): void {
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
      (err: PushmeshError) => {
        if (gen !== this.#gen || !(err instanceof TimeoutError)) return;
        const reason = `no reply to a ping within ${this.#pingTimeoutMs} ms`;
        this.#closeSocket(ClientCloseCode.NO_PONG, "no reply to ping");
        this.#closed(ClientCloseCode.NO_PONG, reason);
      },
    );
  }

  // ---- token refresh ---------------------------------------------------

  #scheduleRefresh(): void {
    clearTimeout(this.#refreshTimer);
    this.#refreshTimer = undefined;
    if (!this.#getToken || !this.#authenticated || this.#refreshUnsupported || !this.#token) return;
    const times = tokenTimes(this.#token);
    if (!times) return;
    const delay = refreshDelay(times, this.#tokenAt, Date.now(), this.#refreshAheadMs);
    this.#refreshTimer = setTimeout(() => void this.#refresh(), delay);
  }

  async #refresh(): Promise<void> {
    const gen = this.#gen;
    const retry = () => this.#later(this.#retryBackoff.next(), () => void (gen === this.#gen && this.#refresh()));
    let token: string;
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
      // Nothing new yet (getToken may cache): ask again shortly.
      retry();
      return;
    }
    try {
      await this.#command({ op: "refresh", token }, this.#timeoutMs);
    } catch (err) {
      if (gen !== this.#gen) return;
      const error = err as PushmeshError;
      if (error.code === "connection_closed" || error.code === "not_connected") return;
      if (error.code === "unknown_op") {
        // A gateway without live refresh: the token is replaced at the next reconnect.
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
  #closeSocket(code: number, reason: string): void {
    const ws = this.#ws;
    this.#ws = undefined;
    if (!ws) return;
    ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
    try {
      ws.close(code, reason);
    } catch {
      // Already closing, or a constructor that rejects the code: it is ours no longer.
    }
  }

  /** A connection (or an attempt at one) ended: clean up, tell the app, decide what next. */
  #closed(code: number, reason: string): void {
    const wasConnected = this.#state === "connected";
    this.#gen++;
    this.#ws = undefined;
    this.#info = undefined;
    this.#authId = undefined;
    for (const timer of [this.#connectTimer, this.#pingTimer, this.#refreshTimer, ...this.#retryTimers]) clearTimeout(timer);
    this.#connectTimer = this.#pingTimer = this.#refreshTimer = undefined;
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
    let terminal: PushmeshError | undefined;
    if (this.#want) {
      if (code === CloseCode.UNAUTHORIZED || code === CloseCode.TOKEN_EXPIRED) {
        const what = code === CloseCode.UNAUTHORIZED ? "unauthorized" : "token_expired";
        if (this.#getToken) {
          this.#refused = { token: this.#token, code };
          delay = this.#backoff.next();
        } else {
          terminal = new PushmeshError(what, `the gateway refused the token (${code}: ${reason}); not reconnecting without getToken`);
        }
      } else if (code === CloseCode.DISCONNECTED || code === CloseCode.TOO_MANY_CONNECTIONS || (code >= 4005 && code <= 4999)) {
        terminal = new PushmeshError("closed_by_server", `the server closed the connection (${code}${reason ? `: ${reason}` : ""}); not reconnecting`);
      } else if (code === CloseCode.SERVICE_RESTART && wasConnected) {
        // The gateway drains: the next connection goes elsewhere, now.
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
    if (reconnect && this.#want && this.#state === "disconnected" && this.#reconnectTimer === undefined) {
      this.#reconnectTimer = setTimeout(() => void this.#open(), delay);
    }
  }

  /** Stop for good: tell the app why, and fail the `connect()` promises. */
  #giveUp(error: PushmeshError): void {
    this.#want = false;
    if (this.#state !== "disconnected") {
      this.#closeSocket(ClientCloseCode.NORMAL, "giving up");
      this.#closed(ClientCloseCode.NORMAL, error.message);
    }
    this.emit("error", { error });
    this.#settleWaiters(error);
  }

  #settleWaiters(error: PushmeshError | undefined, info?: ConnectedEvent): void {
    for (const waiter of this.#waiters) {
      clearTimeout(waiter.timer);
      if (error) waiter.reject(error);
      else waiter.resolve({ ...(info as ConnectedEvent) });
    }
    this.#waiters.clear();
  }

  #setState(state: ConnectionState): void {
    this.#state = state;
  }

  /** A timer that dies with the connection. */
  #later(delay: number, fn: () => void): void {
    const timer = setTimeout(() => {
      this.#retryTimers.delete(timer);
      fn();
    }, delay);
    this.#retryTimers.add(timer);
  }
}

/** `promise`, or a `TimeoutError` after `ms`. */
export function withTimeout<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new TimeoutError(what, ms)), ms);
    promise.then(
      (value) => {
        clearTimeout(timer);
        resolve(value);
      },
      (err: unknown) => {
        clearTimeout(timer);
        reject(err);
      },
    );
  });
}
