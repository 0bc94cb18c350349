// Test support for the SDK's integration tests: the real pushmesh binaries
// (hub, ws-gateway, http-ingress), started on port 0, each announcing its
// addresses as one JSON line on stdout; waiting for conditions with a
// deadline; publishing through the ingress's HTTP API.
//
// The binaries come from $PUSHMESH_BIN_DIR, else $CARGO_TARGET_DIR/debug,
// else target/debug at the repository root (build them with
// `cargo build --bins`). Service logs go to target/sdk-test/.

import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createHmac } from "node:crypto";
import { createWriteStream, existsSync, mkdirSync, readdirSync, readFileSync } from "node:fs";
import path from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../..");
export const BIN =
  process.env.PUSHMESH_BIN_DIR ||
  (process.env.CARGO_TARGET_DIR ? path.join(process.env.CARGO_TARGET_DIR, "debug") : path.join(ROOT, "target/debug"));
const LOGS = path.join(ROOT, "target/sdk-test");
/** How long any one expectation may take. */
export const WAIT = 15_000;
export const SECRET = "sdk-test-secret-not-for-production";

/** One running service. */
export class Proc {
  constructor(name, child, addrs, log) {
    Object.assign(this, { name, child, addrs, log });
    this.exited = new Promise((resolve) => child.once("exit", (code, signal) => resolve({ code, signal })));
  }

  get alive() {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  /** Send `sig`. For SIGSTOP, return only once every thread of the
   * process is stopped: kill(2) returns before a thread running on another
   * CPU has stopped, and a command sent in that window is still answered. */
  signal(sig) {
    this.child.kill(sig);
    if (sig !== "SIGSTOP") return;
    const deadline = Date.now() + 5_000;
    for (;;) {
      let states = [];
      try {
        states = readdirSync(`/proc/${this.child.pid}/task`).map((t) => {
          const stat = readFileSync(`/proc/${this.child.pid}/task/${t}/stat`, "utf8");
          return stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3);
        });
      } catch {
        return; // gone
      }
      if (states.every((s) => s === "T" || s === "t")) return;
      if (Date.now() > deadline) throw new Error(`${this.name} did not stop: thread states ${states.join("")}`);
    }
  }

  /** SIGKILL, and wait until it is gone. */
  async kill() {
    if (!this.alive) return;
    this.child.kill("SIGCONT");
    this.child.kill("SIGKILL");
    await this.exited;
  }
}

let seq = 0;

/** Start `name` with `args`; resolves once it announced its addresses. */
export async function start(name, args) {
  const exe = path.join(BIN, name);
  assert.ok(existsSync(exe), `${exe} is missing: build the binaries first (cargo build --bins), or set PUSHMESH_BIN_DIR`);
  mkdirSync(LOGS, { recursive: true });
  const logPath = path.join(LOGS, `${name}-${process.pid}-${++seq}.log`);
  const log = createWriteStream(logPath);
  const child = spawn(exe, args, { stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, PUSHMESH_LOG: process.env.PUSHMESH_TEST_LOG || "info,pushmesh_ws_gateway=debug" } });
  child.stderr.pipe(log);
  const lines = createInterface({ input: child.stdout });
  let timer;
  const line = await new Promise((resolve, reject) => {
    lines.once("line", resolve);
    child.once("exit", (code) => reject(new Error(`${name} exited (${code}) before announcing; see ${logPath}`)));
    timer = setTimeout(() => reject(new Error(`${name} did not announce its addresses within ${WAIT} ms; see ${logPath}`)), WAIT);
  }).finally(() => clearTimeout(timer));
  lines.on("line", () => {}); // keep draining
  return new Proc(name, child, JSON.parse(line).listening, logPath);
}

/** Poll `check` until it returns a truthy value (returned), or fail after `ms`. */
export async function eventually(what, check, ms = WAIT) {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await check();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(20);
  }
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

export async function waitReady(addr) {
  await eventually(`${addr}/readyz = 200`, async () => {
    try {
      return (await fetch(`http://${addr}/readyz`)).ok;
    } catch {
      return false;
    }
  });
}

/**
 * A local system: `hubs` hubs, `gateways` gateways (each attached to every
 * hub), one ingress. `stop()` kills what is left.
 */
export async function system({ gateways = 2, gatewayArgs = [], hubGrpc, hubArgs = [] } = {}) {
  const procs = [];
  const hub = await start("hub", ["--grpc-addr", hubGrpc ?? "127.0.0.1:0", "--admin-addr", "127.0.0.1:0", "--warmup-ms", "300", ...hubArgs]);
  procs.push(hub);
  const hubUrl = `http://${hub.addrs.grpc}`;
  const gws = [];
  for (let i = 0; i < gateways; i++) {
    const gw = await start("ws-gateway", [
      "--listen-addr", "127.0.0.1:0", "--hub", hubUrl, "--reconnect-max-ms", "300", "--gateway-id", `gw-${i}`, ...gatewayArgs,
    ]);
    procs.push(gw);
    gws.push(gw);
  }
  const ingress = await start("http-ingress", [
    "--listen-addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0", "--hub", hubUrl, "--hub-probe-ms", "100",
  ]);
  procs.push(ingress);
  for (const g of gws) await waitReady(g.addrs.http);
  await waitReady(ingress.addrs.http);
  const sys = {
    hub,
    gateways: gws,
    ingress,
    api: ingress.addrs.http,
    ws: (i) => `ws://${gws[i].addrs.http}/ws`,
    /** Start a hub again where the first one was (after killing it). */
    async restartHub() {
      let last;
      for (let i = 0; i < 50; i++) {
        try {
          sys.hub = await start("hub", ["--grpc-addr", hub.addrs.grpc, "--admin-addr", "127.0.0.1:0", "--warmup-ms", "300", ...hubArgs]);
          procs.push(sys.hub);
          return sys.hub;
        } catch (e) {
          last = e;
          await sleep(100);
        }
      }
      throw last;
    },
    async stop() {
      await Promise.all(procs.map((p) => p.kill()));
    },
  };
  return sys;
}

