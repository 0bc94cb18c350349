//! Client → backend (docs/proxy.md): the gateway asks a real backend (an
//! HTTP server started by the test, `support::backend`) about connects,
//! subscribes, publishes and rpc calls, and tells it about disconnects;
//! client publishes go through the hubs like any publish. A backend that
//! misbehaves gives every client a clear error, never a hang, and does not
//! slow anyone else down.

use pushmesh_tests::backend::Backend;
use pushmesh_tests::*;
use serde_json::{Value, json};

fn namespaces(backend: &str, extra: &str) -> String {
    format!(
        r#"
[proxy]
endpoint = "{backend}"
timeout_ms = 400
connect = true
rpc = true
disconnect_notice = true
{extra}

[[namespace]]
prefix = "chat:"
client_publish = true
proxy_subscribe = true
proxy_publish = true

[[namespace]]
prefix = "open:"
client_publish = true

[[namespace]]
prefix = "norecover:"
recover = false
"#
    )
}

async fn system_with(ns: &str) -> anyhow::Result<System> {
    let file = scratch_file("namespaces.toml", ns)?;
    let file = file.to_str().expect("utf-8 path").to_owned();
    System::start_with(1, 1, &["--namespaces", &file], &[]).await
}

/// Connect with a session cookie and read the welcome.
async fn session(sys: &System, user: &str) -> anyhow::Result<(Client, Value)> {
    let cookie = format!("theme=dark; session={user}");
    let mut c = Client::connect_with_headers(sys.gw(0), "?room=1", &[("Cookie", &cookie)]).await?;
    let welcome = c.read_welcome().await?;
    Ok((c, welcome))
}

