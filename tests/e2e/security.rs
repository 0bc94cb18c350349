//! Abuse resistance: every bad-input class gets its documented answer, and
//! the other clients of the same gateway keep receiving without loss.

use std::time::Duration;

use pushmesh_tests::*;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const ADMIN: &str = "admin-key-0123456789abcdef";
const PUBLISHER: &str = "publish-key-0123456789abcdef";

async fn post_with_key(
    addr: std::net::SocketAddr,
    path: &str,
    key: Option<&str>,
    body: &Value,
) -> anyhow::Result<(u16, Value, reqwest::header::HeaderMap)> {
    let mut req = http().post(format!("http://{addr}{path}")).json(body);
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    let r = req.send().await?;
    let (code, headers) = (r.status().as_u16(), r.headers().clone());
    let text = r.text().await?;
    Ok((code, serde_json::from_str(&text).unwrap_or(Value::String(text)), headers))
}

#[tokio::test]
async fn api_keys_scopes_rotation_and_rate_limits() -> anyhow::Result<()> {
    let keys = format!("{ADMIN},{PUBLISHER}:publish");
    let sys = System::start_with(1, 1, &[], &["--api-key", &keys]).await?;
    let api = sys.api();
    let mut bystander = Client::connect(sys.gw(0), "").await?;
    let mut sent = 0u64;
    let publish_ok = |n: &mut u64| {
        *n += 1;
        json!({ "data": *n - 1 })
    };

    // No key, a wrong key: 401 with a challenge; probes need no key.
    let (code, body, headers) = post_with_key(api, "/broadcast", None, &json!({ "data": 1 })).await?;
    assert_eq!((code, body["error"]["code"].as_str()), (401, Some("unauthorized")), "{body}");
    assert_eq!(headers.get("www-authenticate").unwrap(), "Bearer");
    assert!(body["error"]["message"].as_str().unwrap().contains("Authorization: Bearer"), "{body}");
    let (code, body, _) =
        post_with_key(api, "/broadcast", Some("not-a-key-at-all-123456"), &json!({ "data": 1 })).await?;
    assert_eq!((code, body["error"]["message"].as_str()), (401, Some("invalid API key")), "{body}");
    assert_eq!(get(api, "/healthz").await?.0, 200);
    assert_eq!(get(api, "/metrics").await?.0, 200);
    assert_eq!(get(api, "/?content=x").await?.0, 401, "the seed form is an API route too");

    // A publish key publishes but may not administer.
    let (code, _, _) = post_with_key(api, "/broadcast", Some(PUBLISHER), &publish_ok(&mut sent)).await?;
    assert_eq!(code, 200);
    let (code, body, _) =
        post_with_key(api, "/disconnect", Some(PUBLISHER), &json!({ "connection": bystander.connection })).await?;
    assert_eq!((code, body["error"]["code"].as_str()), (403, Some("forbidden")), "{body}");
    let r = http().get(format!("http://{api}/stats")).bearer_auth(PUBLISHER).send().await?;
    assert_eq!(r.status(), 403);
    let batch =
        json!([{ "op": "broadcast", "data": sent }, { "op": "disconnect", "connection": bystander.connection }]);
    sent += 1;
    let (code, body, _) = post_with_key(api, "/batch", Some(PUBLISHER), &batch).await?;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["results"][0]["ok"], true);
    assert_eq!(body["results"][1]["error"]["code"], "forbidden");
    let r = http().get(format!("http://{api}/stats")).bearer_auth(ADMIN).send().await?;
    assert_eq!(r.status(), 200);

    // The bystander got every broadcast, in order, and is still connected.
    for n in 0..sent {
        bystander.expect_data(&json!(n)).await?;
    }

    // Rotation: a restarted ingress with only the new key refuses the old one.
    let rotated = ingress(&sys.hub_urls(), &["--api-key", "new-admin-key-0123456789"]).await?;
    wait_ready(rotated.addr("http")).await?;
    let (code, _, _) = post_with_key(rotated.addr("http"), "/broadcast", Some(ADMIN), &json!({ "data": "x" })).await?;
    assert_eq!(code, 401, "a revoked key is refused");
    let (code, _, _) =
        post_with_key(rotated.addr("http"), "/broadcast", Some("new-admin-key-0123456789"), &json!({ "data": "x" }))
            .await?;
    assert_eq!(code, 200);
    bystander.expect_data(&json!("x")).await?;

    // Rate limit: 5/s with a burst of 5 from one address.
    let limited = ingress(&sys.hub_urls(), &["--rate-limit-per-sec", "5", "--rate-limit-burst", "5"]).await?;
    wait_ready(limited.addr("http")).await?;
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for i in 0..12 {
        let r = http()
            .post(format!("http://{}/publish", limited.addr("http")))
            .json(&json!({ "channel": "rl", "data": i }))
            .send()
            .await?;
        statuses.push(r.status().as_u16());
        if r.status() == 429 {
            retry_after = r.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
        }
    }
    assert!(statuses[..5].iter().all(|&s| s == 200), "{statuses:?}");
    assert!(statuses.contains(&429), "{statuses:?}");
    assert_eq!(retry_after.as_deref(), Some("1"));
    Ok(())
}

