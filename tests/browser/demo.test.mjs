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
import { spawn, execFile } from "node:child_process";
import { createInterface } from "node:readline";
import { mkdtemp, mkdir, rm } from "node:fs/promises";
import { createWriteStream, existsSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const BIN = process.env.PUSHMESH_BIN_DIR ||
  (process.env.CARGO_TARGET_DIR ? path.join(process.env.CARGO_TARGET_DIR, "debug") : path.join(ROOT, "target/debug"));
const OUT = path.join(ROOT, "target/browser");
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const WAIT = 15_000;

const procs = [];
let gw, api, context, page, userDataDir;

/** Start a service binary; resolve with its announced addresses. */
async function start(name, args) {
  const exe = path.join(BIN, name);
  assert.ok(existsSync(exe), `${exe} is missing: build the binaries first (cargo build --bins)`);
  const log = createWriteStream(path.join(OUT, `${name}.log`));
  const proc = spawn(exe, args, { stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, PUSHMESH_LOG: "info" } });
  procs.push(proc);
  proc.stderr.pipe(log);
  const lines = createInterface({ input: proc.stdout });
  let timer;
  const first = new Promise((resolve, reject) => {
    lines.once("line", resolve);
    proc.once("exit", (code) => reject(new Error(`${name} exited (${code}) before announcing; see ${log.path}`)));
    timer = setTimeout(() => reject(new Error(`${name} did not announce its addresses within ${WAIT}ms`)), WAIT);
  });
  const line = await first.finally(() => clearTimeout(timer));
  lines.on("line", () => {}); // keep draining
  return JSON.parse(line).listening;
}

async function waitReady(addr) {
  const deadline = Date.now() + WAIT;
  for (;;) {
    try {
      if ((await fetch(`http://${addr}/readyz`)).ok) return;
    } catch {}
    if (Date.now() > deadline) throw new Error(`${addr}/readyz never answered 200`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** curl, exactly as a user would type it; resolves with stdout. */
function curl(...args) {
  return new Promise((resolve, reject) => {
    execFile("curl", ["-sS", "--fail-with-body", "--max-time", "10", ...args], (err, stdout, stderr) => {
      if (err) reject(new Error(`curl ${args.join(" ")} failed: ${err.message} ${stdout} ${stderr}`));
      else resolve(stdout);
    });
  });
}

const publish = (channel, data) =>
  curl("-H", "content-type: application/json", "-d", JSON.stringify({ channel, data }), `http://${api}/publish`);

const feed = (channel) => page.locator(`#feed section[data-channel="${channel}"]`);

before(async () => {
  await mkdir(OUT, { recursive: true });
  const hub = await start("hub", ["--grpc-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0"]);
  const hubUrl = `http://${hub.grpc}`;
  gw = (await start("ws-gateway", ["--listen-addr", "127.0.0.1:0", "--hub", hubUrl, "--gateway-id", "gw-browser"])).http;
  // The page is served from the gateway's origin and calls the ingress from there.
  api = (await start("http-ingress", [
    "--listen-addr", "127.0.0.1:0", "--hub", hubUrl, "--hub-probe-ms", "100",
    "--cors-allow-origin", `http://${gw}`,
  ])).http;
  await waitReady(gw);
  await waitReady(api);

  userDataDir = await mkdtemp(path.join(tmpdir(), "pushmesh-chromium-"));
  context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM,
    headless: true,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
      "--disable-component-update", "--no-first-run"],
    viewport: { width: 1200, height: 900 },
  });
  context.setDefaultTimeout(WAIT);
  page = context.pages()[0] ?? (await context.newPage());
  page.on("pageerror", (e) => console.error("page error:", e.message));
});

after(async () => {
  await context?.close().catch(() => {});
  // Clients first, the hub last; each gets SIGTERM (the graceful drain).
  for (const p of [...procs].reverse()) {
    if (p.exitCode !== null) continue;
    const started = Date.now();
    const exited = new Promise((r) => p.once("exit", r));
    p.kill("SIGTERM");
    const timer = setTimeout(() => p.kill("SIGKILL"), 5000);
    await exited;
    clearTimeout(timer);
    if (Date.now() - started > 4000) console.error(`${p.spawnfile} took ${Date.now() - started}ms to stop on SIGTERM`);
  }
  if (userDataDir) await rm(userDataDir, { recursive: true, force: true });
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
