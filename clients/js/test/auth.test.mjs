// Tokens against a real gateway with --jwt-secret: refreshed on the live
// connection before they expire, a static one that expires, and refused
// tokens that must not turn into a reconnect loop.

import { test } from "node:test";
import assert from "node:assert/strict";

import { Client } from "../dist/index.js";
import { SECRET, eventually, publish, recorder, system, token } from "./harness.mjs";

const authed = () => system({ gateways: 1, gatewayArgs: ["--jwt-secret", SECRET] });
/** The gateway closes a connection this long after its token's exp (auth.rs LEEWAY_SECS). */
const LEEWAY_MS = 5000;

test("a token that expires while connected is refreshed on the live connection: no reconnect, nothing missed", async (t) => {
  const sys = await authed();
  t.after(() => sys.stop());
  const issued = [];
  // Tokens valid for 3 s: the client refreshes half-way through each.
  const client = new Client(sys.ws(0), { getToken: () => (issued.push(token("ann", 3)), issued.at(-1)) });
  t.after(() => client.disconnect());
  const news = client.subscribe("news");
  const log = recorder(client, news);
  const first = await client.connect();
  assert.equal(first.user, "ann");
  await news.ready();
  const firstExpiry = JSON.parse(Buffer.from(issued[0].split(".")[1], "base64url")).exp * 1000;

  // Until well past the first token's end (exp + the gateway's leeway),
  // the connection stays the same one, and messages keep arriving.
  let n = 0;
  await eventually("past the first token's deadline", async () => {
    await publish(sys.api, "news", { n: n++ });
    return Date.now() > firstExpiry + LEEWAY_MS + 1000;
  }, 20_000);
  await eventually(`all ${n} messages`, () => log.of("message", "news").length === n);
  assert.deepEqual(log.of("message", "news").map((m) => m.data.n), [...Array(n).keys()]);
  assert.equal(client.connection.connection, first.connection, "the same connection throughout");
  assert.deepEqual(log.of("disconnected"), []);
  assert.deepEqual(log.of("error"), []);
  const refreshed = log.of("refreshed");
  assert.ok(refreshed.length >= 2, `refreshed ${refreshed.length} times`);
  assert.ok(issued.length >= 3, `getToken called ${issued.length} times`);
  assert.ok(refreshed.every((e, i) => i === 0 || e.expiresAt >= refreshed[i - 1].expiresAt));
  assert.deepEqual(log.types().slice(0, 3), ["connecting", "connected", "subscribed"]);
});

test("a static token that expires: closed with 4002, and the client stops (no getToken, no loop)", async (t) => {
  const sys = await authed();
  t.after(() => sys.stop());
  const client = new Client(sys.ws(0), { token: token("bob", 1) });
  t.after(() => client.disconnect());
  const log = recorder(client);
  await client.connect();
  await eventually("the 4002 close", () => log.of("disconnected").length > 0, 15_000);
  const [d] = log.of("disconnected");
  assert.equal(d.code, 4002, JSON.stringify(d));
  assert.match(d.reason, /token expired/);
  assert.equal(d.reconnect, false, "without getToken there is no new token to try");
  assert.deepEqual(log.of("error").map((e) => e.error.code), ["token_expired"]);
  assert.equal(client.state, "disconnected");
  assert.deepEqual(log.types(), ["connecting", "connected", "disconnected", "error"]);
});

test("refused tokens: getToken's same bad token stops after one retry; a good one gets through", async (t) => {
  const sys = await authed();
  t.after(() => sys.stop());
  const forged = token("eve", 3600, ["*"], "not-the-secret");

  // Always the same forged token: one retry (getToken is asked), then stop.
  let calls = 0;
  const stubborn = new Client(sys.ws(0), { getToken: () => (calls++, forged), minReconnectDelayMs: 20, maxReconnectDelayMs: 50 });
  t.after(() => stubborn.disconnect());
  const log = recorder(stubborn);
  const err = await stubborn.connect().catch((e) => e);
  assert.equal(err.code, "unauthorized", String(err));
  assert.equal(calls, 2, "asked once to connect, once after the 4001");
  assert.deepEqual(log.of("disconnected").map((d) => [d.code, d.reconnect]), [[4001, true], [1000, false]]);
  assert.equal(log.of("connecting").length, 2);
  assert.equal(stubborn.state, "disconnected");

  // A static token that is refused: no retry at all.
  const fixed = new Client(sys.ws(0), { token: forged });
  t.after(() => fixed.disconnect());
  const err2 = await fixed.connect().catch((e) => e);
  assert.equal(err2.code, "unauthorized");

  // getToken that first hands out a bad token, then a good one: connected.
  const tokens = [forged, token("eve", 3600)];
  const recovering = new Client(sys.ws(0), { getToken: () => tokens.shift(), minReconnectDelayMs: 20, maxReconnectDelayMs: 50 });
  t.after(() => recovering.disconnect());
  const welcome = await recovering.connect();
  assert.equal(welcome.user, "eve");
});