#[tokio::test]
async fn a_cookie_session_connects_subscribes_publishes_and_calls_the_backend() -> anyhow::Result<()> {
    let backend = Backend::start().await?;
    let sys = system_with(&namespaces(&backend.endpoint(), "")).await?;

    // Connect: the backend saw the cookie and the query (not the
    // WebSocket's own headers); its answer named the user and subscribed
    // the connection to the user's inbox.
    let (mut ann, welcome) = session(&sys, "ann").await?;
    assert_eq!(welcome["user"], "ann", "{welcome}");
    assert_eq!(ann.next_json().await?, json!({ "type": "subscribed", "channel": "user:ann:inbox" }));
    let connect = backend.wait_for("connect", |b| b["client"] == ann.connection.as_str()).await?;
    assert_eq!(connect["headers"]["cookie"], "theme=dark; session=ann", "{connect}");
    assert!(connect["headers"].get("sec-websocket-key").is_none(), "{connect}");
    assert_eq!(connect["query"], json!({ "room": "1" }));
    assert_eq!(connect["transport"], "websocket");
    post(sys.api(), "/publish", &json!({ "channel": "user:ann:inbox", "data": "hello ann" })).await?;
    ann.expect_data(&json!("hello ann")).await?;

    // Refused connects close with the backend's code and reason.
    let mut nobody = Client::connect_with_headers(sys.gw(0), "", &[]).await?;
    assert_eq!(nobody.expect_close().await?, (4001, "no session cookie".to_owned()));
    let mut banned = Client::connect_with_headers(sys.gw(0), "", &[("Cookie", "session=banned")]).await?;
    assert_eq!(banned.expect_close().await?, (4403, "you are banned".to_owned()));

    // Subscribe: asked per request.
    let r = ann.command(json!({ "op": "subscribe", "channel": "chat:secret" })).await?;
    assert_eq!(r["error"]["code"], "permission_denied", "{r}");
    assert_eq!(r["error"]["message"], "not a member of chat:secret");
    let (mut bob, _) = session(&sys, "bob").await?;
    bob.next_json().await?; // subscribed to bob's inbox
    bob.subscribe("chat:room").await?;
    let asked = backend.wait_for("subscribe", |b| b["channel"] == "chat:room").await?;
    assert_eq!((asked["user"].as_str(), asked["info"]["name"].as_str()), (Some("bob"), Some("bob")));

    // Publish: changed by the backend, positioned, received in order.
    let mut positions = Vec::new();
    for text in ["one", "two", "three"] {
        let r = ann.command(json!({ "op": "publish", "channel": "chat:room", "data": { "text": text } })).await?;
        assert_eq!(r["ok"], true, "{r}");
        positions.push((r["epoch"].as_str().expect("epoch").to_owned(), r["offset"].as_u64().expect("offset")));
    }
    assert!(positions.windows(2).all(|w| w[0].0 == w[1].0 && w[1].1 == w[0].1 + 1), "{positions:?}");
    for (text, (epoch, offset)) in ["one", "two", "three"].iter().zip(&positions) {
        let m = bob.expect_data(&json!({ "text": text, "by": "ann" })).await?;
        assert_eq!((m["epoch"].as_str(), m["offset"].as_u64()), (Some(epoch.as_str()), Some(*offset)));
    }
    // Refused by the backend, by the namespace, or by the data's absence.
    let r = ann.command(json!({ "op": "publish", "channel": "chat:room", "data": { "text": "spam" } })).await?;
    assert_eq!(
        (r["error"]["code"].as_str(), r["error"]["message"].as_str()),
        (Some("permission_denied"), Some("no spam here"))
    );
    let r = ann.command(json!({ "op": "publish", "channel": "news", "data": 1 })).await?;
    assert_eq!(r["error"]["code"], "permission_denied", "{r}");
    let r = ann.command(json!({ "op": "publish", "channel": "open:x" })).await?;
    assert_eq!(r["error"]["code"], "bad_request", "{r}");
    // Without proxy_publish the data goes as it is, no backend call.
    let before = backend.requests("publish").len();
    let r = ann.command(json!({ "op": "publish", "channel": "open:x", "data": [1, 2] })).await?;
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(backend.requests("publish").len(), before);

    // Recoverable: a late subscriber gets what followed its position.
    let (epoch, first) = positions[0].clone();
    let (mut cat, _) = session(&sys, "cat").await?;
    cat.next_json().await?;
    let r = cat.subscribe_since("chat:room", &epoch, first).await?;
    cat.expect_data(&json!({ "text": "two", "by": "ann" })).await?;
    cat.expect_data(&json!({ "text": "three", "by": "ann" })).await?;
    assert_eq!(r["recovered"], true, "{r}");
    // A namespace without recovery says so at once.
    let r = cat.subscribe_since("norecover:x", &epoch, 1).await?;
    assert_eq!(r["recovered"], false, "{r}");

    // RPC: the backend's answer, by request id.
    let r = ann.command(json!({ "op": "rpc", "method": "getUser", "data": { "q": 1 } })).await?;
    assert_eq!(r["data"], json!({ "user": "ann", "info": { "name": "ann" }, "echo": { "q": 1 } }), "{r}");
    let r = ann.command(json!({ "op": "rpc", "method": "nope" })).await?;
    assert_eq!(
        (r["error"]["code"].as_str(), r["error"]["message"].as_str()),
        (Some("rpc_error"), Some("no method nope"))
    );
    let r = ann.command(json!({ "op": "rpc" })).await?;
    assert_eq!(r["error"]["code"], "bad_request", "{r}");

    // Disconnect notice.
    let ann_id = ann.connection.clone();
    ann.close().await?;
    let notice = backend.wait_for("disconnect", |b| b["client"] == ann_id.as_str()).await?;
    assert_eq!((notice["user"].as_str(), notice["reason"].as_str()), (Some("ann"), Some("client")));

    // Every request the backend got is what docs/openapi-proxy.json says.
    let spec = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi-proxy.json");
    let spec: Value = serde_json::from_str(&std::fs::read_to_string(spec)?)?;
    for kind in ["connect", "subscribe", "publish", "rpc", "disconnect"] {
        let schema = &spec["paths"][format!("/{kind}")]["post"]["requestBody"]["content"]["application/json"]["schema"];
        let validator = jsonschema::draft202012::new(schema).map_err(|e| anyhow::anyhow!("{kind} schema: {e}"))?;
        let seen = backend.requests(kind);
        assert!(!seen.is_empty(), "no {kind} request");
        for body in seen {
            let errors: Vec<String> = validator.iter_errors(&body).map(|e| e.to_string()).collect();
            assert!(errors.is_empty(), "{kind} request {body} breaks the spec: {errors:?}");
        }
    }

    let m = metrics(sys.gw(0)).await?;
    let proxied = |kind: &str, outcome: &str| {
        sample(&m, "pushmesh_gateway_proxy_requests_total", &[("kind", kind), ("outcome", outcome)])
    };
    assert_eq!(proxied("publish", "ok"), 3.0);
    assert_eq!(proxied("publish", "refused"), 1.0);
    assert_eq!(proxied("connect", "refused"), 2.0);
    assert_eq!(sample(&m, "pushmesh_gateway_client_publishes_total", &[("result", "ok")]), 4.0);
    assert_eq!(sample(&m, "pushmesh_gateway_client_publishes_total", &[("result", "refused")]), 3.0);
    Ok(())
}

