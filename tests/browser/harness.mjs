// What every browser test shares: where the binaries are, starting a
// service and reading its announce line, readiness, polling, curl, and a
// headless Chromium with a fresh profile. Each test file keeps only its
// own system and assertions.

import assert from "node:assert/strict";
import { spawn, execFile } from "node:child_process";
import { createInterface } from "node:readline";
import { mkdtemp, mkdir, rm } from "node:fs/promises";
import { createWriteStream, existsSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
export const BIN = process.env.PUSHMESH_BIN_DIR ||
  (process.env.CARGO_TARGET_DIR ? path.join(process.env.CARGO_TARGET_DIR, "debug") : path.join(ROOT, "target/debug"));
/** Screenshots and service logs. */
export const OUT = path.join(ROOT, "target/browser");
export const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
export const WAIT = 15_000;

/** The service processes one test file started; `stop` ends them all. */
export class Services {
  /** @param {string} prefix names this file's logs in target/browser/ */
  constructor(prefix) {
    this.prefix = prefix;
    this.procs = [];
  }

  /** Start a service binary; resolve with the process and its announced addresses. */
  async start(name, args, logName = `${name}-${this.procs.length}`) {
    const exe = path.join(BIN, name);
    assert.ok(existsSync(exe), `${exe} is missing: build the binaries first (cargo build --bins)`);
    await mkdir(OUT, { recursive: true });
    const log = createWriteStream(path.join(OUT, `${this.prefix}-${logName}.log`));
    const proc = spawn(exe, args, { stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, PUSHMESH_LOG: "info" } });
    this.procs.push(proc);
    proc.stderr.pipe(log);
    const lines = createInterface({ input: proc.stdout });
    let timer;
    const line = await new Promise((resolve, reject) => {
      lines.once("line", resolve);
      proc.once("exit", (code) => reject(new Error(`${name} exited (${code}) before announcing; see ${log.path}`)));
      timer = setTimeout(() => reject(new Error(`${name} did not announce its addresses within ${WAIT}ms`)), WAIT);
    }).finally(() => clearTimeout(timer));
    lines.on("line", () => {}); // keep draining
    return { proc, addrs: JSON.parse(line).listening };
  }

  /**
   * Stop every process still running, the last started first, each with
   * SIGTERM (the graceful drain) and SIGKILL after 5 s; a drain slower
   * than 4 s is reported.
   */
  async stop() {
    for (const p of [...this.procs].reverse()) {
      if (p.exitCode !== null || p.signalCode !== null) continue;
      const started = Date.now();
      const exited = new Promise((r) => p.once("exit", r));
      p.kill("SIGTERM");
      const timer = setTimeout(() => p.kill("SIGKILL"), 5000);
      await exited;
      clearTimeout(timer);
      if (Date.now() - started > 4000) console.error(`${p.spawnfile} took ${Date.now() - started}ms to stop on SIGTERM`);
    }
  }
}

/** Poll `check` every 25 ms until it returns something truthy (resolved with it), or fail after WAIT. */
export async function eventually(what, check) {
  const deadline = Date.now() + WAIT;
  for (;;) {
    const v = await check();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

export const waitReady = (addr) =>
  eventually(`${addr}/readyz to answer 200`, async () => (await fetch(`http://${addr}/readyz`).catch(() => ({}))).ok);

/** curl, exactly as a user would type it; resolves with stdout. */
export function curl(...args) {
  return new Promise((resolve, reject) => {
    execFile("curl", ["-sS", "--fail-with-body", "--max-time", "10", ...args], (err, stdout, stderr) => {
      if (err) reject(new Error(`curl ${args.join(" ")} failed: ${err.message} ${stdout} ${stderr}`));
      else resolve(stdout);
    });
  });
}

/**
 * Headless Chromium with a fresh profile and the flags this machine needs;
 * resolves with its context, its first page (page errors go to stderr) and
 * `close`, which also removes the profile.
 */
export async function browser(options = {}) {
  const profile = await mkdtemp(path.join(tmpdir(), "pushmesh-chromium-"));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
      "--disable-component-update", "--no-first-run"],
    ...options,
  });
  context.setDefaultTimeout(WAIT);
  const page = context.pages()[0] ?? (await context.newPage());
  page.on("pageerror", (e) => console.error("page error:", e.message));
  return {
    context,
    page,
    close: async () => {
      await context.close().catch(() => {});
      await rm(profile, { recursive: true, force: true });
    },
  };
}
