// Unit tests of the built package (dist/): the pieces that need no server.
// Run: npm run build && npm test (Node.js 20 needs --experimental-websocket
// for the global WebSocket; package.json's test script passes it).

import { test } from "node:test";
import assert from "node:assert/strict";
import { createServer } from "node:net";

import {
  Backoff,
  Client,
  ClientCloseCode,
  Emitter,
  PositionTracker,
  PushmeshError,
  TimeoutError,
  refreshDelay,
  tokenTimes,
  withTimeout,
} from "../dist/index.js";
import { jwt } from "./harness.mjs";

test("backoff: full jitter within a window that doubles up to the cap, reset after success", () => {
  const draws = [];
  let r = 0.5;
  const b = new Backoff({ baseMs: 100, maxMs: 1000, random: () => r });
  for (let i = 0; i < 6; i++) draws.push([b.window(), b.next()]);
  assert.deepEqual(draws, [[100, 50], [200, 100], [400, 200], [800, 400], [1000, 500], [1000, 500]]);
  assert.equal(b.attempt, 6);
  r = 0;
  assert.equal(b.next(), 0, "full jitter reaches down to zero");
  r = 0.999999;
  assert.equal(b.next(), 999, "and up to (not including) the window");
  b.reset();
  assert.equal(b.attempt, 0);
  assert.equal(b.window(), 100);
  // Huge attempt counts do not overflow into NaN or Infinity.
  for (let i = 0; i < 2000; i++) b.next();
  assert.equal(b.window(), 1000);
  assert.throws(() => new Backoff({ baseMs: 0, maxMs: 10 }), RangeError);
  assert.throws(() => new Backoff({ baseMs: 10, maxMs: 5 }), RangeError);
});

test("backoff with Math.random: every delay inside its window, and spread out", () => {
  const b = new Backoff({ baseMs: 500, maxMs: 10_000 });
  const seen = new Set();
  for (let i = 0; i < 200; i++) {
    const w = b.window();
    const d = b.next();
    assert.ok(Number.isInteger(d) && d >= 0 && d < w, `delay ${d} outside [0, ${w})`);
    seen.add(d);
    if (i % 8 === 7) b.reset();
  }
  assert.ok(seen.size > 100, `200 draws gave only ${seen.size} distinct delays`);
});

test("positions: in-order delivery, duplicates dropped, gaps and epoch changes reported", () => {
  const t = new PositionTracker();
  assert.equal(t.position, undefined);
  t.restart({ epoch: "e1", offset: 4 }); // first subscribe: the stream is at 4
  assert.deepEqual(t.accept("e1", 5), { deliver: true });
  assert.deepEqual(t.accept("e1", 6), { deliver: true });
  assert.deepEqual(t.accept("e1", 6), { deliver: false }, "a repeat is a duplicate");
  assert.deepEqual(t.accept("e1", 3), { deliver: false }, "an older one too");
  assert.deepEqual(t.position, { epoch: "e1", offset: 6 });
  assert.deepEqual(t.accept("e1", 9), { deliver: true, discontinuity: "gap" });
  assert.deepEqual(t.accept("e2", 1), { deliver: true, discontinuity: "epoch_changed" });
  assert.deepEqual(t.position, { epoch: "e2", offset: 1 });
  // The returned position is a copy.
  t.position.offset = 100;
  assert.deepEqual(t.position, { epoch: "e2", offset: 1 });
});

