// The client → backend ops through the SDK, against the real binaries:
// `publish` in a namespace that allows it (positioned, received by the
// other subscribers), `rpc` answered by a real HTTP backend started here,
// `presence`, and `join`/`leave` events on the subscription.

import { test } from "node:test";
import assert from "node:assert/strict";
import { createServer } from "node:http";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";

import { Client, ReplyError } from "../dist/index.js";
import { eventually, recorder, system } from "./harness.mjs";

/** A backend that answers rpc calls with what it was sent, and records them. */
async function backend() {
  const calls = [];
  const server = createServer((req, res) => {
    let body = "";
    req.on("data", (c) => (body += c));
    req.on("end", () => {
      const call = { path: req.url, body: JSON.parse(body || "{}") };
      calls.push(call);
      res.setHeader("content-type", "application/json");
      if (req.url.endsWith("/rpc") && call.body.method === "echo") {
        res.end(JSON.stringify({ result: { data: { echoed: call.body.data, user: call.body.user ?? null } } }));
      } else if (req.url.endsWith("/rpc")) {
        res.end(JSON.stringify({ error: { code: 1, message: `no method ${call.body.method}` } }));
      } else {
        res.end(JSON.stringify({ result: {} }));
      }
    });
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  return { url: `http://127.0.0.1:${server.address().port}/pushmesh`, calls, close: () => server.close() };
}

test("publish, rpc, presence and join/leave through the SDK", async (t) => {
  const be = await backend();
  t.after(() => be.close());
  const dir = mkdtempSync(path.join(tmpdir(), "pushmesh-sdk-ns-"));
  const file = path.join(dir, "namespaces.toml");
  writeFileSync(file, [
    "[proxy]",
    `endpoint = "${be.url}"`,
    "rpc = true",
    "",
    "[[namespace]]",
    'prefix = "room:"',
    "client_publish = true",
    "join_leave = true",
    "presence = true",
    "",
  ].join("\n"));
  const sys = await system({ gateways: 2, gatewayArgs: ["--namespaces", file] });
  t.after(() => sys.stop());

  const alice = new Client(sys.ws(0));
  const bob = new Client(sys.ws(1));
  t.after(() => (alice.disconnect(), bob.disconnect()));
  const a = alice.subscribe("room:1");
  const la = recorder(alice, a);
  await alice.connect();
  await a.ready();
  const b = bob.subscribe("room:1");
  const lb = recorder(bob, b);
  await bob.connect();
  await b.ready();

  // Alice is told that Bob joined (his connection is on the other gateway).
  const joined = await eventually("alice sees bob join", () => la.of("join").find((e) => e.connection === bob.connection.connection));
  assert.equal(joined.channel, "room:1");

  // A client publish: positioned, and both subscribers get it with that position.
  const pos = await alice.publish("room:1", { text: "hi" });
  assert.match(pos.epoch, /^[A-Za-z0-9]+$/);
  assert.ok(pos.offset >= 1, JSON.stringify(pos));
  for (const log of [la, lb]) {
    const m = await eventually("the message", () => log.of("message", "room:1").find((x) => x.data?.text === "hi"));
    assert.deepEqual([m.epoch, m.offset], [pos.epoch, pos.offset]);
  }
  // Outside the namespace, publishing is refused with the gateway's code.
  await assert.rejects(alice.publish("news", 1), (e) => e instanceof ReplyError && e.code === "permission_denied");

  // rpc: the backend's answer comes back.
  assert.deepEqual(await bob.rpc("echo", { n: 7 }), { echoed: { n: 7 }, user: null });
  await assert.rejects(bob.rpc("missing"), (e) => e instanceof ReplyError && e.code === "rpc_error");
  assert.ok(be.calls.some((c) => c.path === "/pushmesh/rpc" && c.body.client === bob.connection.connection));

  // presence: both connections, across the two gateways.
  const who = await alice.presence("room:1");
  assert.equal(who.channel, "room:1");
  assert.deepEqual(who.clients.map((c) => c.connection).sort(), [alice.connection.connection, bob.connection.connection].sort());

  // Bob leaves: Alice is told.
  const bobConn = bob.connection.connection;
  await b.unsubscribe();
  await eventually("alice sees bob leave", () => la.of("leave").some((e) => e.connection === bobConn));
});