/// Send a command without waiting for its reply; its id.
async fn send(c: &mut Client, id: u64, mut cmd: Value) -> anyhow::Result<u64> {
    cmd["id"] = json!(id);
    c.send_json(&cmd).await?;
    Ok(id)
}

#[tokio::test]
async fn a_misbehaving_backend_gets_clients_clear_errors_and_bystanders_keep_receiving() -> anyhow::Result<()> {
    let backend = Backend::start().await?;
    let sys = system_with(&namespaces(&backend.endpoint(), "breaker_failures = 5\nbreaker_open_ms = 60000")).await?;
    let (mut bystander, _) = session(&sys, "bea").await?;
    bystander.next_json().await?;
    bystander.subscribe("news").await?;
    let (mut ann, _) = session(&sys, "ann").await?;
    ann.next_json().await?;

    // While ann waits on a backend that does not answer, the bystander
    // gets a broadcast: a stuck backend holds up only its caller.
    let id = send(&mut ann, 100, json!({ "op": "rpc", "method": "slow" })).await?;
    backend.wait_for("rpc", |b| b["method"] == "slow").await?;
    post(sys.api(), "/publish", &json!({ "channel": "news", "data": "during" })).await?;
    bystander.expect_data(&json!("during")).await?;
    let r = ann.next_json().await?;
    assert_eq!((r["id"].as_u64(), r["error"]["code"].as_str()), (Some(id), Some("backend_timeout")), "{r}");

    // Every other misbehaviour: a clear error of its own.
    for (method, code, says) in [
        ("fail", "backend_error", "HTTP 500"),
        ("garbage", "backend_error", "not JSON"),
        ("huge", "backend_error", "larger than 65536 bytes"),
    ] {
        let r = ann.command(json!({ "op": "rpc", "method": method })).await?;
        assert_eq!(r["error"]["code"], code, "{method}: {r}");
        assert!(r["error"]["message"].as_str().unwrap_or_default().contains(says), "{method}: {r}");
    }
    // Subscribes too (a timeout there is a refusal of that subscribe only).
    let r = ann.command(json!({ "op": "subscribe", "channel": "chat:fail:1" })).await?;
    assert_eq!(r["error"]["code"], "backend_error", "{r}");
    // A 503 is retried (the call is safe to repeat): the client sees success.
    let r = ann.command(json!({ "op": "rpc", "method": "flaky" })).await?;
    assert_eq!(r["ok"], true, "{r}");
    post(sys.api(), "/publish", &json!({ "channel": "news", "data": "after" })).await?;
    bystander.expect_data(&json!("after")).await?;

    // Five consecutive failures open the rpc circuit: calls then fail at
    // once without reaching the backend, and other kinds still work.
    for _ in 0..5 {
        let r = ann.command(json!({ "op": "rpc", "method": "fail" })).await?;
        assert_eq!(r["error"]["code"], "backend_error", "{r}");
    }
    let calls = backend.requests("rpc").len();
    let r = ann.command(json!({ "op": "rpc", "method": "getUser" })).await?;
    assert_eq!(r["error"]["code"], "backend_unavailable", "{r}");
    assert!(r["error"]["message"].as_str().unwrap_or_default().contains("circuit open"), "{r}");
    assert_eq!(backend.requests("rpc").len(), calls, "an open circuit must not call the backend");
    ann.subscribe("chat:room").await?;

    let m = metrics(sys.gw(0)).await?;
    let rpc =
        |outcome: &str| sample(&m, "pushmesh_gateway_proxy_requests_total", &[("kind", "rpc"), ("outcome", outcome)]);
    assert_eq!((rpc("timeout"), rpc("error"), rpc("circuit_open"), rpc("ok")), (1.0, 8.0, 1.0, 1.0));
    Ok(())
}