test("positions: recovery resumes right after `since`; a failed recovery accepts older held-back messages", () => {
  const t = new PositionTracker({ epoch: "e1", offset: 10 });
  t.recovered({ epoch: "e1", offset: 10 });
  assert.deepEqual(t.accept("e1", 10), { deliver: false }, "the last one seen is not repeated");
  assert.deepEqual(t.accept("e1", 11), { deliver: true });
  // Recovery failed: the stream is at e3:20 now. Live messages the gateway
  // held back during the attempt may be a little older; they are new to
  // the app and must be delivered, but the resume point never goes back.
  t.restart({ epoch: "e3", offset: 20 });
  assert.deepEqual(t.accept("e3", 19), { deliver: true });
  assert.deepEqual(t.position, { epoch: "e3", offset: 20 });
  assert.deepEqual(t.accept("e3", 20), { deliver: true });
  assert.deepEqual(t.accept("e3", 21), { deliver: true });
  assert.deepEqual(t.accept("e3", 20), { deliver: false });
  assert.deepEqual(t.position, { epoch: "e3", offset: 21 });
});

test("positions: a channel with no stream yet takes any epoch from offset 1", () => {
  const t = new PositionTracker();
  t.restart({ epoch: "", offset: 0 });
  assert.deepEqual(t.accept("e9", 1), { deliver: true });
  assert.deepEqual(t.position, { epoch: "e9", offset: 1 });
  const late = new PositionTracker();
  late.restart({ epoch: "", offset: 0 });
  assert.deepEqual(late.accept("e9", 3), { deliver: true, discontinuity: "gap" }, "1 and 2 never arrived");
});

test("emitter: listeners run in order over a snapshot; once; off; a throwing listener stops no one", () => {
  const e = new Emitter();
  const calls = [];
  const reported = [];
  const saved = globalThis.reportError;
  globalThis.reportError = (err) => reported.push(err.message);
  try {
    const offA = e.on("x", (v) => {
      calls.push(`a${v}`);
      e.on("x", () => calls.push("late")); // added during an event: from the next one
    });
    e.once("x", (v) => calls.push(`once${v}`));
    e.on("x", () => {
      throw new Error("listener bug");
    });
    e.on("x", (v) => calls.push(`c${v}`));
    e.emit("x", 1);
    assert.deepEqual(calls, ["a1", "once1", "c1"]);
    assert.deepEqual(reported, ["listener bug"]);
    offA();
    calls.length = 0;
    e.emit("x", 2);
    assert.deepEqual(calls, ["c2", "late"]);
    e.emit("nobody listens", 3);
  } finally {
    if (saved === undefined) delete globalThis.reportError;
    else globalThis.reportError = saved;
  }
});

test("token times: exp and iat read from a JWT; junk gives nothing", () => {
  const t = jwt({ sub: "ünïcode-ß", exp: 2_000_000_000, iat: 1_999_999_000 });
  assert.deepEqual(tokenTimes(t), { expiresAt: 2_000_000_000_000, issuedAt: 1_999_999_000_000 });
  assert.deepEqual(tokenTimes(jwt({ exp: 5 })), { expiresAt: 5000 });
  for (const junk of ["", "abc", "a.b.c", `x.${Buffer.from("[1]").toString("base64url")}.y`, jwt({ exp: "soon" })]) {
    assert.equal(tokenTimes(junk), undefined, junk);
  }
});

test("refresh delay: ahead of expiry, at most half-way, never in a loop, independent of clock skew with iat", () => {
  const now = 1_000_000_000_000;
  // A one-hour token: 30 s ahead of its end.
  assert.equal(refreshDelay({ expiresAt: now + 3_600_000, issuedAt: now }, now, now, 30_000), 3_570_000);
  // A 4-second token: half-way.
  assert.equal(refreshDelay({ expiresAt: now + 4000, issuedAt: now }, now, now, 30_000), 2000);
  // Received 1 s ago: 1 s less to wait.
  assert.equal(refreshDelay({ expiresAt: now + 4000, issuedAt: now }, now - 1000, now, 30_000), 1000);
  // The issuer's clock is an hour ahead of ours: with iat that does not matter.
  const skewed = { expiresAt: now + 3_600_000 + 60_000, issuedAt: now + 3_600_000 };
  assert.equal(refreshDelay(skewed, now, now, 30_000), 30_000);
  // Without iat, this machine's clock decides.
  assert.equal(refreshDelay({ expiresAt: now + 60_000 }, now, now, 10_000), 50_000);
  // Already expired: not sooner than the floor.
  assert.equal(refreshDelay({ expiresAt: now - 5000 }, now, now, 30_000), 500);
  // Far future: capped to what setTimeout takes.
  assert.equal(refreshDelay({ expiresAt: now + 1e12 }, now, now, 30_000), 2 ** 31 - 1);
});