/**
 * A real `redis-server` (Debian's package; `make test` installs it) on port
 * 6379 of a random loopback address, without persistence; `stop()` kills it.
 * Resolves with its `redis://` URL once it accepts connections.
 */
export async function redis() {
  const exe = ["/usr/bin/redis-server", "/usr/local/bin/redis-server"].find(existsSync);
  assert.ok(exe, "redis-server is not installed: run `make redis-server` (make test does it)");
  let last;
  for (let attempt = 0; attempt < 5; attempt++) {
    const r = () => 1 + Math.floor(Math.random() * 253);
    const ip = `127.${r()}.${r()}.${r()}`;
    const child = spawn(exe, ["--bind", ip, "--port", "6379", "--save", "", "--appendonly", "no", "--protected-mode", "no"], {
      stdio: ["ignore", "pipe", "ignore"],
    });
    const proc = new Proc("redis-server", child, {}, "");
    const ready = await new Promise((resolve) => {
      const lines = createInterface({ input: child.stdout });
      const timer = setTimeout(() => resolve(false), WAIT);
      lines.on("line", (l) => l.includes("Ready to accept connections") && (clearTimeout(timer), resolve(true)));
      child.once("exit", () => (clearTimeout(timer), resolve(false)));
    });
    if (ready) return { url: `redis://${ip}:6379`, stop: () => proc.kill() };
    last = `redis-server on ${ip}:6379 did not start`;
    await proc.kill();
  }
  throw new Error(last);
}

/** POST JSON to the ingress; resolves with [status, body]. */
export async function post(api, route, body) {
  const resp = await fetch(`http://${api}${route}`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  const text = await resp.text();
  let parsed;
  try {
    parsed = JSON.parse(text);
  } catch {
    parsed = text;
  }
  return [resp.status, parsed];
}

/** Publish; must be accepted. */
export async function publish(api, channel, data) {
  const [status, body] = await post(api, "/publish", { channel, data });
  assert.equal(status, 200, `publish to ${channel}: ${JSON.stringify(body)}`);
  return body;
}

/** Publish, retrying while no hub can take it (503): for tests that kill the hub. */
export async function publishRetrying(api, channel, data) {
  const deadline = Date.now() + WAIT;
  for (;;) {
    let status, body;
    try {
      [status, body] = await post(api, "/publish", { channel, data });
    } catch (e) {
      body = String(e);
    }
    if (status === 200) return body;
    assert.ok(status === 503 || status === undefined, `publish answered ${status}: ${JSON.stringify(body)}`);
    assert.ok(Date.now() < deadline, `publish kept failing: ${JSON.stringify(body)}`);
    await sleep(50);
  }
}

/**
 * Publish `n` messages `{n: 0…}` on `channel`, one every `everyMs`, while
 * `during(k)` is called after message k (to inject a fault). Resolves once
 * all are accepted.
 */
export async function publishNumbered(api, channel, n, { everyMs = 5, during, retry = false } = {}) {
  for (let k = 0; k < n; k++) {
    if (retry) await publishRetrying(api, channel, { n: k });
    else await publish(api, channel, { n: k });
    if (during) await during(k);
    if (everyMs) await sleep(everyMs);
  }
}

/** An HS256 JWT, minted as a backend would (no library needed for HS256). */
export function jwt(claims, secret = SECRET) {
  const b64 = (v) => Buffer.from(JSON.stringify(v)).toString("base64url");
  const head = `${b64({ alg: "HS256", typ: "JWT" })}.${b64(claims)}`;
  return `${head}.${createHmac("sha256", secret).update(head).digest("base64url")}`;
}

/** A token for `sub` allowing `channels`, valid for `ttlSecs` from now. */
export function token(sub, ttlSecs, channels = ["*"], secret = SECRET) {
  const now = Math.floor(Date.now() / 1000);
  return jwt({ sub, channels, iat: now, exp: now + ttlSecs }, secret);
}

/** Record every event of a client and its subscriptions, in order. */
export function recorder(client, ...subs) {
  const log = [];
  for (const type of ["connecting", "connected", "disconnected", "error", "message", "serverSubscribed", "serverUnsubscribed", "refreshed"]) {
    client.on(type, (e) => log.push({ on: "client", type, ...e }));
  }
  const watch = (sub) => {
    for (const type of ["subscribed", "recovered", "notRecovered", "message", "error", "unsubscribed", "join", "leave"]) {
      sub.on(type, (e) => log.push({ on: sub.channel, type, ...e }));
    }
  };
  subs.forEach(watch);
  log.watch = watch;
  log.types = (on) => log.filter((e) => !on || e.on === on).map((e) => e.type);
  log.of = (type, on) => log.filter((e) => e.type === type && (!on || e.on === on));
  return log;
}
