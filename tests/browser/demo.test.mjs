// The demo page (served by the ws-gateway at `/`) in a real headless
// Chromium, against the real binaries: hub, ws-gateway and http-ingress
// started here on port 0, each announcing its addresses as one JSON line
// on stdout. Messages are published with curl, as a backend would.
//
// Run: make browser-test (installs chromium and the npm packages first),
// or: cd tests/browser && npm ci && node --test
// Screenshots and service logs go to target/browser/.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import path from "node:path";
import { OUT, Services, WAIT, browser, curl, waitReady } from "./harness.mjs";

const services = new Services("demo");
let gw, api, chromium, page;

const publish = (channel, data) =>
  curl("-H", "content-type: application/json", "-d", JSON.stringify({ channel, data }), `http://${api}/publish`);

const feed = (channel) => page.locator(`#feed section[data-channel="${channel}"]`);

before(async () => {
  const hub = (await services.start("hub", ["--grpc-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0"])).addrs;
  const hubUrl = `http://${hub.grpc}`;
  gw = (await services.start("ws-gateway", ["--listen-addr", "127.0.0.1:0", "--hub", hubUrl, "--gateway-id", "gw-browser"])).addrs.http;
  // The page is served from the gateway's origin and calls the ingress from there.
  api = (await services.start("http-ingress", [
    "--listen-addr", "127.0.0.1:0", "--hub", hubUrl, "--hub-probe-ms", "100",
    "--cors-allow-origin", `http://${gw}`,
  ])).addrs.http;
  await waitReady(gw);
  await waitReady(api);
  chromium = await browser({ viewport: { width: 1200, height: 900 } });
  page = chromium.page;
});

after(async () => {
  await chromium?.close();
  // Clients first, the hub last; each gets SIGTERM (the graceful drain).
  await services.stop();
});

test("the page shows its connection id", async () => {
  const resp = await page.goto(`http://${gw}/?ingress=http://${api}`);
  assert.equal(resp.status(), 200);
  await page.locator("#connection", { hasText: /^gw-browser:\d+$/ }).waitFor();
  assert.match(await page.textContent("#connection"), /^gw-browser:\d+$/);
  assert.equal(await page.textContent("#gateway"), "gw-browser");
  assert.equal(await page.textContent("#state"), "connected");
});

test("subscribe, and a message published with curl appears under its channel", async () => {
  await page.fill("#sub-channel", "news");
  await page.click("#sub-button");
  await page.locator('#channels .chip[data-channel="news"]').waitFor();
  assert.equal(await page.textContent("#sub-result"), "subscribed to news");

  const answer = JSON.parse(await publish("news", { text: "hello from curl" }));
  assert.equal(answer.ok, true);
  assert.equal(answer.gateways, 1, "the page's gateway had a subscriber");
  await feed("news").locator(".data", { hasText: "hello from curl" }).waitFor();
  await page.screenshot({ path: path.join(OUT, "demo.png"), fullPage: true });
  // The text on the page: the data, in the news section, counted.
  assert.equal(await feed("news").locator(".data").first().textContent(), '{"text":"hello from curl"}');
  assert.equal(await feed("news").locator(".count").textContent(), "1 message");
  assert.equal(await feed("news").locator(".pos").first().textContent(), "#1", "the stream position is shown");
});

test("the publish form goes through the ingress (CORS)", async () => {
  await page.selectOption("#pub-target", "channel");
  await page.fill("#pub-channel", "news");
  await page.fill("#pub-data", "typed in the page");
  await page.click("#pub-button");
  await page.locator("#pub-result.ok").waitFor();
  assert.match(await page.textContent("#pub-result"), /^ok: publish accepted \(1 gateway with recipients\)$/);
  await feed("news").locator(".data", { hasText: "typed in the page" }).waitFor();
  assert.equal(await feed("news").locator(".count").textContent(), "2 messages");

  // "to this connection": a direct send lands in the catch-all section.
  await page.selectOption("#pub-target", "me");
  await page.fill("#pub-data", '{"just":"me"}');
  await page.click("#pub-button");
  await feed("*").locator(".data", { hasText: '{"just":"me"}' }).waitFor();

  // An error answer from the API is shown as such.
  await page.selectOption("#pub-target", "channel");
  await page.fill("#pub-channel", "no spaces allowed");
  await page.click("#pub-button");
  await page.locator("#pub-result.bad").waitFor();
  assert.match(await page.textContent("#pub-result"), /^400 invalid_channel: /);
  await page.fill("#pub-channel", "news");
});