#[tokio::test]
async fn hostile_bodies_get_clear_errors() -> anyhow::Result<()> {
    let sys = System::start(1, 1).await?;
    let mut bystander = Client::connect(sys.gw(0), "").await?;
    let deep = format!("{}1{}", "[".repeat(10_000), "]".repeat(10_000));
    let (code, body) =
        post_raw(sys.api(), "/publish", format!(r#"{{"channel":"x","data":{deep}}}"#).into_bytes(), "application/json")
            .await?;
    assert_eq!((code, body["error"]["code"].as_str()), (400, Some("invalid_request")), "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("nested 10000 levels deep"), "{body}");
    let huge = "c".repeat(100_000);
    let (code, body) = post(sys.api(), "/publish", &json!({ "channel": huge, "data": 1 })).await?;
    assert_eq!((code, body["error"]["code"].as_str()), (400, Some("invalid_channel")), "{body}");
    assert!(body.to_string().len() < 1000, "the error does not echo a 100 kB name back");
    let (code, body) = post_raw(sys.api(), "/publish", vec![0xff, 0xfe, 0x00], "application/json").await?;
    assert_eq!(code, 400, "{body}");
    post(sys.api(), "/broadcast", &json!({ "data": "unharmed" })).await?;
    bystander.expect_data(&json!("unharmed")).await?;
    Ok(())
}

async fn ws_with_origin(addr: std::net::SocketAddr, origin: &str) -> Result<u16, anyhow::Error> {
    let mut req = format!("ws://{addr}/ws").into_client_request()?;
    req.headers_mut().insert("origin", origin.parse()?);
    match tokio_tungstenite::connect_async(req).await {
        Ok(_) => Ok(101),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Ok(resp.status().as_u16()),
        Err(e) => Err(e.into()),
    }
}

async fn ws_status(addr: std::net::SocketAddr) -> anyhow::Result<u16> {
    match tokio_tungstenite::connect_async(format!("ws://{addr}/ws")).await {
        Ok((ws, _)) => {
            // Keep the socket open for the caller's count.
            std::mem::forget(ws);
            Ok(101)
        }
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Ok(resp.status().as_u16()),
        Err(e) => Err(e.into()),
    }
}

#[tokio::test]
async fn the_gateway_refuses_hijacking_floods_and_connection_hoarding() -> anyhow::Result<()> {
    let sys = System::start_with(
        1,
        1,
        &[
            "--allowed-origin",
            "https://app.example",
            "--max-connections-per-ip",
            "4",
            "--client-commands-per-sec",
            "10",
            "--client-commands-burst",
            "10",
            "--handshake-timeout-secs",
            "1",
        ],
        &[],
    )
    .await?;
    let gw = sys.gw(0);
    let mut bystander = Client::connect(gw, "").await?;
    bystander.subscribe("steady").await?;

    // Cross-site WebSocket hijacking: a foreign Origin is refused at upgrade.
    assert_eq!(ws_with_origin(gw, "https://evil.example").await?, 403);
    assert_eq!(ws_with_origin(gw, "https://app.example").await?, 101);

    // A client flooding commands is closed with 1008.
    let mut flooder = Client::connect(gw, "").await?;
    for _ in 0..40 {
        flooder.send_json(&json!({ "op": "ping" })).await?;
    }
    let (code, reason) = flooder.expect_close().await?;
    assert_eq!(code, 1008, "{reason}");
    assert!(reason.contains("rate limit"), "{reason}");

    // A half-open connection that never finishes its handshake is dropped.
    let mut half = tokio::net::TcpStream::connect(gw).await?;
    half.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n").await?;
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(10), half.read(&mut buf)).await??;
    assert!(n == 0 || String::from_utf8_lossy(&buf[..n]).contains("408"), "closed or 408 after the handshake timeout");

    // Hoarding: with the bystander connected, the fourth more connection
    // from one address is the fifth, over the cap (the others are gone).
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(ws_status(gw).await?);
    }
    assert_eq!(statuses, vec![101, 101, 101, 429], "per-IP cap of 4");
    let m = metrics(gw).await?;
    assert_eq!(sample(&m, "pushmesh_gateway_upgrades_refused_total", &[("reason", "origin_not_allowed")]), 1.0);
    assert_eq!(sample(&m, "pushmesh_gateway_upgrades_refused_total", &[("reason", "too_many_connections")]), 1.0);
    assert_eq!(sample(&m, "pushmesh_gateway_disconnects_total", &[("reason", "rate_limited")]), 1.0);

    // Through all of it the bystander missed nothing.
    for i in 0..20 {
        post(sys.api(), "/publish", &json!({ "channel": "steady", "data": i })).await?;
    }
    for i in 0..20 {
        bystander.expect_data(&json!(i)).await?;
    }
    Ok(())
}

#[tokio::test]
async fn a_full_gateway_says_so() -> anyhow::Result<()> {
    let sys = System::start_with(1, 1, &["--max-connections", "2"], &[]).await?;
    let _a = Client::connect(sys.gw(0), "").await?;
    let _b = Client::connect(sys.gw(0), "").await?;
    assert_eq!(ws_status(sys.gw(0)).await?, 503);
    Ok(())
}

#[tokio::test]
async fn a_client_that_answers_no_pings_is_dropped_and_a_live_one_stays() -> anyhow::Result<()> {
    let sys = System::start_with(1, 1, &["--ping-interval-secs", "1"], &[]).await?;
    let mut live = Client::connect(sys.gw(0), "").await?;
    let mut silent = Client::connect(sys.gw(0), "").await?;
    // The live client keeps reading (tungstenite answers each ping as it
    // reads); the silent one reads nothing for a while.
    let deadline = tokio::time::Instant::now() + Duration::from_millis(3500);
    while tokio::time::Instant::now() < deadline {
        let _ = tokio::time::timeout(Duration::from_millis(200), live.next_message()).await;
    }
    assert_eq!(silent.expect_close().await?.0, 4004, "no pong for two intervals");
    post(sys.api(), "/broadcast", &json!({ "data": "still here" })).await?;
    live.expect_data(&json!("still here")).await?;
    let m = metrics(sys.gw(0)).await?;
    assert_eq!(sample(&m, "pushmesh_gateway_disconnects_total", &[("reason", "idle")]), 1.0);
    assert_eq!(sample(&m, "pushmesh_gateway_connections", &[]), 1.0);
    Ok(())
}