test("timeouts: withTimeout resolves in time, rejects with a TimeoutError after", async () => {
  assert.equal(await withTimeout(Promise.resolve(7), 1000, "quick"), 7);
  const never = new Promise(() => {});
  const err = await withTimeout(never, 30, "the never promise").catch((e) => e);
  assert.ok(err instanceof TimeoutError && err instanceof PushmeshError);
  assert.equal(err.code, "timeout");
  assert.equal(err.message, "the never promise timed out after 30 ms");
  await assert.rejects(withTimeout(Promise.reject(new Error("boom")), 1000, "x"), /boom/);
});

test("client: commands fail fast when not connected; bad options are refused clearly", async () => {
  const c = new Client("ws://127.0.0.1:9/ws");
  await assert.rejects(c.ping(), (e) => e.code === "not_connected");
  assert.equal(c.state, "disconnected");
  const s = c.subscribe("news");
  assert.equal(s.state, "subscribing");
  assert.throws(() => c.subscribe("news"), (e) => e.code === "already_subscribed");
  assert.equal(c.getSubscription("news"), s);
  await s.unsubscribe();
  assert.equal(s.state, "unsubscribed");
  assert.equal(c.getSubscription("news"), undefined);
  await assert.rejects(s.ready(), (e) => e.code === "unsubscribed");
  assert.throws(() => new Client("ws://x/ws", { pingTimeoutMs: -1 }), RangeError);
  assert.throws(() => new Client("ws://x/ws", { getToken: "not a function" }), TypeError);
  assert.throws(() => c.subscribe(""), TypeError);

  // No global WebSocket and none given (Node.js 20 without the flag).
  const saved = Object.getOwnPropertyDescriptor(globalThis, "WebSocket");
  delete globalThis.WebSocket;
  try {
    assert.throws(() => new Client("ws://x/ws"), (e) => e.code === "no_websocket" && /--experimental-websocket/.test(e.message));
  } finally {
    if (saved) Object.defineProperty(globalThis, "WebSocket", saved);
  }
});

test("client: a server that accepts TCP but never answers hits the connect deadline, and the client retries", async () => {
  // A real listening socket that swallows the handshake: a hung gateway.
  const sockets = [];
  const server = createServer((s) => sockets.push(s));
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  const url = `ws://127.0.0.1:${server.address().port}/ws`;
  const c = new Client(url, { connectTimeoutMs: 300, minReconnectDelayMs: 50, maxReconnectDelayMs: 100, timeoutMs: 2000 });
  const events = [];
  c.on("connecting", (e) => events.push(["connecting", e.attempt]));
  c.on("disconnected", (e) => events.push(["disconnected", e.code, e.reconnect]));
  const second = new Promise((resolve) => c.on("connecting", (e) => e.attempt === 2 && resolve()));
  const connected = c.connect(1500).catch((e) => e);
  await second;
  assert.deepEqual(events.slice(0, 3), [["connecting", 1], ["disconnected", ClientCloseCode.CONNECT_TIMEOUT, true], ["connecting", 2]]);
  const err = await connected;
  assert.ok(err instanceof TimeoutError, `connect() should time out, got ${err}`);
  c.disconnect();
  assert.equal(c.state, "disconnected");
  assert.equal(events.at(-1)[0], "disconnected");
  assert.equal(events.at(-1)[2], false, "after disconnect() the client does not reconnect");
  for (const s of sockets) s.destroy();
  server.close();
});
