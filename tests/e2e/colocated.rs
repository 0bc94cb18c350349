//! An http-ingress running a hub in its own process (`--colocated-hub-addr`):
//! gateways attach to it like to any hub, the ingress hands it publishes
//! without the gRPC hop, and other ingresses still reach it over gRPC.

use pushmesh_tests::*;
use serde_json::{Value, json};

async fn colocated_publishes(api: std::net::SocketAddr) -> anyhow::Result<f64> {
    Ok(sample(&metrics(api).await?, "pushmesh_ingress_colocated_publishes_total", &[]))
}

#[tokio::test]
async fn an_ingress_with_a_colocated_hub_serves_gateways_and_other_ingresses() -> anyhow::Result<()> {
    let ingress = Proc::start(
        "http-ingress",
        &[
            "--listen-addr",
            "127.0.0.1:0",
            "--grpc-addr",
            "127.0.0.1:0",
            "--colocated-hub-addr",
            "127.0.0.1:0",
            "--colocated-hub-admin-addr",
            "127.0.0.1:0",
            "--hub-probe-ms",
            "100",
        ],
    )
    .await?;
    let api = ingress.addr("http");
    let hub_url = format!("http://{}", ingress.addr("hub-grpc"));
    let gw = gateway(std::slice::from_ref(&hub_url), &[]).await?;
    wait_ready(gw.addr("http")).await?;
    // Ready once its own hub answers its health check (after the hub's
    // warm-up): the ingress has a hub, so it tells the truth about it.
    wait_ready(api).await?;

    let mut alice = Client::connect(gw.addr("http"), "").await?;
    let mut bob = Client::connect(gw.addr("http"), "").await?;

    // A targeted send, confirmed and not.
    let (code, body) = post(api, "/send", &json!({ "connection": alice.connection, "data": "one" })).await?;
    assert_eq!(code, 200, "{body}");
    alice.expect_data(&json!("one")).await?;
    let (code, body) =
        post(api, "/send", &json!({ "connection": alice.connection, "data": "two", "confirm": true })).await?;
    assert_eq!((code, &body["delivered"]), (200, &json!(true)), "{body}");
    alice.expect_data(&json!("two")).await?;
    let never = format!("{}:999999", alice.gateway);
    let (code, body) = post(api, "/send", &json!({ "connection": never, "data": "x", "confirm": true })).await?;
    assert_eq!((code, body["error"]["code"].as_str()), (404, Some("unknown_connection")), "{body}");
    // The seed's form.
    let seq = bob.connection.rsplit_once(':').expect("gateway:seq").1.to_owned();
    let (code, text) = get(api, &format!("/?content=seed&to_worker_id={}&to_connection_id={seq}", bob.gateway)).await?;
    assert_eq!((code, text.as_str()), (200, "ok"));
    bob.expect_data(&json!("seed")).await?;

    // A broadcast and a positioned channel publish, kept in the hub's history.
    let (code, body) = post(api, "/broadcast", &json!({ "data": "all" })).await?;
    assert_eq!(code, 200, "{body}");
    alice.expect_data(&json!("all")).await?;
    bob.expect_data(&json!("all")).await?;
    bob.subscribe("news").await?;
    let (code, body) = post(api, "/publish", &json!({ "channel": "news", "data": "n1" })).await?;
    assert_eq!((code, body["offset"].as_u64()), (200, Some(1)), "{body}");
    let m = bob.expect_data(&json!("n1")).await?;
    assert_eq!(m["offset"], json!(1), "{m}");
    let (code, body) = get(api, "/history?channel=news").await?;
    assert_eq!(code, 200, "{body}");
    let history: Value = serde_json::from_str(&body)?;
    assert_eq!(history["messages"][0]["data"], json!("n1"), "{history}");

    // Every accepted publish went to the hub in the process: counted by the
    // ingress, and by the hub on its own admin port.
    assert_eq!(colocated_publishes(api).await?, 6.0);
    let hub_metrics = metrics(ingress.addr("hub-admin")).await?;
    assert_eq!(sample(&hub_metrics, "pushmesh_hub_publishes_total", &[("target", "connection")]), 4.0);
    assert_eq!(sample(&hub_metrics, "pushmesh_hub_publishes_total", &[("target", "broadcast")]), 1.0);

    // An ordinary ingress publishes to the same hub over gRPC.
    let other = ingress_with(&hub_url).await?;
    wait_ready(other.addr("http")).await?;
    let (code, body) =
        post(other.addr("http"), "/send", &json!({ "connection": alice.connection, "data": "via grpc" })).await?;
    assert_eq!(code, 200, "{body}");
    alice.expect_data(&json!("via grpc")).await?;
    assert_eq!(colocated_publishes(other.addr("http")).await?, 0.0);
    let hub_metrics = metrics(ingress.addr("hub-admin")).await?;
    assert_eq!(sample(&hub_metrics, "pushmesh_hub_publishes_total", &[("target", "connection")]), 5.0);
    Ok(())
}

async fn ingress_with(hub_url: &str) -> anyhow::Result<Proc> {
    ingress(&[hub_url.to_owned()], &[]).await
}

/// A co-located hub that cannot bind its port stops the ingress before it
/// announces anything, saying which address.
#[tokio::test]
async fn a_colocated_hub_address_in_use_is_refused_at_start() -> anyhow::Result<()> {
    let taken = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = taken.local_addr()?.to_string();
    let out = tokio::process::Command::new(bin("http-ingress"))
        .args(["--listen-addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0", "--colocated-hub-addr", &addr])
        .output()
        .await?;
    assert!(!out.status.success());
    assert!(out.stdout.is_empty(), "announced despite the error: {}", String::from_utf8_lossy(&out.stdout));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("co-located hub") && err.contains(&addr), "{err}");
    Ok(())
}
