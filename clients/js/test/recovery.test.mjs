// The SDK against the real binaries (hub, two gateways, ingress on port 0):
// a day in the life of a client, and the faults the SDK must turn into
// "the app sees each channel message exactly once, in order", or into a
// truthful `notRecovered`. Node's own WebSocket (undici) is the transport.

import { test } from "node:test";
import assert from "node:assert/strict";

import { Client, ClientCloseCode, TimeoutError } from "../dist/index.js";
import { eventually, post, publish, publishNumbered, publishRetrying, recorder, redis, system, waitReady } from "./harness.mjs";

/** A URL function that moves to the next gateway on every connection attempt (a stand-in for a load balancer). */
function roundRobin(urls) {
  let i = -1;
  return () => urls[(i = (i + 1) % urls.length)];
}

/** The numbers `{n}` the app saw on `channel`, in the order it saw them. */
const numbers = (log, channel) => log.of("message", channel).map((m) => m.data.n);
const range = (n) => [...Array(n).keys()];

test("a day in the life: events in order, messages, broadcasts, ping, server-side subscribe, unsubscribe", async (t) => {
  const sys = await system({ gateways: 1 });
  t.after(() => sys.stop());
  // An injected constructor (what Node.js 20 without the flag needs): it is the one used.
  const opened = [];
  class CountingWebSocket extends WebSocket {
    constructor(url) {
      super(url);
      opened.push(url);
    }
  }
  const client = new Client(sys.ws(0), { WebSocket: CountingWebSocket });
  t.after(() => client.disconnect());
  const news = client.subscribe("news");
  const log = recorder(client, news);
  const welcome = await client.connect();
  assert.match(welcome.connection, /^gw-0:\d+$/);
  assert.equal(welcome.gateway, "gw-0");
  assert.equal(client.state, "connected");
  assert.deepEqual(opened, [sys.ws(0)]);
  const subscribed = await news.ready();
  assert.deepEqual(subscribed, { recovering: false, recovered: false, resubscribed: false },
    "a channel nobody published to yet has no stream, so no position");
  assert.deepEqual(news.position, { epoch: "", offset: 0 }, "the empty stream's position");

  for (let n = 0; n < 3; n++) await publish(sys.api, "news", { n });
  await eventually("3 news messages", () => numbers(log, "news").length === 3);
  const msgs = log.of("message", "news");
  assert.deepEqual(msgs.map((m) => [m.data.n, m.offset]), [[0, 1], [1, 2], [2, 3]]);
  assert.equal(new Set(msgs.map((m) => m.epoch)).size, 1);
  assert.deepEqual(news.position, { epoch: msgs[0].epoch, offset: 3 });
  assert.deepEqual(log.types(), ["connecting", "connected", "subscribed", "message", "message", "message"]);

  // A broadcast and a direct send reach the client, not the subscription.
  assert.equal((await (await fetch(`http://${sys.api}/?content=hello`)).text()), "ok");
  await post(sys.api, "/send", { connection: welcome.connection, data: { just: "you" } });
  await eventually("broadcast and direct send", () => log.of("message", "client").length === 2);
  assert.deepEqual(log.of("message", "client").map((m) => [m.channel, m.data]), [[undefined, "hello"], [undefined, { just: "you" }]]);

  const rtt = await client.ping();
  assert.ok(rtt >= 0 && rtt < 5000, `ping took ${rtt} ms`);

  // The backend subscribes this connection to a channel: announced, then its messages come to the client.
  const [code] = await post(sys.api, "/subscribe", { connection: welcome.connection, channel: "alerts" });
  assert.equal(code, 200);
  await eventually("serverSubscribed", () => log.of("serverSubscribed").length === 1);
  await publish(sys.api, "alerts", "fire");
  await eventually("the alert", () => log.of("message", "client").some((m) => m.channel === "alerts"));

  // A refused subscribe ends that subscription, with the gateway's reason.
  const bad = client.subscribe("no spaces!");
  log.watch(bad);
  await assert.rejects(bad.ready(), (e) => e.code === "invalid_channel");
  assert.equal(bad.state, "unsubscribed");
  assert.deepEqual(log.types("no spaces!"), ["error", "unsubscribed"]);

  // Unsubscribe: confirmed by the gateway, no more messages for it.
  await news.unsubscribe();
  assert.equal(news.state, "unsubscribed");
  await publish(sys.api, "news", { n: 99 });
  await publish(sys.api, "alerts", "marker"); // one hub, one gateway stream: arrives after anything for news would
  await eventually("the marker", () => log.of("message", "client").some((m) => m.data === "marker"));
  assert.deepEqual(numbers(log, "news"), [0, 1, 2]);
  assert.ok(!log.of("message", "client").some((m) => m.channel === "news"), "no stray news message on the client either");
  assert.deepEqual(log.of("unsubscribed", "news").map((e) => e.reason), ["client"]);

  client.disconnect();
  assert.equal(client.state, "disconnected");
  assert.deepEqual(log.of("disconnected").map((e) => [e.code, e.reconnect]), [[1000, false]]);
  assert.deepEqual(log.of("error", "client"), [], "no error event on the client along the way");
});

