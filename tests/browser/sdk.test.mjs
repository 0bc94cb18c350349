// The client SDK in a real headless Chromium, as the npm package ships it:
// `npm pack` of clients/js, the bundle taken out of the tarball and loaded
// as a module into a page (not a test copy), against the real binaries: a
// hub, two gateways, an ingress. The browser's own WebSocket carries it
// through a gateway drain (SIGTERM → 1012) while messages are published.
//
// Run: make browser-test (builds the SDK first), or
// cd tests/browser && npm ci && node --test sdk.test.mjs

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtemp, rm } from "node:fs/promises";
import { existsSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { ROOT, Services, browser, eventually, waitReady } from "./harness.mjs";

const SDK = path.join(ROOT, "clients/js");
const services = new Services("sdk");
let gws = [], api, chromium, page, work, bundle;
const start = (name, args) => services.start(name, args);
const ready = waitReady;

before(async () => {
  // The package, packed as npm would publish it; its bundle, out of the tarball.
  assert.ok(existsSync(path.join(SDK, "dist/index.js")), "clients/js is not built: make sdk-build");
  work = await mkdtemp(path.join(tmpdir(), "pushmesh-sdk-browser-"));
  const [packed] = JSON.parse(execFileSync("npm", ["pack", "--json", "--pack-destination", work, "--loglevel=error"], { cwd: SDK, encoding: "utf8" }));
  execFileSync("tar", ["-xzf", path.join(work, packed.filename), "-C", work]);
  bundle = readFileSync(path.join(work, "package/dist/index.js"), "utf8");

  const hub = await start("hub", ["--grpc-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0", "--warmup-ms", "300"]);
  const hubUrl = `http://${hub.addrs.grpc}`;
  for (let i = 0; i < 2; i++) {
    gws.push(await start("ws-gateway", ["--listen-addr", "127.0.0.1:0", "--hub", hubUrl, "--gateway-id", `gw-sdk-${i}`, "--reconnect-max-ms", "300"]));
  }
  api = (await start("http-ingress", ["--listen-addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0", "--hub", hubUrl, "--hub-probe-ms", "100"])).addrs.http;
  for (const g of gws) await ready(g.addrs.http);
  await ready(api);

  chromium = await browser();
  page = chromium.page;
});

after(async () => {
  await chromium?.close();
  await services.stop();
  if (work) await rm(work, { recursive: true, force: true });
});

test("the packed SDK in Chromium: a gateway drain (1012) moves the client, every message once, in order", async () => {
  // A page of the gateway's origin (the browser's local-network rules let
  // it open WebSockets to the gateways), with the package's bundle loaded.
  await page.goto(`http://${gws[1].addrs.http}/healthz`);
  const urls = gws.map((g) => `ws://${g.addrs.http}/ws`);
  await page.evaluate(async ({ code, urls }) => {
    const url = URL.createObjectURL(new Blob([code], { type: "text/javascript" }));
    const { Client } = await import(url);
    let i = -1;
    const client = new Client(() => urls[(i = (i + 1) % urls.length)]);
    const events = [];
    const got = [];
    for (const t of ["connecting", "connected", "disconnected", "error"]) client.on(t, (e) => events.push({ type: t, ...e, error: e.error?.message }));
    const sub = client.subscribe("orders", { onMessage: (m) => got.push(m.data.n) });
    for (const t of ["subscribed", "recovered", "notRecovered", "error"]) sub.on(t, (e) => events.push({ type: `sub:${t}`, ...e, error: e.error?.message }));
    Object.assign(window, { client, sub, events, got });
    await client.connect();
    await sub.ready();
  }, { code: bundle, urls });
  assert.equal(await page.evaluate(() => client.connection.gateway), "gw-sdk-0");
  assert.ok(await page.evaluate(() => typeof client.ping === "function" && client.ping().then((ms) => ms >= 0)));

  const N = 200;
  for (let n = 0; n < N; n++) {
    const r = await fetch(`http://${api}/publish`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ channel: "orders", data: { n } }) });
    assert.equal(r.status, 200);
    if (n === 60) {
      await eventually("messages in the page", async () => (await page.evaluate(() => got.length)) > 30);
      gws[0].proc.kill("SIGTERM");
    }
    await new Promise((r) => setTimeout(r, 5));
  }
  await eventually(`all ${N} messages in the page`, async () => (await page.evaluate(() => got.length)) >= N);
  assert.deepEqual(await page.evaluate(() => got), [...Array(N).keys()], "exactly once, in order");
  const events = await page.evaluate(() => events);
  const drop = events.find((e) => e.type === "disconnected");
  assert.deepEqual([drop.code, drop.reconnect, drop.delayMs], [1012, true, 0], JSON.stringify(drop));
  assert.equal(await page.evaluate(() => client.connection.gateway), "gw-sdk-1");
  assert.deepEqual(events.map((e) => e.type), [
    "connecting", "connected", "sub:subscribed", "disconnected", "connecting", "connected", "sub:subscribed", "sub:recovered",
  ]);
  await page.evaluate(() => client.disconnect());
});

test("the gateway serves the same bundle at /pushmesh.js", async () => {
  const r = await fetch(`http://${gws[1].addrs.http}/pushmesh.js`);
  assert.equal(r.status, 200);
  assert.match(r.headers.get("content-type"), /^text\/javascript/);
  assert.ok((await r.text()) === bundle, "the gateway's /pushmesh.js is the packed package's dist/index.js");
});
