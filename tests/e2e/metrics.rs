//! `/metrics` of each service moves by exactly what the test caused.

use pushmesh_tests::*;
use serde_json::json;

#[tokio::test]
async fn every_service_counts_exactly_what_happened() -> anyhow::Result<()> {
    let sys = System::start(1, 1).await?;
    let mut a = Client::connect(sys.gw(0), "").await?;
    let mut b = Client::connect(sys.gw(0), "").await?;
    a.subscribe("m").await?;
    b.subscribe("m").await?;

    for i in 0..3 {
        assert_eq!(post(sys.api(), "/publish", &json!({"channel": "m", "data": i})).await?.0, 200);
    }
    assert_eq!(post(sys.api(), "/broadcast", &json!({"data": "all"})).await?.0, 200);
    assert_eq!(post(sys.api(), "/send", &json!({"connection": a.connection, "data": "a"})).await?.0, 200);
    assert_eq!(post(sys.api(), "/publish", &json!({"channel": "bad name", "data": 1})).await?.0, 400);
    for i in 0..3 {
        a.expect_data(&json!(i)).await?;
        b.expect_data(&json!(i)).await?;
    }
    a.expect_data(&json!("all")).await?;
    b.expect_data(&json!("all")).await?;
    a.expect_data(&json!("a")).await?;

    let ing = metrics(sys.api()).await?;
    let pubs = |t: &str, r: &str| sample(&ing, "pushmesh_ingress_publishes_total", &[("target", t), ("result", r)]);
    assert_eq!(pubs("channel", "ok"), 3.0);
    assert_eq!(pubs("broadcast", "ok"), 1.0);
    assert_eq!(pubs("connection", "ok"), 1.0);
    assert_eq!(pubs("channel", "unavailable"), 0.0);
    assert_eq!(sample(&ing, "pushmesh_ingress_requests_total", &[("route", "publish"), ("code", "200")]), 3.0);
    assert_eq!(sample(&ing, "pushmesh_ingress_requests_total", &[("route", "publish"), ("code", "400")]), 1.0);
    assert_eq!(sample(&ing, "pushmesh_ingress_publish_duration_seconds_count", &[("target", "channel")]), 3.0);
    assert_eq!(sample(&ing, "pushmesh_ingress_hubs_up", &[]), 1.0);

    let hub = metrics(sys.hubs[0].addr("admin")).await?;
    assert_eq!(sample(&hub, "pushmesh_hub_publishes_total", &[("target", "channel")]), 3.0);
    assert_eq!(sample(&hub, "pushmesh_hub_publishes_total", &[("target", "broadcast")]), 1.0);
    assert_eq!(sample(&hub, "pushmesh_hub_publishes_total", &[("target", "connection")]), 1.0);
    assert_eq!(sample(&hub, "pushmesh_hub_deliveries_total", &[]), 5.0);
    assert_eq!(sample(&hub, "pushmesh_hub_dropped_total", &[("reason", "gateway_queue_full")]), 0.0);
    assert_eq!(sample(&hub, "pushmesh_hub_gateways_attached", &[]), 1.0);
    assert_eq!(sample(&hub, "pushmesh_hub_topics", &[]), 3.0);
    assert_eq!(sample(&hub, "pushmesh_hub_publish_duration_seconds_count", &[]), 5.0);

    let gw = metrics(sys.gw(0)).await?;
    assert_eq!(sample(&gw, "pushmesh_gateway_connections", &[]), 2.0);
    assert_eq!(sample(&gw, "pushmesh_gateway_connections_accepted_total", &[]), 2.0);
    assert_eq!(sample(&gw, "pushmesh_gateway_hub_deliveries_total", &[]), 5.0);
    // 3 channel messages × 2 + broadcast × 2 + 1 direct send.
    assert_eq!(sample(&gw, "pushmesh_gateway_deliveries_total", &[]), 9.0);
    assert_eq!(sample(&gw, "pushmesh_gateway_hubs_attached", &[]), 1.0);
    assert_eq!(sample(&gw, "pushmesh_gateway_topics", &[]), 1.0);
    assert_eq!(sample(&gw, "pushmesh_gateway_client_commands_total", &[("op", "subscribe"), ("result", "ok")]), 2.0);
    assert_eq!(sample(&gw, "pushmesh_gateway_dropped_total", &[("reason", "slow_consumer")]), 0.0);
    assert!(sample(&gw, "process_resident_memory_bytes", &[]) > 0.0, "process metrics are exported");

    // One client leaves: the gauges follow.
    drop(b);
    eventually("connections gauge back to 1", || async {
        let gw = metrics(sys.gw(0)).await.ok()?;
        (sample(&gw, "pushmesh_gateway_connections", &[]) == 1.0
            && sample(&gw, "pushmesh_gateway_disconnects_total", &[("reason", "client")]) == 1.0)
            .then_some(())
    })
    .await?;
    drop(a);
    eventually("channel topic released at the hub", || async {
        let hub = metrics(sys.hubs[0].addr("admin")).await.ok()?;
        (sample(&hub, "pushmesh_hub_topics", &[]) == 2.0).then_some(())
    })
    .await?;
    Ok(())
}
