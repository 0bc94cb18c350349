//! The hub comes and goes: readiness tells the truth, gateways re-attach
//! and re-subscribe by themselves, and the ingress never says `ok` for a
//! message no hub took.

use std::time::Duration;

use pushmesh_tests::*;
use serde_json::json;

#[tokio::test]
async fn gateway_started_before_the_hub_becomes_ready_when_it_arrives_and_survives_a_hub_kill() -> anyhow::Result<()> {
    // Where the hub will be: a port on this test's own loopback address, so
    // no other test can take it while no hub is there (nor between the
    // kill and the restart below).
    let grpc = free_addr_on(unique_loopback(0))?;
    let url = format!("http://{grpc}");

    let gw = gateway(std::slice::from_ref(&url), &[]).await?;
    let ing = ingress(std::slice::from_ref(&url), &[]).await?;
    let (code, body) = get(gw.addr("http"), "/readyz").await?;
    assert_eq!(code, 503, "gateway with no hub must not be ready: {body}");
    assert!(body.contains("not attached"), "{body}");
    // …and refuses WebSocket clients it could not serve.
    match tokio_tungstenite::connect_async(format!("ws://{}/ws", gw.addr("http"))).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status().as_u16(), 503),
        other => panic!("a gateway with no hub must refuse clients, got {:?}", other.map(|_| ())),
    }

    // No hub: the ingress must refuse, with Retry-After, never "ok".
    eventually("ingress not ready", || async {
        matches!(get(ing.addr("http"), "/readyz").await, Ok((503, _))).then_some(())
    })
    .await?;
    let r = http()
        .post(format!("http://{}/publish", ing.addr("http")))
        .json(&json!({"channel":"news","data":1}))
        .send()
        .await?;
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned()), Some("1".to_owned()));
    let body: serde_json::Value = r.json().await?;
    assert_eq!(body["error"]["code"], "unavailable", "{body}");
    assert_eq!(seed_get(ing.addr("http"), "x", None).await?.0, 503);

    // The hub arrives: both turn ready and messages flow.
    let mut hub = hub_at(grpc).await?;
    wait_ready(gw.addr("http")).await?;
    wait_ready(ing.addr("http")).await?;
    let mut client = Client::connect(gw.addr("http"), "").await?;
    client.subscribe("news").await?;
    let mut raw = Client::connect(gw.addr("http"), "?format=raw").await?;
    post(ing.addr("http"), "/publish", &json!({"channel":"news","data":"before kill"})).await?;
    client.expect_data(&json!("before kill")).await?;

    // SIGKILL the hub: the gateway notices and stops being ready…
    hub.kill().await;
    eventually("gateway not ready after the hub died", || async {
        matches!(get(gw.addr("http"), "/readyz").await, Ok((503, _))).then_some(())
    })
    .await?;

    // …and once a new hub is there, re-attaches and re-subscribes by itself.
    let hub2 = hub_at(grpc).await?;
    wait_ready(gw.addr("http")).await?;
    let text = metrics(hub2.addr("admin")).await?;
    assert_eq!(sample(&text, "pushmesh_hub_gateways_attached", &[]), 1.0);
    // Topics: broadcast, the gateway's own, and "news" re-subscribed.
    assert_eq!(sample(&text, "pushmesh_hub_topics", &[]), 3.0, "{text}");
    wait_ready(ing.addr("http")).await?;
    let (code, body) = post(ing.addr("http"), "/publish", &json!({"channel":"news","data":"after restart"})).await?;
    assert_eq!((code, &body["gateways"]), (200, &json!(1)), "{body}");
    client.expect_data(&json!("after restart")).await?;
    assert_eq!(seed_get(ing.addr("http"), "broadcast after restart", None).await?, (200, "ok".to_owned()));
    client.expect_data(&json!("broadcast after restart")).await?;
    assert_eq!(raw.next_text().await?, "broadcast after restart");
    Ok(())
}

#[tokio::test]
async fn sigterm_closes_clients_with_1012_and_every_service_exits_cleanly() -> anyhow::Result<()> {
    let mut sys = System::start(1, 1).await?;
    let mut client = Client::connect(sys.gw(0), "").await?;

    sys.gateways[0].signal("TERM");
    let (code, reason) = client.expect_close().await?;
    assert_eq!(code, 1012, "{reason}");
    assert!(reason.contains("reconnect"), "{reason}");
    let status = sys.gateways[0].wait(Duration::from_secs(10)).await?;
    assert!(status.success(), "gateway exit: {status}");

    sys.ingress.signal("TERM");
    assert!(sys.ingress.wait(Duration::from_secs(10)).await?.success());
    sys.hubs[0].signal("TERM");
    assert!(sys.hubs[0].wait(Duration::from_secs(10)).await?.success());
    Ok(())
}
