// Server-Sent Events in a real headless Chromium: a plain `EventSource`,
// no SDK, against the real binaries. The gateway is killed and started
// again on the same address while messages keep being published; the
// browser reconnects by itself, sends `Last-Event-ID`, and the gateway
// replays what it missed from the hub's history: every message exactly
// once, in order.
//
// Run: make browser-test, or: cd tests/browser && node --test sse.test.mjs

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { Services, WAIT, browser, curl, waitReady } from "./harness.mjs";

const services = new Services("sse");
let hubUrl, api, chromium, page;
const start = (name, args, logName) => services.start(name, args, logName);

const publish = async (channel, data) => {
  const answer = JSON.parse(await curl("-H", "content-type: application/json", "-d",
    JSON.stringify({ channel, data }), `http://${api}/publish`));
  assert.equal(answer.ok, true, JSON.stringify(answer));
  return answer;
};

const gatewayArgs = (listen) => ["--listen-addr", listen, "--hub", hubUrl, "--gateway-id", "gw-sse"];

before(async () => {
  const hub = (await start("hub", ["--grpc-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0"])).addrs;
  hubUrl = `http://${hub.grpc}`;
  api = (await start("http-ingress", ["--listen-addr", "127.0.0.1:0", "--hub", hubUrl, "--hub-probe-ms", "100"])).addrs.http;
  await waitReady(api);
  chromium = await browser();
  page = chromium.page;
});

after(async () => {
  await chromium?.close();
  await services.stop();
});

/** What the page's EventSource has seen so far. */
const seen = () => page.evaluate(() => ({
  data: window.sseMessages.map((m) => m.data),
  ids: window.sseMessages.map((m) => m.id),
  opens: window.sseOpens,
  subscribed: window.sseSubscribed,
}));

async function waitFor(what, predicate) {
  const deadline = Date.now() + WAIT;
  for (;;) {
    const s = await seen();
    if (predicate(s)) return s;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}; the page saw ${JSON.stringify(s)}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

test("EventSource resumes from Last-Event-ID after a gateway restart, nothing lost", async () => {
  let gw = await start("ws-gateway", gatewayArgs("127.0.0.1:0"), "gateway-1");
  const addr = gw.addrs.http;
  await waitReady(addr);

  // The page comes from the gateway's origin, so the stream is same-origin.
  await page.goto(`http://${addr}/healthz`);
  await page.evaluate(() => {
    window.sseMessages = [];
    window.sseOpens = 0;
    window.sseSubscribed = [];
    const es = new EventSource("/sse?channel=news");
    es.onopen = () => window.sseOpens++;
    es.onmessage = (e) => window.sseMessages.push({ data: JSON.parse(e.data).data, id: e.lastEventId });
    es.addEventListener("subscribed", (e) => window.sseSubscribed.push(JSON.parse(e.data)));
    window.sse = es;
  });
  await waitFor("the first subscription", (s) => s.subscribed.length === 1);

  for (let n = 1; n <= 5; n++) await publish("news", n);
  const before = await waitFor("messages 1..5", (s) => s.data.length === 5);
  assert.deepEqual(before.data, [1, 2, 3, 4, 5]);
  assert.match(before.ids[4], /^[A-Za-z0-9]+:\d+$/, "each event's id is epoch:offset");

  // The gateway dies without a goodbye; the browser sees the stream drop.
  const died = new Promise((r) => gw.proc.once("exit", r));
  gw.proc.kill("SIGKILL");
  await died;
  // Published while no gateway is there: only the hub's history has them.
  for (let n = 6; n <= 10; n++) await publish("news", n);

  // The same address again (a pod restarted behind its Service). EventSource
  // retries on its own (`retry: 1000`) and sends the last id it saw.
  gw = await start("ws-gateway", gatewayArgs(addr), "gateway-2");
  await waitReady(addr);
  const resumed = await waitFor("the resubscription", (s) => s.subscribed.length === 2);
  assert.equal(resumed.subscribed[1].recovered, true, JSON.stringify(resumed.subscribed));
  assert.ok(resumed.opens >= 2, "the browser reconnected by itself");

  for (let n = 11; n <= 12; n++) await publish("news", n);
  const all = await waitFor("messages 1..12", (s) => s.data.length >= 12);
  assert.deepEqual(all.data, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12], "every message exactly once, in order");
  const offsets = all.ids.map((id) => Number(id.split(":")[1]));
  assert.deepEqual(offsets, [...offsets].sort((a, b) => a - b), "positions only go forward");
  assert.equal(new Set(all.ids.map((id) => id.split(":")[0])).size, 1, "one epoch: the hub kept the stream");
  await page.evaluate(() => window.sse.close());
});