#[tokio::test]
async fn a_dead_backend_closes_new_connections_with_4005_and_the_namespaces_file_is_checked() -> anyhow::Result<()> {
    // Port 1 on loopback: nothing listens there (connection refused).
    let sys = system_with(&namespaces("http://127.0.0.1:1/pushmesh", "retries = 2")).await?;
    let mut c = Client::connect_with_headers(sys.gw(0), "", &[("Cookie", "session=ann")]).await?;
    let (code, reason) = c.expect_close().await?;
    assert_eq!(code, 4005, "{reason}");
    assert!(reason.contains("unavailable") && reason.contains("retry later"), "{reason}");
    let m = metrics(sys.gw(0)).await?;
    assert_eq!(
        sample(&m, "pushmesh_gateway_proxy_requests_total", &[("kind", "connect"), ("outcome", "unavailable")]),
        1.0
    );

    // A bad file stops the gateway before it binds, naming the line.
    let bad = scratch_file("bad.toml", "[[namespace]]\nprefix = \"chat:\"\nclient_publsh = true\n")?;
    let out = std::process::Command::new(bin("ws-gateway"))
        .args(["--listen-addr", "127.0.0.1:0", "--namespaces", bad.to_str().expect("path")])
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("line 3") && stderr.contains("client_publsh"), "{stderr}");
    Ok(())
}

/// A token with extra claims (for `require_claims`).
fn token_with_claims(sub: &str, claims: Value) -> String {
    let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs() + 3600;
    let mut all = json!({ "sub": sub, "channels": ["*"], "exp": exp });
    for (k, v) in claims.as_object().expect("claims object") {
        all[k] = v.clone();
    }
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &all,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("encode token")
}

#[tokio::test]
async fn join_leave_presence_and_required_claims_follow_the_namespaces() -> anyhow::Result<()> {
    let ns = r#"
[[namespace]]
prefix = "room:"
join_leave = true
presence = true

[[namespace]]
prefix = "vip:"
require_claims = { role = "vip" }
"#;
    let file = scratch_file("namespaces.toml", ns)?;
    let file = file.to_str().expect("utf-8 path").to_owned();
    let sys = System::start_with(1, 2, &["--namespaces", &file, "--jwt-secret", SECRET], &[]).await?;
    let mut ann = Client::connect_as(sys.gw(0), &token_with_claims("ann", json!({ "role": "vip" }))).await?;
    let mut bob = Client::connect_as(sys.gw(1), &token(SECRET, "bob", &["*"], 3600)).await?;

    // Join: the other subscribers hear of it (across gateways), not the joiner.
    ann.subscribe("room:1").await?;
    bob.subscribe("room:1").await?;
    let join = ann.next_json().await?;
    assert_eq!(join, json!({ "type": "join", "channel": "room:1", "user": "bob", "connection": bob.connection }));

    // Presence, where the namespace allows it.
    let r = bob.command(json!({ "op": "presence", "channel": "room:1" })).await?;
    assert_eq!((r["data"]["connections"].as_u64(), r["data"]["users"].as_u64()), (Some(2), Some(2)), "{r}");
    assert_eq!(r["data"]["partial"], false, "{r}");
    let r = bob.command(json!({ "op": "presence", "channel": "news" })).await?;
    assert_eq!(r["error"]["code"], "permission_denied", "{r}");

    // Leave: by unsubscribe, and by disconnect.
    bob.command(json!({ "op": "unsubscribe", "channel": "room:1" })).await?;
    let leave = ann.next_json().await?;
    assert_eq!(leave, json!({ "type": "leave", "channel": "room:1", "user": "bob", "connection": bob.connection }));
    bob.subscribe("room:1").await?;
    ann.next_json().await?; // bob's join
    let bob_id = bob.connection.clone();
    bob.close().await?;
    let leave = ann.next_json().await?;
    assert_eq!(leave, json!({ "type": "leave", "channel": "room:1", "user": "bob", "connection": bob_id }));
    // Messages still flow, positioned, in a join_leave namespace.
    post(sys.api(), "/publish", &json!({ "channel": "room:1", "data": "hi" })).await?;
    let m = ann.expect_data(&json!("hi")).await?;
    assert!(m["offset"].as_u64().is_some(), "{m}");

    // Required claims: ann has role=vip, cat does not.
    ann.subscribe("vip:lounge").await?;
    let mut cat = Client::connect_as(sys.gw(0), &token_with_claims("cat", json!({ "role": "guest" }))).await?;
    let r = cat.command(json!({ "op": "subscribe", "channel": "vip:lounge" })).await?;
    assert_eq!(r["error"]["code"], "permission_denied", "{r}");
    assert!(r["error"]["message"].as_str().unwrap_or_default().contains("role"), "{r}");
    // Clients may not publish where the namespace does not say so.
    let r = ann.command(json!({ "op": "publish", "channel": "room:1", "data": 1 })).await?;
    assert_eq!(r["error"]["code"], "permission_denied", "{r}");

    // An event stream meets the same claims: the token allows every
    // channel ("*"), the namespace wants role=vip.
    let guest = token_with_claims("cat", json!({ "role": "guest" }));
    let r = http().get(format!("http://{}/sse?channel=vip:lounge&token={guest}", sys.gw(0))).send().await?;
    assert_eq!(r.status().as_u16(), 403);
    let body: Value = r.json().await?;
    assert_eq!(body["error"]["code"], "permission_denied", "{body}");
    assert!(body["error"]["message"].as_str().unwrap_or_default().contains("role"), "{body}");
    let vip = token_with_claims("ann", json!({ "role": "vip" }));
    let mut sse = SseClient::connect(sys.gw(0), &format!("?channel=vip:lounge&token={vip}"), None).await?;
    sse.expect("welcome").await?;
    sse.expect("subscribed").await?;
    Ok(())
}