test("gateway SIGTERMed under publishing (1012): the client moves to the other gateway at once, every message exactly once, in order", async (t) => {
  const N = 300;
  const sys = await system({ gateways: 2 });
  t.after(() => sys.stop());
  const client = new Client(roundRobin([sys.ws(0), sys.ws(1)]));
  t.after(() => client.disconnect());
  const orders = client.subscribe("orders");
  const log = recorder(client, orders);
  await client.connect();
  await orders.ready();
  assert.equal(client.connection.gateway, "gw-0");

  await publishNumbered(sys.api, "orders", N, {
    everyMs: 5,
    during: async (k) => {
      if (k === 100) {
        await eventually("messages flowing", () => numbers(log, "orders").length > 50);
        sys.gateways[0].signal("SIGTERM");
      }
    },
  });
  await eventually(`all ${N} messages`, () => numbers(log, "orders").length >= N).catch((e) => {
    console.log(JSON.stringify(log.filter((x) => x.type !== "message")), numbers(log, "orders").join(","));
    throw e;
  });
  assert.deepEqual(numbers(log, "orders"), range(N), "exactly once, in order");

  const [drop] = log.of("disconnected");
  assert.equal(drop.code, 1012, JSON.stringify(drop));
  assert.equal(drop.reconnect, true);
  assert.equal(drop.delayMs, 0, "after 1012 the client reconnects at once");
  assert.equal(client.connection.gateway, "gw-1");
  const subs = log.of("subscribed", "orders");
  assert.equal(subs.length, 2);
  assert.deepEqual([subs[1].recovering, subs[1].recovered, subs[1].resubscribed], [true, true, true]);
  assert.equal(log.of("recovered", "orders").length, 1);
  assert.deepEqual(log.of("notRecovered", "orders"), []);
  // The order of events around the move.
  const around = log.types().filter((x) => x !== "message");
  assert.deepEqual(around, ["connecting", "connected", "subscribed", "disconnected", "connecting", "connected", "subscribed", "recovered"]);
  assert.equal((await sys.gateways[0].exited).code, 0, "the drained gateway exited cleanly");
});

test("gateway SIGKILLed under publishing: reconnect with backoff, recover with since, every message exactly once, in order", async (t) => {
  const N = 300;
  const sys = await system({ gateways: 2 });
  t.after(() => sys.stop());
  const client = new Client(roundRobin([sys.ws(0), sys.ws(1)]), { minReconnectDelayMs: 100, maxReconnectDelayMs: 1000 });
  t.after(() => client.disconnect());
  const orders = client.subscribe("orders");
  const log = recorder(client, orders);
  await client.connect();
  await orders.ready();

  await publishNumbered(sys.api, "orders", N, {
    everyMs: 5,
    during: async (k) => {
      if (k === 100) {
        await eventually("messages flowing", () => numbers(log, "orders").length > 50);
        sys.gateways[0].signal("SIGKILL");
      }
    },
  });
  await eventually(`all ${N} messages`, () => numbers(log, "orders").length >= N).catch((e) => {
    console.log(JSON.stringify(log.filter((x) => x.type !== "message")), numbers(log, "orders").join(","));
    throw e;
  });
  assert.deepEqual(numbers(log, "orders"), range(N), "exactly once, in order");
  const drops = log.of("disconnected");
  assert.equal(drops[0].code, 1006, "a killed gateway sends no close frame");
  assert.ok(drops.every((d) => d.reconnect), JSON.stringify(drops));
  assert.equal(client.connection.gateway, "gw-1");
  assert.equal(log.of("recovered", "orders").length, 1);
  assert.deepEqual(log.of("notRecovered", "orders"), []);
});

