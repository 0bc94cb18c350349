//! Message limits across hops (issue 13, item 8, the hub side): the hub's
//! `--max-message-bytes` bounds every gRPC message it takes; the ingress
//! keeps each publish stream frame under it (many large publishes at once
//! never make a frame the hub refuses, which would fail every publish on
//! the stream), and a hub that refuses a message anyway answers a 413 that
//! names no address and does not mark the hub down.

use pushmesh_tests::*;
use serde_json::json;

async fn publish(api: std::net::SocketAddr, channel: &str, data: &str) -> anyhow::Result<(u16, serde_json::Value)> {
    post(api, "/publish", &json!({ "channel": channel, "data": data })).await
}

#[tokio::test]
async fn large_publishes_at_once_fill_frames_the_hub_takes() -> anyhow::Result<()> {
    let sys = System::start_full(
        1,
        &["--max-message-bytes", "1200000"],
        1,
        &[],
        &["--max-body-bytes", "1000000", "--hub-max-message-bytes", "1200000"],
    )
    .await?;
    let mut c = Client::connect(sys.gw(0), "").await?;
    c.subscribe("big").await?;
    // 8 batches of 3 publishes of ~300 kB in flight together: each batch's
    // publishes are queued on the publish stream at once, and batches
    // coalesce; two batches in one frame would be over the hub's limit.
    let big = "x".repeat(300_000);
    let batch = json!([
        { "op": "publish", "channel": "big", "data": big },
        { "op": "publish", "channel": "big", "data": big },
        { "op": "publish", "channel": "big", "data": big },
    ]);
    let results = futures_util::future::join_all((0..8).map(|_| post(sys.api(), "/batch", &batch))).await;
    for r in results {
        let (code, body) = r?;
        let short = body.to_string().chars().take(300).collect::<String>();
        assert_eq!(code, 200, "{short}");
        for r in body["results"].as_array().expect("results") {
            assert!(
                r.get("error").is_none(),
                "a publish failed: {}",
                r.to_string().chars().take(300).collect::<String>()
            );
        }
    }
    for _ in 0..24 {
        let m = c.next_json().await?;
        assert_eq!(m["data"].as_str().map(str::len), Some(300_000));
    }
    Ok(())
}

#[tokio::test]
async fn a_message_over_the_hubs_limit_is_a_413_and_the_hub_stays_up() -> anyhow::Result<()> {
    // Limits set apart on purpose (the ingress is told the default 4 MiB):
    // the hub is the one to refuse.
    let sys =
        System::start_full(1, &["--max-message-bytes", "1100000"], 1, &[], &["--max-body-bytes", "3000000"]).await?;
    let mut c = Client::connect(sys.gw(0), "").await?;
    c.subscribe("news").await?;
    let hub = sys.hubs[0].addr("grpc");

    let (code, body) = publish(sys.api(), "news", &"y".repeat(2_000_000)).await?;
    assert_eq!((code, body["error"]["code"].as_str()), (413, Some("payload_too_large")), "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    for leak in [hub.ip().to_string(), hub.port().to_string(), "http://".to_owned()] {
        assert!(!message.contains(&leak), "the error names {leak:?}: {message}");
    }
    // Not marked down: the next publish is taken at once, and delivered.
    let (code, body) = publish(sys.api(), "news", "small").await?;
    assert_eq!(code, 200, "{body}");
    c.expect_data(&json!("small")).await?;
    assert_eq!(get(sys.api(), "/readyz").await?.0, 200);
    Ok(())
}