/// An event stream (`GET /sse`) passes the checks a WebSocket and its
/// subscribes pass: the connect proxy, told about the request's cookies,
/// decides who it is; the subscribe proxy decides each channel.
#[tokio::test]
async fn event_streams_pass_the_connect_and_subscribe_proxies() -> anyhow::Result<()> {
    let backend = Backend::start().await?;
    let sys = system_with(&namespaces(&backend.endpoint(), "")).await?;
    let gw = sys.gw(0);
    let refused = |query: &'static str, cookie: Option<&'static str>| async move {
        let mut req = http().get(format!("http://{gw}/sse{query}"));
        if let Some(c) = cookie {
            req = req.header("cookie", c);
        }
        let r = req.send().await?;
        let status = r.status().as_u16();
        let body: Value = r.json().await?;
        anyhow::Ok((status, body["error"]["code"].clone(), body["error"]["message"].clone()))
    };
    // Who: the backend's connect answer, as for a WebSocket.
    assert_eq!(refused("?channel=chat:room", None).await?, (401, json!("unauthorized"), json!("no session cookie")));
    assert_eq!(
        refused("?channel=chat:room", Some("session=banned")).await?,
        (401, json!("unauthorized"), json!("you are banned"))
    );
    // Which channels: the subscribe proxy, per channel.
    assert_eq!(
        refused("?channel=chat:room&channel=chat:secret", Some("session=ann")).await?,
        (403, json!("permission_denied"), json!("not a member of chat:secret"))
    );

    let mut sse =
        SseClient::connect_with_headers(gw, "?channel=chat:room", None, &[("Cookie", "theme=dark; session=ann")])
            .await?;
    let welcome = sse.expect("welcome").await?.json()?;
    assert_eq!(welcome["user"], "ann", "{welcome}");
    // The named channel, then the one the connect answer subscribes ann to.
    assert_eq!(sse.expect("subscribed").await?.json()?["channel"], "chat:room");
    assert_eq!(sse.expect("subscribed").await?.json()?["channel"], "user:ann:inbox");
    let client = welcome["connection"].as_str().expect("connection").to_owned();
    let connect = backend.wait_for("connect", |b| b["client"] == client.as_str()).await?;
    assert_eq!(
        (connect["transport"].as_str(), connect["headers"]["cookie"].as_str()),
        (Some("sse"), Some("theme=dark; session=ann"))
    );
    let asked = backend.wait_for("subscribe", |b| b["client"] == client.as_str()).await?;
    assert_eq!((asked["channel"].as_str(), asked["user"].as_str()), (Some("chat:room"), Some("ann")), "{asked}");
    post(sys.api(), "/publish", &json!({ "channel": "chat:room", "data": "to the room" })).await?;
    assert_eq!(sse.next_event().await?.json()?["data"], "to the room");
    post(sys.api(), "/publish", &json!({ "channel": "user:ann:inbox", "data": "to ann" })).await?;
    let ev = sse.next_event().await?;
    assert_eq!(ev.json()?["data"], "to ann");
    // Its id holds a position per channel of the stream, named ones first.
    let id = ev.id.clone().expect("a positioned message has an id");
    let positions: Vec<&str> = id.split(',').collect();
    assert!(positions.len() == 2 && positions.iter().all(|p| p.contains(':')), "{id}");

    // A stream may name no channel at all: the backend's answer subscribes
    // it; and it resumes from Last-Event-ID in those channels too.
    let bob = [("Cookie", "session=bob")];
    let mut inbox = SseClient::connect_with_headers(gw, "", None, &bob).await?;
    inbox.expect("welcome").await?;
    assert_eq!(inbox.expect("subscribed").await?.json()?["channel"], "user:bob:inbox");
    post(sys.api(), "/publish", &json!({ "channel": "user:bob:inbox", "data": "one" })).await?;
    let first = inbox.next_event().await?;
    assert_eq!(first.json()?["data"], "one");
    drop(inbox);
    post(sys.api(), "/publish", &json!({ "channel": "user:bob:inbox", "data": "two" })).await?;
    let mut again = SseClient::connect_with_headers(gw, "", first.id.as_deref(), &bob).await?;
    again.expect("welcome").await?;
    let subscribed = again.expect("subscribed").await?.json()?;
    assert_eq!((&subscribed["channel"], &subscribed["recovered"]), (&json!("user:bob:inbox"), &json!(true)));
    assert_eq!(again.next_event().await?.json()?["data"], "two");
    // Without a connect proxy, a stream without channels is still a 400
    // (sse::streams_are_refused_clearly_and_closed_with_a_reason).

    // Refused streams are counted like refused WebSockets.
    let text = metrics(gw).await?;
    assert_eq!(sample(&text, "pushmesh_gateway_auth_failures_total", &[("reason", "refused")]), 2.0);
    Ok(())
}