test("a silent half-open connection (gateway SIGSTOPped) is detected by ping deadline; the client moves and recovers", async (t) => {
  const sys = await system({ gateways: 2 });
  t.after(() => sys.stop());
  const client = new Client(roundRobin([sys.ws(0), sys.ws(1)]), {
    pingIntervalMs: 500,
    pingTimeoutMs: 1000,
    minReconnectDelayMs: 50,
    maxReconnectDelayMs: 200,
  });
  t.after(() => client.disconnect());
  const feed = client.subscribe("feed");
  const log = recorder(client, feed);
  await client.connect();
  await feed.ready();
  for (let n = 0; n < 5; n++) await publish(sys.api, "feed", { n });
  await eventually("5 messages", () => numbers(log, "feed").length === 5);

  // Frozen: the kernel still holds the TCP connection open, nothing answers.
  sys.gateways[0].signal("SIGSTOP");
  const stoppedAt = Date.now();
  // A promise of the SDK times out rather than hanging.
  await assert.rejects(client.ping(300), (e) => e instanceof TimeoutError && e.code === "timeout");
  for (let n = 5; n < 10; n++) await publish(sys.api, "feed", { n });
  await eventually("the client on the other gateway", () => client.connection?.gateway === "gw-1");
  const detected = log.of("disconnected")[0];
  assert.equal(detected.code, ClientCloseCode.NO_PONG, JSON.stringify(detected));
  assert.match(detected.reason, /no reply to a ping within 1000 ms/);
  const took = Date.now() - stoppedAt;
  await eventually("10 messages", () => numbers(log, "feed").length === 10);
  assert.deepEqual(numbers(log, "feed"), range(10), "the ones published while frozen were recovered");
  assert.equal(log.of("recovered", "feed").length, 1);
  console.log(`half-open connection detected and replaced ${took} ms after SIGSTOP (ping every 500 ms, 1000 ms deadline)`);
});

/**
 * The hub-restart scene both engines share: `stays` keeps its connection to
 * gw-1 through the hub restart; `moves` is on gw-0, which is killed while
 * the hub is down. Both have read messages 0..4 of "prices"; then the hub
 * and gw-0 are killed, and the hub is started again.
 */
async function hubRestart(t, sys) {
  const stays = new Client(sys.ws(1), { minReconnectDelayMs: 50, maxReconnectDelayMs: 300 });
  const moves = new Client(roundRobin([sys.ws(0), sys.ws(1)]), { minReconnectDelayMs: 50, maxReconnectDelayMs: 300 });
  t.after(() => (stays.disconnect(), moves.disconnect()));
  const s1 = stays.subscribe("prices");
  const s2 = moves.subscribe("prices");
  const log1 = recorder(stays, s1);
  const log2 = recorder(moves, s2);
  await Promise.all([stays.connect(), moves.connect()]);
  await Promise.all([s1.ready(), s2.ready()]);
  assert.equal(moves.connection.gateway, "gw-0");
  for (let n = 0; n < 5; n++) await publish(sys.api, "prices", { n });
  await eventually("5 each", () => numbers(log1, "prices").length === 5 && numbers(log2, "prices").length === 5);
  const epoch = s1.position.epoch;

  await sys.hub.kill();
  await sys.gateways[0].kill();
  await eventually("moves noticed", () => log2.of("disconnected").length > 0);
  await sys.restartHub();
  return { stays, moves, log1, log2, epoch };
}