test("a refused subscribe shows the gateway's error reply", async () => {
  await page.fill("#sub-channel", "bad channel!");
  await page.click("#sub-button");
  await page.locator("#sub-result.bad").waitFor();
  assert.match(await page.textContent("#sub-result"), /^subscribe to bad channel! refused: .*\(invalid_channel\)$/);
});

test("server-side subscribe from the API shows up on the page", async () => {
  const connection = await page.textContent("#connection");
  const r = await curl("-H", "content-type: application/json", "-d", JSON.stringify({ connection, channel: "from-api" }), `http://${api}/subscribe`);
  assert.equal(JSON.parse(r).ok, true);
  await page.locator('#channels .chip[data-channel="from-api"]').waitFor();
  await publish("from-api", "pushed by the server");
  await feed("from-api").locator(".data", { hasText: "pushed by the server" }).waitFor();
});

test("unsubscribe stops that channel's messages", async () => {
  await page.click('#channels .chip[data-channel="news"] button');
  await page.locator('#channels .chip[data-channel="news"]').waitFor({ state: "detached" });
  assert.equal(await page.textContent("#sub-result"), "unsubscribed from news");
  const r = JSON.parse(await publish("news", "after unsubscribe"));
  assert.equal(r.gateways, 0, "no gateway has a news subscriber any more");
  // One hub, one gateway stream: a later broadcast arrives after anything
  // the gateway would still have delivered for news.
  await curl(`http://${api}/?content=marker`);
  await feed("*").locator(".data", { hasText: "marker" }).waitFor();
  assert.equal(await feed("news").locator(".data", { hasText: "after unsubscribe" }).count(), 0);
  assert.equal(await feed("news").locator(".count").textContent(), "2 messages");
});

test("works on a phone screen: no sideways scrolling", async () => {
  await page.setViewportSize({ width: 390, height: 844 });
  await page.waitForTimeout(100); // one layout pass
  const widths = await page.evaluate(() => [document.documentElement.scrollWidth, window.innerWidth]);
  assert.ok(widths[0] <= widths[1], `page is ${widths[0]}px wide on a ${widths[1]}px screen`);
  const box = await page.locator("#sub-button").boundingBox();
  assert.ok(box.height >= 44, `tap targets are at least 44px high (${box.height})`);
  await page.screenshot({ path: path.join(OUT, "demo-phone.png"), fullPage: true });
  await page.setViewportSize({ width: 1200, height: 900 });
});

test("the seed's console snippet receives a raw-format message", async () => {
  const seen = [];
  const onConsole = (m) => seen.push(m.text());
  page.on("console", onConsole);
  try {
    // Exactly the README's snippet, in the page's context.
    await page.evaluate((url) => {
      window.ws = new WebSocket(url);
      window.ws.onmessage = (e) => console.log(e.data);
    }, `ws://${gw}/ws?format=raw`);
    // The first frame is the seed's welcome line; after it the connection receives.
    const deadline = Date.now() + WAIT;
    while (!seen.some((t) => /^worker id:gw-browser connection id:\d+ connected$/.test(t))) {
      assert.ok(Date.now() < deadline, `no welcome frame on the console: ${JSON.stringify(seen)}`);
      await new Promise((r) => setTimeout(r, 25));
    }
    assert.equal(await curl(`http://${api}/?content=${encodeURIComponent("hello raw world")}`), "ok");
    while (!seen.includes("hello raw world")) {
      assert.ok(Date.now() < deadline, `raw message not logged: ${JSON.stringify(seen)}`);
      await new Promise((r) => setTimeout(r, 25));
    }
  } finally {
    page.off("console", onConsole);
    await page.evaluate(() => window.ws?.close());
  }
});
