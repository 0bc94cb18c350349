//! Token lifetime on live connections: a connection closes (4002) when its
//! token's `exp` passes, unless the client presented a new token with the
//! `refresh` command; a refresh is checked like a token at connect, for
//! the same user, and a refused one changes nothing.

use std::time::{Duration, Instant};

use pushmesh_tests::*;
use serde_json::{Value, json};

/// The gateway's leeway on `exp` (auth.rs): a connection lives until `exp` + this.
const LEEWAY: Duration = Duration::from_secs(5);

async fn authed_system() -> anyhow::Result<System> {
    System::start_with(1, 1, &["--jwt-secret", SECRET], &[]).await
}

fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs() as i64
}

/// A token with any claims.
fn token_with(claims: Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("encode token")
}

async fn refresh(c: &mut Client, token: &str) -> anyhow::Result<Value> {
    c.command(json!({ "op": "refresh", "token": token })).await
}

#[tokio::test]
async fn a_token_that_expires_on_a_live_connection_is_closed_with_4002() -> anyhow::Result<()> {
    let sys = authed_system().await?;
    let start = Instant::now();
    let mut c = Client::connect_as(sys.gw(0), &token(SECRET, "ann", &["*"], 1)).await?;
    c.subscribe("news").await?;
    let (code, reason) = c.expect_close().await?;
    let lived = start.elapsed();
    assert_eq!(code, 4002, "{reason}");
    assert!(reason.contains("token expired") && reason.contains("refresh"), "{reason}");
    // Not before exp + leeway (exp is whole seconds: up to 1 s early).
    assert!(lived >= LEEWAY, "closed after {lived:?}, before exp + {LEEWAY:?}");
    let m = metrics(sys.gw(0)).await?;
    assert_eq!(sample(&m, "pushmesh_gateway_disconnects_total", &[("reason", "token_expired")]), 1.0);

    // `nbf` in the future is refused at connect (4001, saying why).
    let early =
        token_with(json!({ "sub": "ann", "channels": ["*"], "nbf": unix_now() + 600, "exp": unix_now() + 3600 }));
    let mut x = Client::connect_raw(sys.gw(0), &format!("?token={early}")).await?;
    let (code, reason) = x.expect_close().await?;
    assert_eq!((code, reason.as_str()), (4001, "invalid token: token not valid yet (nbf is in the future)"));
    Ok(())
}

#[tokio::test]
async fn a_refresh_keeps_the_connection_open_past_the_old_expiry() -> anyhow::Result<()> {
    let sys = authed_system().await?;
    // Two connections whose tokens expire together; only one refreshes.
    let mut kept = Client::connect_as(sys.gw(0), &token(SECRET, "bea", &["news", "chat:*"], 1)).await?;
    let mut control = Client::connect_as(sys.gw(0), &token(SECRET, "bea", &["*"], 1)).await?;
    kept.subscribe("news").await?;
    let r = refresh(&mut kept, &token(SECRET, "bea", &["news"], 3600)).await?;
    assert_eq!(r["ok"], true, "{r}");

    // The control connection is closed at the old deadline…
    assert_eq!(control.expect_close().await?.0, 4002);
    // …the refreshed one lives on, and still receives.
    let r = kept.command(json!({ "op": "ping" })).await?;
    assert_eq!(r["ok"], true, "{r}");
    post(sys.api(), "/publish", &json!({ "channel": "news", "data": "still here" })).await?;
    kept.expect_data(&json!("still here")).await?;
    // The new token's channels govern new subscribes ("chat:*" is gone).
    let r = kept.command(json!({ "op": "subscribe", "channel": "chat:1" })).await?;
    assert_eq!(r["error"]["code"], "permission_denied", "{r}");

    let m = metrics(sys.gw(0)).await?;
    assert_eq!(sample(&m, "pushmesh_gateway_client_commands_total", &[("op", "refresh"), ("result", "ok")]), 1.0);
    assert_eq!(sample(&m, "pushmesh_gateway_disconnects_total", &[("reason", "token_expired")]), 1.0);
    Ok(())
}

#[tokio::test]
async fn a_refused_refresh_says_why_and_changes_nothing() -> anyhow::Result<()> {
    let sys = authed_system().await?;
    let mut c = Client::connect_as(sys.gw(0), &token(SECRET, "cat", &["news"], 1)).await?;
    let cases = [
        (token(SECRET, "dan", &["*"], 3600), "permission_denied", "another user"),
        (token("wrong-secret", "cat", &["*"], 3600), "invalid_token", "bad signature"),
        ("not.a.jwt".to_owned(), "invalid_token", "malformed token"),
        (token(SECRET, "cat", &["*"], -3600), "token_expired", "expired already"),
        (
            token_with(json!({ "sub": "cat", "channels": ["*"], "nbf": unix_now() + 600, "exp": unix_now() + 3600 })),
            "invalid_token",
            "not valid yet",
        ),
    ];
    for (t, code, says) in &cases {
        let r = refresh(&mut c, t).await?;
        assert_eq!(r["error"]["code"], *code, "{r}");
        let msg = r["error"]["message"].as_str().unwrap_or_default();
        assert!(msg.contains(says) && msg.contains("current token stays"), "{msg}");
    }
    let r = c.command(json!({ "op": "refresh" })).await?;
    assert_eq!(r["error"]["code"], "bad_request", "{r}");
    assert!(r["error"]["message"].as_str().unwrap().contains("needs a \"token\""), "{r}");

    // The grant is the old one: its channels, and its deadline.
    let r = c.command(json!({ "op": "subscribe", "channel": "other" })).await?;
    assert_eq!(r["error"]["code"], "permission_denied", "{r}");
    assert_eq!(c.expect_close().await?.0, 4002, "the old token's expiry still holds");
    let m = metrics(sys.gw(0)).await?;
    assert_eq!(sample(&m, "pushmesh_gateway_client_commands_total", &[("op", "refresh"), ("result", "error")]), 6.0);

    // A gateway without a JWT key has nothing to refresh, and says so.
    let open = System::start(1, 1).await?;
    let mut a = Client::connect(open.gw(0), "").await?;
    let r = refresh(&mut a, &token(SECRET, "cat", &["*"], 3600)).await?;
    assert_eq!(r["error"]["code"], "bad_request", "{r}");
    assert!(r["error"]["message"].as_str().unwrap().contains("nothing to refresh"), "{r}");
    Ok(())
}