test("hub killed and restarted (memory engine): the SDK reports the lost history truthfully, live and on reconnect", async (t) => {
  const sys = await system({ gateways: 2 });
  t.after(() => sys.stop());
  const { moves, log1, log2, epoch: oldEpoch } = await hubRestart(t, sys);
  // Publish until both clients are in the new epoch. The first publishes
  // may reach no gateway (the new hub takes them before the gateways have
  // re-attached): like whatever the old hub had not yet passed on, they
  // are lost, and that is what the SDK must say.
  let n = 5;
  const inNewEpoch = (log) => log.of("message", "prices").some((m) => m.epoch !== oldEpoch);
  await eventually("both clients in the new epoch", async () => {
    await publishRetrying(sys.api, "prices", { n: n++ });
    return inNewEpoch(log1) && inNewEpoch(log2);
  });

  // The client that kept its connection: a message of a new epoch arrived;
  // the SDK said the stream restarted, right before handing it over.
  assert.equal(log1.of("disconnected").length, 0, "its connection never dropped");
  const live = log1.of("notRecovered", "prices");
  assert.equal(live.length, 1, JSON.stringify(live));
  assert.equal(live[0].reason, "epoch_changed");
  assert.deepEqual(live[0].since, { epoch: oldEpoch, offset: 5 });
  assert.notEqual(live[0].position.epoch, oldEpoch);
  const next = log1[log1.indexOf(live[0]) + 1];
  assert.deepEqual([next.type, next.epoch, next.offset], ["message", live[0].position.epoch, live[0].position.offset]);

  // The client that reconnected with since = the old epoch: told at the
  // resubscribe (recovered: false), once.
  assert.equal(moves.connection.gateway, "gw-1");
  const again = log2.of("subscribed", "prices")[1];
  assert.deepEqual([again.recovering, again.recovered, again.resubscribed], [true, false, true], JSON.stringify(again));
  const told = log2.of("notRecovered", "prices");
  assert.equal(told.length, 1, JSON.stringify(told));
  assert.equal(told[0].reason, "history");
  assert.deepEqual(told[0].since, { epoch: oldEpoch, offset: 5 });
  assert.equal(log2.of("recovered", "prices").length, 0);

  // From then on both follow the new stream: every later message once, in order.
  const from1 = numbers(log1, "prices").length;
  const from2 = numbers(log2, "prices").length;
  for (let k = 0; k < 5; k++) await publish(sys.api, "prices", { n: 1000 + k });
  await eventually("the last five", () => numbers(log1, "prices").includes(1004) && numbers(log2, "prices").includes(1004));
  const tail = (log, from) => numbers(log, "prices").slice(from).filter((x) => x >= 1000);
  assert.deepEqual(tail(log1, from1), [1000, 1001, 1002, 1003, 1004]);
  assert.deepEqual(tail(log2, from2), [1000, 1001, 1002, 1003, 1004]);
  for (const log of [log1, log2]) {
    const offsets = log.of("message", "prices").filter((m) => m.epoch !== oldEpoch).map((m) => m.offset);
    assert.ok(offsets.every((o, i) => i === 0 || o === offsets[i - 1] + 1), `new-epoch offsets without holes or repeats: ${offsets}`);
  }
});

test("hub killed and restarted (Redis engine): the stream survives, recovered is reported, every message exactly once, in order", async (t) => {
  const store = await redis();
  t.after(() => store.stop());
  const sys = await system({ gateways: 2, hubArgs: ["--engine", "redis", "--redis-url", store.url] });
  t.after(() => sys.stop());
  // `moves` must reconnect (to gw-1) and recover from the channel's
  // history, which lives in Redis.
  const { moves, log1, log2, epoch } = await hubRestart(t, sys);
  await waitReady(sys.gateways[1].addrs.http); // gw-1 attached to the new hub
  for (let n = 5; n < 10; n++) await publishRetrying(sys.api, "prices", { n });
  await eventually("10 each", () => numbers(log1, "prices").length === 10 && numbers(log2, "prices").length === 10);

  for (const [name, log] of [["stays", log1], ["moves", log2]]) {
    assert.deepEqual(numbers(log, "prices"), range(10), `${name}: every message exactly once, in order`);
    assert.equal(log.of("notRecovered", "prices").length, 0, `${name}: ${JSON.stringify(log.of("notRecovered", "prices"))}`);
    const offsets = log.of("message", "prices").map((m) => [m.epoch, m.offset]);
    assert.deepEqual(offsets, range(10).map((i) => [epoch, i + 1]), `${name}: one epoch, consecutive offsets`);
  }
  assert.equal(moves.connection.gateway, "gw-1");
  const again = log2.of("subscribed", "prices")[1];
  assert.deepEqual([again.recovering, again.recovered, again.resubscribed], [true, true, true], JSON.stringify(again));
  assert.equal(log2.of("recovered", "prices").length, 1);
});
