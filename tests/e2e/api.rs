//! The full server API over two gateways and two hubs: users, server-side
//! subscriptions, disconnect, presence, stats, batch, and client auth.

use pushmesh_tests::*;
use serde_json::{Value, json};

async fn authed_system() -> anyhow::Result<System> {
    System::start_with(2, 2, &["--jwt-secret", SECRET, "--auth-timeout-secs", "1"], &[]).await
}

fn any_channel(user: &str) -> String {
    token(SECRET, user, &["*"], 3600)
}

#[tokio::test]
async fn send_to_a_user_reaches_every_connection_of_that_user_once() -> anyhow::Result<()> {
    let sys = authed_system().await?;
    let mut alice1 = Client::connect_as(sys.gw(0), &any_channel("alice")).await?;
    let mut alice2 = Client::connect_as(sys.gw(1), &any_channel("alice")).await?;
    let mut bob = Client::connect_as(sys.gw(0), &any_channel("bob")).await?;

    let (code, body) = post(sys.api(), "/send", &json!({ "user": "alice", "data": "hi alice" })).await?;
    assert_eq!((code, &body), (200, &json!({ "ok": true, "gateways": 2 })));
    alice1.expect_data(&json!("hi alice")).await?;
    alice2.expect_data(&json!("hi alice")).await?;

    // Exactly once each, and nothing for bob: the next frame is a marker.
    for c in [&mut alice1, &mut alice2, &mut bob] {
        let conn = c.connection.clone();
        post(sys.api(), "/send", &json!({ "connection": conn, "data": "marker" })).await?;
        c.expect_data(&json!("marker")).await?;
    }

    // The user's connections, across gateways.
    let (code, body) = get(sys.api(), "/users/alice").await?;
    let v: Value = serde_json::from_str(&body)?;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["online"], true);
    let mut conns: Vec<&str> = v["connections"].as_array().unwrap().iter().map(|c| c.as_str().unwrap()).collect();
    conns.sort();
    let mut want = vec![alice1.connection.as_str(), alice2.connection.as_str()];
    want.sort();
    assert_eq!(conns, want);
    let (_, body) = get(sys.api(), "/users/nobody").await?;
    assert_eq!(serde_json::from_str::<Value>(&body)?["online"], false);

    // Sending to a user with no connection is accepted and reaches no gateway.
    let (code, body) = post(sys.api(), "/send", &json!({ "user": "nobody", "data": 1 })).await?;
    assert_eq!((code, &body), (200, &json!({ "ok": true, "gateways": 0 })));
    Ok(())
}

#[tokio::test]
async fn server_side_subscribe_unsubscribe_and_disconnect() -> anyhow::Result<()> {
    let sys = System::start(2, 2).await?;
    let mut a = Client::connect(sys.gw(0), "").await?;
    let mut b = Client::connect(sys.gw(1), "").await?;

    // Subscribed by the backend: the client is told, then receives.
    let (code, body) =
        post(sys.api(), "/subscribe", &json!({ "connection": a.connection, "channel": "orders" })).await?;
    assert_eq!((code, &body), (200, &json!({ "ok": true })));
    let note = a.next_json().await?;
    assert_eq!(note, json!({ "type": "subscribed", "channel": "orders" }));
    post(sys.api(), "/publish", &json!({ "channel": "orders", "data": 1 })).await?;
    a.expect_data(&json!(1)).await?;

    // Unknown connections are 404.
    let (code, body) =
        post(sys.api(), "/subscribe", &json!({ "connection": format!("{}:999999", a.gateway), "channel": "orders" }))
            .await?;
    assert_eq!((code, body["error"]["code"].as_str()), (404, Some("unknown_connection")), "{body}");
    let (code, body) = post(sys.api(), "/subscribe", &json!({ "connection": "ghost:1", "channel": "orders" })).await?;
    assert_eq!((code, body["error"]["code"].as_str()), (404, Some("unknown_connection")), "{body}");

    let (code, _) =
        post(sys.api(), "/unsubscribe", &json!({ "connection": a.connection, "channel": "orders" })).await?;
    assert_eq!(code, 200);
    assert_eq!(a.next_json().await?, json!({ "type": "unsubscribed", "channel": "orders" }));
    post(sys.api(), "/publish", &json!({ "channel": "orders", "data": 2 })).await?;
    post(sys.api(), "/send", &json!({ "connection": a.connection, "data": "marker" })).await?;
    a.expect_data(&json!("marker")).await?;

    // Disconnect one connection with a code and reason the client sees.
    let (code, body) = post(
        sys.api(),
        "/disconnect",
        &json!({ "connection": b.connection, "code": 4100, "reason": "account closed" }),
    )
    .await?;
    assert_eq!((code, &body), (200, &json!({ "ok": true, "disconnected": 1 })));
    assert_eq!(b.expect_close().await?, (4100, "account closed".to_owned()));
    let (code, _) = post(sys.api(), "/disconnect", &json!({ "connection": b.connection })).await?;
    assert_eq!(code, 404, "already gone");
    let (code, body) = post(sys.api(), "/disconnect", &json!({ "connection": a.connection, "code": 1000 })).await?;
    assert_eq!(code, 400, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("4000 to 4999"), "{body}");
    Ok(())
}