#[tokio::test]
async fn a_grpc_backend_answers_the_same_calls() -> anyhow::Result<()> {
    let backend = pushmesh_tests::backend::GrpcBackend::start().await?;
    let sys = system_with(&namespaces(&backend.endpoint(), "")).await?;

    let (mut ann, welcome) = session(&sys, "ann").await?;
    assert_eq!(welcome["user"], "ann", "{welcome}");
    assert_eq!(ann.next_json().await?, json!({ "type": "subscribed", "channel": "user:ann:inbox" }));
    let connect = backend.wait_for("connect", |b| b["client"] == ann.connection.as_str()).await?;
    assert_eq!(connect["headers"]["cookie"], "theme=dark; session=ann", "{connect}");
    let mut banned = Client::connect_with_headers(sys.gw(0), "", &[("Cookie", "session=banned")]).await?;
    assert_eq!(banned.expect_close().await?, (4403, "you are banned".to_owned()));

    let r = ann.command(json!({ "op": "subscribe", "channel": "chat:secret" })).await?;
    assert_eq!(
        (r["error"]["code"].as_str(), r["error"]["message"].as_str()),
        (Some("permission_denied"), Some("not a member of chat:secret"))
    );
    let (mut bob, _) = session(&sys, "bob").await?;
    bob.next_json().await?;
    bob.subscribe("chat:room").await?;
    let r = ann.command(json!({ "op": "publish", "channel": "chat:room", "data": { "text": "hi" } })).await?;
    assert_eq!(r["ok"], true, "{r}");
    bob.expect_data(&json!({ "text": "hi", "by": "ann" })).await?;
    let r = ann.command(json!({ "op": "publish", "channel": "chat:room", "data": { "text": "spam" } })).await?;
    assert_eq!(r["error"]["message"], "no spam here", "{r}");

    let r = ann.command(json!({ "op": "rpc", "method": "getUser", "data": [1] })).await?;
    assert_eq!(r["data"], json!({ "user": "ann", "info": { "name": "ann" }, "echo": [1] }), "{r}");
    // A gRPC error status is the backend failing, not a refusal.
    let r = ann.command(json!({ "op": "rpc", "method": "fail" })).await?;
    assert_eq!(r["error"]["code"], "backend_error", "{r}");

    let ann_id = ann.connection.clone();
    ann.close().await?;
    let notice = backend.wait_for("disconnect", |b| b["client"] == ann_id.as_str()).await?;
    assert_eq!(notice["user"], "ann");
    Ok(())
}

