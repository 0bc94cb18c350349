// The npm package as a user gets it: `npm pack`'s file list, types that a
// TypeScript consumer resolves through package.json, an install of the
// tarball that imports and runs, no test or dev-only code inside; and the
// gateway's embedded copy of the bundle (services/ws-gateway/static/
// pushmesh.js, served at /pushmesh.js) is this build, byte for byte.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync, mkdirSync, readdirSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

const PKG_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const ROOT = path.resolve(PKG_DIR, "../..");
const pkg = JSON.parse(readFileSync(path.join(PKG_DIR, "package.json"), "utf8"));
let work, tarball;

const npm = (args, cwd) => execFileSync("npm", [...args, "--no-audit", "--no-fund", "--loglevel=error"], { cwd, encoding: "utf8" });

before(() => {
  work = mkdtempSync(path.join(tmpdir(), "pushmesh-pack-"));
  const [packed] = JSON.parse(npm(["pack", "--json", "--pack-destination", work], PKG_DIR));
  tarball = { ...packed, path: path.join(work, packed.filename) };
});

after(() => work && rmSync(work, { recursive: true, force: true }));

test("npm pack: the bundle, its declarations and the manifest; nothing else", () => {
  const files = tarball.files.map((f) => f.path).sort();
  const sources = readdirSync(path.join(PKG_DIR, "src")).filter((f) => f.endsWith(".ts")).map((f) => f.replace(/\.ts$/, ""));
  const expected = ["README.md", "package.json", "dist/index.js", ...sources.map((s) => `dist/${s}.d.ts`)].sort();
  assert.deepEqual(files, expected);
  assert.equal(tarball.name, "@pushmesh/client");
  assert.equal(tarball.version, pkg.version);
  assert.ok(tarball.size < 40_000, `the packed tarball is ${tarball.size} bytes`);
  assert.deepEqual(pkg.dependencies ?? {}, {}, "no runtime dependencies");
  assert.equal(pkg.exports["."].types, "./dist/index.d.ts");
  assert.equal(pkg.exports["."].import, "./dist/index.js");
});

test("the bundle is self-contained browser-safe code: no imports, no Node.js APIs, no test code", () => {
  const js = readFileSync(path.join(PKG_DIR, "dist/index.js"), "utf8");
  assert.doesNotMatch(js, /^\s*import\s/m, "no import statements: one self-contained module");
  assert.doesNotMatch(js, /\brequire\(|node:|process\.|Buffer\b|__dirname/, "nothing Node.js-only");
  assert.doesNotMatch(js, /node:test|harness|assert/, "no test code");
  const dts = readFileSync(path.join(PKG_DIR, "dist/index.d.ts"), "utf8");
  for (const name of ["Client", "Subscription", "PushmeshError", "TimeoutError", "ClientEvents", "SubscriptionEvents", "StreamPosition"]) {
    assert.match(dts, new RegExp(`\\b${name}\\b`), `${name} is exported with its type`);
  }
  // @internal members stay out of the public types.
  const sub = readFileSync(path.join(PKG_DIR, "dist/subscription.d.ts"), "utf8");
  assert.doesNotMatch(sub, /_deliver|_subscribed|SubscriptionHost/);
});

test("installed from the tarball: it imports and runs in Node.js, and a TypeScript consumer type-checks against it", () => {
  const app = path.join(work, "app");
  mkdirSync(app);
  writeFileSync(path.join(app, "package.json"), JSON.stringify({ name: "consumer", private: true, type: "module" }));
  npm(["install", "--offline", tarball.path], app);
  const out = execFileSync(
    process.execPath,
    ["--experimental-websocket", "--input-type=module", "-e",
      `import { Client, Backoff } from "@pushmesh/client";
       const c = new Client("ws://127.0.0.1:9/ws");
       console.log(c.state, typeof Backoff);`],
    { cwd: app, encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] },
  );
  assert.equal(out.trim(), "disconnected function");

  // Strict TypeScript against the installed declarations (through "exports").
  writeFileSync(path.join(app, "app.ts"), `
    import { Client, type ChannelMessage, type StreamPosition, TimeoutError } from "@pushmesh/client";
    const client = new Client(() => "wss://push.example.com/ws", { getToken: async () => "jwt", pingIntervalMs: 20_000 });
    const sub = client.subscribe<{ price: number }>("prices", {
      onMessage: (m: ChannelMessage<{ price: number }>) => console.log(m.data.price.toFixed(2), m.offset),
    });
    sub.on("notRecovered", (e) => console.log(e.reason, e.since?.offset));
    client.on("disconnected", (e) => console.log(e.code, e.reconnect, e.delayMs));
    const p: StreamPosition | undefined = sub.position;
    client.connect().then((w) => console.log(w.connection), (e) => console.log(e instanceof TimeoutError));
    // @ts-expect-error: not an event of a client
    client.on("nonsense", () => {});
    // @ts-expect-error: data is typed
    sub.on("message", (m) => m.data.missing.toFixed());
    void p;
  `);
  writeFileSync(path.join(app, "tsconfig.json"), JSON.stringify({
    compilerOptions: { strict: true, noEmit: true, target: "ES2022", module: "ES2022", moduleResolution: "bundler", lib: ["ES2022", "DOM"], types: [] },
    files: ["app.ts"],
  }));
  execFileSync(process.execPath, [path.join(PKG_DIR, "node_modules/typescript/bin/tsc"), "-p", app], { encoding: "utf8" });
});

test("the gateway's embedded copy (static/pushmesh.js) is this build", () => {
  const built = readFileSync(path.join(PKG_DIR, "dist/index.js"), "utf8");
  const embedded = readFileSync(path.join(ROOT, "services/ws-gateway/static/pushmesh.js"), "utf8");
  assert.ok(built === embedded,
    "services/ws-gateway/static/pushmesh.js differs from a fresh build of clients/js: run `make sdk-bundle` and commit it");
});