#[tokio::test]
async fn disconnect_a_user_closes_all_their_connections() -> anyhow::Result<()> {
    let sys = authed_system().await?;
    let mut c1 = Client::connect_as(sys.gw(0), &any_channel("carol")).await?;
    let mut c2 = Client::connect_as(sys.gw(1), &any_channel("carol")).await?;
    let mut dave = Client::connect_as(sys.gw(1), &any_channel("dave")).await?;
    let (code, body) = post(sys.api(), "/disconnect", &json!({ "user": "carol" })).await?;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["disconnected"], 2, "{body}");
    assert_eq!(c1.expect_close().await?.0, 4000);
    assert_eq!(c2.expect_close().await?.0, 4000);
    post(sys.api(), "/send", &json!({ "user": "dave", "data": "still here" })).await?;
    dave.expect_data(&json!("still here")).await?;
    Ok(())
}

#[tokio::test]
async fn presence_follows_joins_leaves_and_vanished_clients() -> anyhow::Result<()> {
    let sys = authed_system().await?;
    let mut e1 = Client::connect_as(sys.gw(0), &any_channel("erin")).await?;
    let mut e2 = Client::connect_as(sys.gw(1), &any_channel("erin")).await?;
    let mut f = Client::connect_as(sys.gw(1), &any_channel("frank")).await?;
    for c in [&mut e1, &mut e2, &mut f] {
        c.subscribe("room").await?;
    }
    let presence = || async {
        let (code, body) = get(sys.api(), "/presence/room").await.unwrap();
        assert_eq!(code, 200, "{body}");
        serde_json::from_str::<Value>(&body).unwrap()
    };
    let p = presence().await;
    assert_eq!(
        (p["connections"].as_u64(), p["users"].as_u64(), p["partial"].as_bool()),
        (Some(3), Some(2), Some(false)),
        "{p}"
    );
    let mut listed: Vec<(String, String)> = p["clients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["connection"].as_str().unwrap().to_owned(), c["user"].as_str().unwrap().to_owned()))
        .collect();
    listed.sort();
    let mut want = vec![
        (e1.connection.clone(), "erin".to_owned()),
        (e2.connection.clone(), "erin".to_owned()),
        (f.connection.clone(), "frank".to_owned()),
    ];
    want.sort();
    assert_eq!(listed, want);
    let (_, body) = get(sys.api(), "/presence/room?limit=1").await?;
    let limited: Value = serde_json::from_str(&body)?;
    assert_eq!((limited["connections"].as_u64(), limited["clients"].as_array().unwrap().len()), (Some(3), 1));

    // A leave, then a client that vanishes without a close frame.
    let r = e1.command(json!({ "op": "unsubscribe", "channel": "room" })).await?;
    assert_eq!(r["ok"], true);
    drop(f);
    eventually("presence to drop to erin's one connection", || async {
        let p = presence().await;
        (p["connections"] == 1 && p["users"] == 1).then_some(())
    })
    .await?;

    // Stats: connections per gateway and in total.
    let (_, body) = get(sys.api(), "/stats").await?;
    let s: Value = serde_json::from_str(&body)?;
    assert_eq!((s["connections"].as_u64(), s["channels"].as_u64()), (Some(2), Some(1)), "{s}");
    assert_eq!(s["gateways"].as_array().unwrap().len(), 2, "{s}");

    // Bad input.
    let (code, _) = get(sys.api(), "/presence/bad%20name").await?;
    assert_eq!(code, 400);
    let (code, _) = get(sys.api(), "/presence/room?limit=lots").await?;
    assert_eq!(code, 400);
    Ok(())
}

#[tokio::test]
async fn batch_runs_in_order_and_a_bad_command_fails_alone() -> anyhow::Result<()> {
    let sys = System::start(2, 2).await?;
    let mut a = Client::connect(sys.gw(0), "").await?;
    let mut b = Client::connect(sys.gw(1), "").await?;
    let batch = json!([
        { "op": "subscribe", "connection": a.connection, "channel": "feed" },
        { "op": "publish", "channel": "feed", "data": "one" },
        { "op": "publish", "channel": "bad channel", "data": "x" },
        { "op": "send", "connection": b.connection, "data": "two" },
        { "op": "fly" },
        { "op": "broadcast", "data": "three", "exclude": [a.connection] },
    ]);
    let (code, body) = post(sys.api(), "/batch", &batch).await?;
    assert_eq!(code, 200, "{body}");
    let r = body["results"].as_array().unwrap();
    assert_eq!(r.len(), 6);
    assert_eq!(r[0], json!({ "ok": true }));
    assert_eq!((&r[1]["ok"], &r[1]["gateways"]), (&json!(true), &json!(1)), "{}", r[1]);
    assert_eq!(r[2]["error"]["code"], "invalid_channel");
    assert_eq!(r[3], json!({ "ok": true, "gateways": 1 }));
    assert_eq!(r[4]["error"]["code"], "invalid_request");
    assert_eq!(r[5], json!({ "ok": true, "gateways": 2 }));
    assert_eq!(a.next_json().await?["type"], "subscribed");
    a.expect_data(&json!("one")).await?;
    // A direct send and a broadcast travel on different topics (possibly
    // through different hubs): both arrive, in no promised order.
    let mut got = vec![b.next_json().await?["data"].clone(), b.next_json().await?["data"].clone()];
    got.sort_by_key(|v| v.to_string());
    assert_eq!(got, vec![json!("three"), json!("two")]);

    let (code, body) = post(sys.api(), "/batch", &json!({ "op": "publish" })).await?;
    assert_eq!(code, 400, "a batch is an array: {body}");
    Ok(())
}

#[tokio::test]
async fn jwt_binds_users_limits_channels_and_refuses_bad_tokens() -> anyhow::Result<()> {
    let sys = System::start_with(
        1,
        1,
        &["--jwt-secret", SECRET, "--auth-timeout-secs", "1", "--max-connections-per-user", "2"],
        &[],
    )
    .await?;
    let gw = sys.gw(0);

    // A valid token: user bound, allowed channels work, others are refused
    // with the connection kept.
    let mut c = Client::connect_as(gw, &token(SECRET, "gina", &["news", "chat:*"], 3600)).await?;
    c.subscribe("news").await?;
    c.subscribe("chat:lobby").await?;
    let r = c.command(json!({ "op": "subscribe", "channel": "admin" })).await?;
    assert_eq!(r["error"]["code"], "permission_denied", "{r}");
    post(sys.api(), "/publish", &json!({ "channel": "chat:lobby", "data": "still connected" })).await?;
    c.expect_data(&json!("still connected")).await?;

    // The welcome names the user; auth may also come as the first message.
    let mut d = Client::connect_raw(gw, "").await?;
    d.send_json(&json!({ "id": 7, "op": "auth", "token": token(SECRET, "gina", &["*"], 3600) })).await?;
    let r = d.next_json().await?;
    assert_eq!(r, json!({ "type": "reply", "id": 7, "ok": true }));
    let w = d.read_welcome().await?;
    assert_eq!(w["user"], "gina", "{w}");

    // A third connection for gina is over the per-user limit.
    let mut e = Client::connect_raw(gw, &format!("?token={}", token(SECRET, "gina", &["*"], 3600))).await?;
    let (code, reason) = e.expect_close().await?;
    assert_eq!(code, 4003, "{reason}");

    // Expired, forged, alg:none, and missing tokens.
    let mut x = Client::connect_raw(gw, &format!("?token={}", token(SECRET, "hal", &["*"], -3600))).await?;
    assert_eq!(x.expect_close().await?, (4002, "token expired".to_owned()));
    let mut x = Client::connect_raw(gw, &format!("?token={}", token("wrong-secret", "hal", &["*"], 3600))).await?;
    let (code, reason) = x.expect_close().await?;
    assert_eq!(code, 4001);
    assert!(reason.contains("signature"), "{reason}");
    let none = format!(
        "{}.{}.",
        b64(r#"{"alg":"none","typ":"JWT"}"#),
        b64(&json!({ "sub": "hal", "channels": ["*"], "exp": 9_999_999_999u64 }).to_string())
    );
    let mut x = Client::connect_raw(gw, &format!("?token={none}")).await?;
    assert_eq!(x.expect_close().await?.0, 4001);
    let mut x = Client::connect_raw(gw, "").await?;
    let (code, reason) = x.expect_close().await?;
    assert_eq!(code, 4001, "no auth within the timeout");
    assert!(reason.contains("authentication required"), "{reason}");

    let m = metrics(gw).await?;
    assert_eq!(sample(&m, "pushmesh_gateway_auth_failures_total", &[("reason", "expired")]), 1.0);
    assert_eq!(sample(&m, "pushmesh_gateway_auth_failures_total", &[("reason", "invalid")]), 2.0);
    assert_eq!(sample(&m, "pushmesh_gateway_auth_failures_total", &[("reason", "missing")]), 1.0);
    Ok(())
}

fn b64(s: &str) -> String {
    // base64url without padding, written out to keep the test free of
    // another dependency.
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let b = s.as_bytes();
    let mut out = String::new();
    for chunk in b.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |acc, (i, &c)| acc | (u32::from(c) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

#[tokio::test]
async fn a_connection_may_join_only_so_many_channels() -> anyhow::Result<()> {
    let sys = System::start_with(1, 1, &["--max-channels-per-connection", "2"], &[]).await?;
    let mut c = Client::connect(sys.gw(0), "").await?;
    c.subscribe("one").await?;
    c.subscribe("two").await?;
    let r = c.command(json!({ "op": "subscribe", "channel": "three" })).await?;
    assert_eq!(r["error"]["code"], "limit_exceeded", "{r}");
    let r = c.command(json!({ "op": "subscribe", "channel": "one" })).await?;
    assert_eq!(r["ok"], true, "re-subscribing counts once: {r}");
    let (code, body) = post(sys.api(), "/subscribe", &json!({ "connection": c.connection, "channel": "four" })).await?;
    assert_eq!((code, body["error"]["code"].as_str()), (429, Some("limit_exceeded")), "{body}");
    Ok(())
}

#[tokio::test]
async fn es256_tokens_are_checked_against_a_public_key() -> anyhow::Result<()> {
    let key = rcgen::KeyPair::generate()?; // ECDSA P-256
    let dir = bin_dir().parent().unwrap().join("test-logs").join(format!("es256-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let public = dir.join("jwt-public.pem");
    std::fs::write(&public, key.public_key_pem())?;
    let public = public.display().to_string();
    let sys = System::start_with(1, 1, &["--jwt-algorithm", "ES256", "--jwt-public-key-file", &public], &[]).await?;

    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
    let claims = json!({ "sub": "ivy", "channels": ["*"], "exp": now + 3600 });
    let signed = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256),
        &claims,
        &jsonwebtoken::EncodingKey::from_ec_pem(key.serialize_pem().as_bytes())?,
    )?;
    let mut c = Client::connect_raw(sys.gw(0), &format!("?token={signed}")).await?;
    assert_eq!(c.read_welcome().await?["user"], "ivy");

    // An HS256 token (even one signed with the public key's text as the
    // secret, the classic algorithm-confusion attack) is refused.
    let confused = token(&std::fs::read_to_string(&public)?, "ivy", &["*"], 3600);
    let mut x = Client::connect_raw(sys.gw(0), &format!("?token={confused}")).await?;
    let (code, reason) = x.expect_close().await?;
    assert_eq!(code, 4001, "{reason}");
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
