//! Logs written to a file (every process here logs to one) are plain text:
//! no ANSI colour codes, which only a terminal understands.

use pushmesh_tests::*;

#[tokio::test]
async fn logs_redirected_to_a_file_carry_no_colour_codes() -> anyhow::Result<()> {
    let sys = System::start(1, 1).await?;
    // Something for each service to log: a client comes and goes.
    let c = Client::connect(sys.gw(0), "").await?;
    drop(c);
    for p in sys.hubs.iter().chain(&sys.gateways).chain([&sys.ingress]) {
        let log = eventually(&format!("{} to log something", p.name), || async {
            let l = p.logs();
            (!l.trim().is_empty()).then_some(l)
        })
        .await?;
        assert!(log.contains("INFO"), "{} logs in the text format: {log}", p.name);
        assert!(!log.contains('\x1b'), "{}'s log file has ANSI escape codes: {log:?}", p.name);
    }
    Ok(())
}

/// `--log trace` turns on every library's tracing, some of which prints
/// message contents and headers: secrets must still not reach the log.
#[tokio::test]
async fn trace_logging_writes_no_token_or_api_key() -> anyhow::Result<()> {
    const KEY: &str = "api-key-that-must-not-be-logged-0123";
    let hub = hub().await?;
    let url = hub_url(&hub);
    let gw = Proc::start(
        "ws-gateway",
        &["--listen-addr", "127.0.0.1:0", "--hub", &url, "--jwt-secret", SECRET, "--log", "trace"],
    )
    .await?;
    let ing = Proc::start(
        "http-ingress",
        &[
            "--listen-addr",
            "127.0.0.1:0",
            "--grpc-addr",
            "127.0.0.1:0",
            "--hub",
            &url,
            "--api-key",
            KEY,
            "--log",
            "trace",
        ],
    )
    .await?;
    wait_ready(gw.addr("http")).await?;
    wait_ready(ing.addr("http")).await?;
    // A token in an auth frame, and an API key in a header.
    let jwt = token(SECRET, "alice", &["news"], 60);
    let mut c = Client::connect_raw(gw.addr("http"), "").await?;
    c.send_json(&serde_json::json!({ "id": 1, "op": "auth", "token": jwt })).await?;
    c.next_json().await?;
    let r = http()
        .post(format!("http://{}/broadcast", ing.addr("http")))
        .bearer_auth(KEY)
        .json(&serde_json::json!({ "data": "x" }))
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    for (p, secret) in [(&gw, jwt.as_str()), (&ing, KEY)] {
        let log = p.logs();
        assert!(log.contains("TRACE"), "{} logs at trace", p.name);
        // The token's signature part alone would be enough to forge nothing,
        // but any part of a secret is one too many.
        let tail = &secret[secret.len() - 16..];
        assert!(!log.contains(tail), "{} logged a secret at trace level", p.name);
    }
    Ok(())
}

/// Malformed HTTP from a client is the client's problem: it must not let
/// anyone write ERROR lines into the ingress's log at will (issue 13,
/// item 9). The ingress keeps serving.
#[tokio::test]
async fn malformed_http_writes_no_error_lines() -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let sys = System::start(1, 1).await?;
    let mut c = Client::connect(sys.gw(0), "").await?;
    c.subscribe("news").await?;
    for _ in 0..20 {
        let mut s = tokio::net::TcpStream::connect(sys.api()).await?;
        s.write_all(b"GARBAGE \x01\x02 nonsense\r\n\r\n").await?;
        let mut sink = Vec::new();
        // The ingress answers (400) or closes; either way the exchange ends.
        let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut sink)).await;
    }
    let (code, body) = post(sys.api(), "/publish", &serde_json::json!({ "channel": "news", "data": "after" })).await?;
    assert_eq!(code, 200, "{body}");
    c.expect_data(&serde_json::json!("after")).await?;
    let log = sys.ingress.logs();
    assert!(!log.contains("ERROR"), "malformed requests wrote ERROR lines:\n{log}");
    Ok(())
}