#[tokio::test]
async fn the_connect_proxy_works_beside_jwt() -> anyhow::Result<()> {
    let backend = Backend::start().await?;
    let file = scratch_file("namespaces.toml", &namespaces(&backend.endpoint(), ""))?;
    let file = file.to_str().expect("utf-8 path").to_owned();
    let sys = System::start_with(1, 1, &["--namespaces", &file, "--jwt-secret", SECRET], &[]).await?;
    // A JWT in ?token= is checked as before; the backend is not asked.
    let mut jwt = Client::connect_as(sys.gw(0), &token(SECRET, "tok", &["news"], 3600)).await?;
    jwt.subscribe("news").await?;
    let r = jwt.command(json!({ "op": "subscribe", "channel": "other" })).await?;
    assert_eq!(r["error"]["code"], "permission_denied", "{r}");
    // A session cookie without a token: the backend decides.
    let (_cookie, welcome) = session(&sys, "ann").await?;
    assert_eq!(welcome["user"], "ann");
    let connects = backend.requests("connect");
    assert_eq!(connects.len(), 1, "{connects:?}");
    assert_ne!(connects[0]["client"], jwt.connection.as_str());
    Ok(())
}

#[tokio::test]
async fn calls_beyond_max_in_flight_fail_at_once_instead_of_queueing() -> anyhow::Result<()> {
    let backend = Backend::start().await?;
    // A timeout long enough for Bob's call to happen while Ann's is out.
    let ns = namespaces(&backend.endpoint(), "max_in_flight = 1").replace("timeout_ms = 400", "timeout_ms = 3000");
    let sys = system_with(&ns).await?;
    let (mut ann, _) = session(&sys, "ann").await?;
    ann.next_json().await?;
    let (mut bob, _) = session(&sys, "bob").await?;
    bob.next_json().await?;
    // Ann's call holds the only rpc slot (the backend sleeps on it)…
    send(&mut ann, 1, json!({ "op": "rpc", "method": "slow" })).await?;
    backend.wait_for("rpc", |b| b["method"] == "slow").await?;
    // …so Bob's is refused at once, without reaching the backend, and
    // other kinds of call have slots of their own.
    let r = bob.command(json!({ "op": "rpc", "method": "getUser" })).await?;
    assert_eq!(r["error"]["code"], "backend_unavailable", "{r}");
    assert!(r["error"]["message"].as_str().unwrap_or_default().contains("in flight"), "{r}");
    assert!(backend.requests("rpc").iter().all(|b| b["method"] != "getUser"));
    bob.subscribe("chat:room").await?;
    let r = ann.next_json().await?;
    assert_eq!(r["error"]["code"], "backend_timeout", "{r}");
    let m = metrics(sys.gw(0)).await?;
    assert_eq!(sample(&m, "pushmesh_gateway_proxy_requests_total", &[("kind", "rpc"), ("outcome", "overloaded")]), 1.0);
    Ok(())
}

#[tokio::test]
async fn the_connect_proxy_can_take_the_clients_first_message() -> anyhow::Result<()> {
    let backend = Backend::start().await?;
    let sys = system_with(&namespaces(&backend.endpoint(), "connect_first_message = true")).await?;
    // A browser cannot set headers: it sends its credentials first.
    let mut c = Client::connect_with_headers(sys.gw(0), "", &[]).await?;
    c.send_json(&json!({ "id": 1, "op": "connect", "data": { "session": "ann" } })).await?;
    assert_eq!(c.next_json().await?, json!({ "type": "reply", "id": 1, "ok": true }));
    let welcome = c.read_welcome().await?;
    assert_eq!(welcome["user"], "ann", "{welcome}");
    let connect = backend.wait_for("connect", |b| b["client"] == c.connection.as_str()).await?;
    assert_eq!(connect["data"], json!({ "session": "ann" }));
    // Anything else first is refused.
    let mut x = Client::connect_with_headers(sys.gw(0), "", &[]).await?;
    x.send_json(&json!({ "id": 1, "op": "ping" })).await?;
    let (code, reason) = x.expect_close().await?;
    assert_eq!(code, 4001, "{reason}");
    assert!(reason.contains("\"op\":\"connect\""), "{reason}");
    Ok(())
}
