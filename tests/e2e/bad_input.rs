//! Bad input gets its documented status and a JSON error that says what was
//! wrong, and nobody else notices.

use pushmesh_tests::*;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

fn error_code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("<none>")
}

fn error_message(body: &Value) -> String {
    body["error"]["message"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn the_ingress_answers_bad_requests_clearly_and_keeps_serving() -> anyhow::Result<()> {
    let sys = System::start_with(1, 1, &[], &["--max-body-bytes", "1024"]).await?;
    let mut bystander = Client::connect(sys.gw(0), "").await?;
    let api = sys.api();

    // (path, content type, body, status, error code, text the message must contain)
    type Case = (&'static str, &'static str, Vec<u8>, u16, &'static str, &'static str);
    let cases: Vec<Case> = vec![
        ("/publish", "application/json", b"{\"channel\": \"news\",".to_vec(), 400, "malformed_json", "EOF"),
        ("/publish", "application/json", b"not json".to_vec(), 400, "malformed_json", "expected"),
        ("/publish", "application/json", br#"{"data": 1}"#.to_vec(), 400, "invalid_request", "missing field `channel`"),
        (
            "/publish",
            "application/json",
            br#"{"channel": "news"}"#.to_vec(),
            400,
            "invalid_request",
            "missing field `data`",
        ),
        (
            "/publish",
            "application/json",
            br#"{"channel": 5, "data": 1}"#.to_vec(),
            400,
            "invalid_request",
            "invalid type",
        ),
        (
            "/publish",
            "application/json",
            br#"{"channel": "news", "data": 1, "chanel": "x"}"#.to_vec(),
            400,
            "invalid_request",
            "unknown field `chanel`",
        ),
        (
            "/publish",
            "application/json",
            br#"{"channel": "a b", "data": 1}"#.to_vec(),
            400,
            "invalid_channel",
            "allowed characters",
        ),
        ("/publish", "application/json", br#"{"channel": "", "data": 1}"#.to_vec(), 400, "invalid_channel", "empty"),
        (
            "/publish",
            "text/plain",
            br#"{"channel": "news", "data": 1}"#.to_vec(),
            415,
            "unsupported_media_type",
            "application/json",
        ),
        (
            "/send",
            "application/json",
            br#"{"connection": "nosuchgateway:1", "data": 1}"#.to_vec(),
            404,
            "unknown_connection",
            "nosuchgateway",
        ),
        (
            "/send",
            "application/json",
            br#"{"connection": "garbage", "data": 1}"#.to_vec(),
            400,
            "invalid_request",
            "malformed",
        ),
        ("/send", "application/json", br#"{"data": 1}"#.to_vec(), 400, "invalid_request", "connection"),
        (
            "/broadcast",
            "application/json",
            br#"{"data": 1, "exclude": ["bad id"]}"#.to_vec(),
            400,
            "invalid_request",
            "exclude",
        ),
        (
            "/broadcast",
            "application/json",
            br#"{"data": 1, "exclude": "x"}"#.to_vec(),
            400,
            "invalid_request",
            "invalid type",
        ),
    ];
    for (path, ct, body, want_code, want_error, want_text) in cases {
        let shown = String::from_utf8_lossy(&body).into_owned();
        let (code, resp) = post_raw(api, path, body, ct).await?;
        assert_eq!(code, want_code, "POST {path} {shown}: {resp}");
        assert_eq!(error_code(&resp), want_error, "POST {path} {shown}: {resp}");
        assert!(
            error_message(&resp).contains(want_text),
            "POST {path} {shown}: message {resp} should mention {want_text:?}"
        );
    }

    // Over the body limit (1 KiB here): 413, with and without Content-Length.
    let big = json!({ "channel": "news", "data": "x".repeat(2000) });
    let (code, resp) = post(api, "/publish", &big).await?;
    assert_eq!((code, error_code(&resp)), (413, "payload_too_large"), "{resp}");
    assert!(error_message(&resp).contains("1024"), "{resp}");
    let chunked = reqwest::Body::wrap_stream(futures_util::stream::iter(
        (0..4).map(|_| Ok::<_, std::io::Error>(vec![b' '; 600])),
    ));
    let r = http()
        .post(format!("http://{api}/publish"))
        .header("content-type", "application/json")
        .body(chunked)
        .send()
        .await?;
    assert_eq!(r.status(), 413);

    // Unknown route and wrong method.
    let (code, body) = get(api, "/nope").await?;
    let body: Value = serde_json::from_str(&body)?;
    assert_eq!((code, error_code(&body)), (404, "not_found"), "{body}");
    let (code, body) = get(api, "/publish").await?;
    let body: Value = serde_json::from_str(&body)?;
    assert_eq!((code, error_code(&body)), (405, "method_not_allowed"), "{body}");

    // The seed form: content is required, and a half-addressed send is refused.
    let (code, body) = get(api, "/").await?;
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("missing query parameter `content`"), "{body}");
    let (code, body) = get(api, "/?content=").await?;
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("`content` is empty") && !body.contains("missing"), "{body}");
    let (code, body) = get(api, "/?content=x&to_worker_id=gw-1").await?;
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("go together"), "{body}");
    let (code, body) =
        get(api, &format!("/?content=x&to_worker_id=other&to_connection_id={}", bystander.connection)).await?;
    assert_eq!(code, 400, "{body}");

    // And the bystander never noticed.
    let (code, _) = post(api, "/broadcast", &json!({ "data": "still here" })).await?;
    assert_eq!(code, 200);
    bystander.expect_data(&json!("still here")).await?;
    Ok(())
}

#[tokio::test]
async fn the_gateway_answers_bad_client_commands_and_closes_on_protocol_abuse() -> anyhow::Result<()> {
    let sys = System::start_with(1, 1, &["--max-message-bytes", "1024"], &[]).await?;
    let mut bystander = Client::connect(sys.gw(0), "").await?;
    bystander.subscribe("news").await?;
    let mut c = Client::connect(sys.gw(0), "").await?;

    // Errors come back as replies; the connection stays.
    c.send_raw(Message::Text("not json".into())).await?;
    let r = c.next_json().await?;
    assert_eq!((r["type"].as_str(), error_code(&r)), (Some("reply"), "bad_request"), "{r}");
    let r = c.command(json!({ "op": "dance" })).await?;
    assert_eq!(error_code(&r), "unknown_op", "{r}");
    let r = c.command(json!({ "op": "subscribe", "channel": "no spaces" })).await?;
    assert_eq!(error_code(&r), "invalid_channel", "{r}");
    assert!(error_message(&r).contains("allowed characters"), "{r}");
    let r = c.command(json!({ "op": "subscribe" })).await?;
    assert_eq!(error_code(&r), "bad_request", "{r}");
    let r = c.command(json!({ "op": "subscribe", "channel": "news", "colour": "red" })).await?;
    assert_eq!(error_code(&r), "bad_request", "{r}");
    assert!(error_message(&r).contains("colour"), "{r}");
    c.subscribe("news").await?;

    // Protocol abuse closes that connection only, with the right code.
    c.send_raw(Message::Binary(vec![1, 2, 3].into())).await?;
    assert_eq!(c.expect_close().await?.0, 1003);
    let mut big = Client::connect(sys.gw(0), "").await?;
    big.send_raw(Message::Text("x".repeat(2000).into())).await?;
    let (code, reason) = big.expect_close().await?;
    assert_eq!(code, 1009, "{reason}");
    assert!(reason.contains("1024"), "{reason}");

    // Plain HTTP on /ws: 426 with a hint.
    let (code, body) = get(sys.gw(0), "/ws").await?;
    assert_eq!(code, 426, "{body}");
    let (code, _) = get(sys.gw(0), "/ws?format=xml").await?;
    assert_eq!(code, 426);
    let (code, body) = get(sys.gw(0), "/elsewhere").await?;
    assert_eq!(code, 404, "{body}");

    // The bystander kept receiving.
    post(sys.api(), "/publish", &json!({ "channel": "news", "data": "fine" })).await?;
    bystander.expect_data(&json!("fine")).await?;
    Ok(())
}

/// A service with a bad setting says what is wrong and exits before it
/// binds anything or announces an address: no "listening" line, on stdout
/// or in the log, for a service that was never going to serve.
#[tokio::test]
async fn bad_configuration_is_refused_before_any_port_is_bound() -> anyhow::Result<()> {
    // A "certificate" that is not one: the files exist, their content is wrong.
    let garbage = std::env::temp_dir().join(format!("pushmesh-not-a-cert-{}.pem", std::process::id()));
    std::fs::write(&garbage, "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n")?;
    let garbage = garbage.to_str().expect("utf-8 temp path");
    let cases: [(&str, &[&str], &str); 6] = [
        ("http-ingress", &["--api-key", "too-short"], "shorter than 16 characters"),
        // A body limit the hubs would refuse (issue 13, item 8).
        (
            "http-ingress",
            &["--max-body-bytes", "4194304", "--hub-max-message-bytes", "2097152"],
            "--max-body-bytes (4194304) must leave",
        ),
        ("http-ingress", &["--api-keys-file", "/nonexistent/keys"], "--api-keys-file"),
        ("ws-gateway", &["--jwt-algorithm", "none"], "unknown JWT algorithm"),
        ("hub", &["--tls-cert", garbage], "give both --tls-cert and --tls-key"),
        ("hub", &["--tls-cert", garbage, "--tls-key", garbage], "invalid TLS configuration"),
    ];
    for (binary, args, expected) in cases {
        let listen: &[&str] = match binary {
            "hub" => &["--grpc-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0"],
            _ => &["--listen-addr", "127.0.0.1:0"],
        };
        let out = tokio::time::timeout(
            WAIT,
            tokio::process::Command::new(bin(binary)).args(listen).args(args).env("PUSHMESH_LOG", "info").output(),
        )
        .await??;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{binary} {args:?} must refuse to start");
        assert!(stderr.contains(expected), "{binary} {args:?}: expected {expected:?} in:\n{stderr}");
        assert!(stdout.is_empty(), "{binary} {args:?} announced addresses it should never have bound: {stdout}");
        assert!(!stderr.contains("listening") && !stderr.contains("serving"), "{binary} {args:?}:\n{stderr}");
    }
    let _ = std::fs::remove_file(garbage);
    Ok(())
}
