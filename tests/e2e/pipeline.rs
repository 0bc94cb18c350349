//! The seed scenario, done properly: broadcast, direct sends and channels
//! across two gateways, in order, exactly once.

use pushmesh_tests::*;
use serde_json::json;

/// Send a distinct marker to `client` through the ingress and require it
/// to be the very next frame: proves nothing else (a duplicate, a message
/// meant for someone else) was queued before it.
async fn expect_nothing_before_marker(sys: &System, client: &mut Client, marker: &str) -> anyhow::Result<()> {
    let data = json!({ "marker": marker });
    let (code, body) = post(sys.api(), "/send", &json!({ "connection": client.connection, "data": data })).await?;
    assert_eq!(code, 200, "{body}");
    client.expect_data(&data).await?;
    Ok(())
}

#[tokio::test]
async fn broadcast_send_and_channels_across_two_gateways() -> anyhow::Result<()> {
    let sys = System::start(1, 2).await?;
    let mut a = Client::connect(sys.gw(0), "").await?;
    let mut b = Client::connect(sys.gw(0), "").await?;
    let mut c = Client::connect(sys.gw(1), "").await?;
    assert_ne!(a.gateway, c.gateway, "two gateways, two ids");
    assert!(a.connection.starts_with(&format!("{}:", a.gateway)), "connection id names its gateway: {}", a.connection);
    assert_ne!(a.connection, b.connection);

    // Broadcast: every client once.
    let (code, body) = post(sys.api(), "/broadcast", &json!({ "data": { "n": 1 } })).await?;
    assert_eq!((code, &body), (200, &json!({ "ok": true, "gateways": 2 })));
    for cl in [&mut a, &mut b, &mut c] {
        let m = cl.expect_data(&json!({ "n": 1 })).await?;
        assert!(m.get("channel").is_none(), "a broadcast has no channel: {m}");
        expect_nothing_before_marker(&sys, cl, "after-broadcast").await?;
    }

    // Direct send: only b.
    let (code, body) = post(sys.api(), "/send", &json!({ "connection": b.connection, "data": "for b" })).await?;
    assert_eq!((code, &body), (200, &json!({ "ok": true, "gateways": 1 })));
    b.expect_data(&json!("for b")).await?;
    for cl in [&mut a, &mut b, &mut c] {
        expect_nothing_before_marker(&sys, cl, "after-send").await?;
    }

    // Channel: a and c subscribe; b does not.
    a.subscribe("news").await?;
    c.subscribe("news").await?;
    let (code, body) = post(sys.api(), "/publish", &json!({ "channel": "news", "data": { "headline": "hi" } })).await?;
    assert_eq!(
        (code, &body["ok"], &body["gateways"], &body["offset"]),
        (200, &json!(true), &json!(2), &json!(1)),
        "{body}"
    );
    for cl in [&mut a, &mut c] {
        let m = cl.expect_data(&json!({ "headline": "hi" })).await?;
        assert_eq!(m["channel"], "news");
    }
    for cl in [&mut a, &mut b, &mut c] {
        expect_nothing_before_marker(&sys, cl, "after-publish").await?;
    }

    // Order: 1,000 numbered messages arrive in publish order.
    let http = http();
    for i in 0..1000 {
        let r = http
            .post(format!("http://{}/publish", sys.api()))
            .json(&json!({ "channel": "news", "data": i }))
            .send()
            .await?;
        assert_eq!(r.status(), 200);
    }
    for cl in [&mut a, &mut c] {
        for i in 0..1000 {
            cl.expect_data(&json!(i)).await?;
        }
    }

    // Unsubscribe: a stops receiving the channel, c does not.
    let r = a.command(json!({ "op": "unsubscribe", "channel": "news" })).await?;
    assert_eq!(r["ok"], true, "{r}");
    post(sys.api(), "/publish", &json!({ "channel": "news", "data": "late" })).await?;
    c.expect_data(&json!("late")).await?;
    expect_nothing_before_marker(&sys, &mut a, "after-unsubscribe").await?;
    Ok(())
}

#[tokio::test]
async fn the_seed_get_forms_broadcast_and_send_and_answer_ok() -> anyhow::Result<()> {
    let sys = System::start(1, 2).await?;
    // The seed's browser client gets bare content: ?format=raw.
    let mut raw = Client::connect(sys.gw(0), "?format=raw").await?;
    let mut json_client = Client::connect(sys.gw(1), "").await?;

    assert_eq!(seed_get(sys.api(), "hello everyone", None).await?, (200, "ok".to_owned()));
    assert_eq!(raw.next_text().await?, "hello everyone");
    json_client.expect_data(&json!("hello everyone")).await?;

    // to_worker_id = the gateway, to_connection_id = the number after the colon…
    let seq = raw.connection.rsplit_once(':').unwrap().1.to_owned();
    let r = seed_get(sys.api(), "just you", Some((&raw.gateway, &seq))).await?;
    assert_eq!(r, (200, "ok".to_owned()));
    assert_eq!(raw.next_text().await?, "just you");
    // …or the full connection id.
    let full = raw.connection.clone();
    let r = seed_get(sys.api(), "you again", Some((&raw.gateway.clone(), &full))).await?;
    assert_eq!(r, (200, "ok".to_owned()));
    assert_eq!(raw.next_text().await?, "you again");

    // The other client got neither: its next frame is the next broadcast.
    assert_eq!(seed_get(sys.api(), "second broadcast", None).await?, (200, "ok".to_owned()));
    json_client.expect_data(&json!("second broadcast")).await?;
    assert_eq!(raw.next_text().await?, "second broadcast");

    // Non-string data in raw format arrives as its JSON text.
    post(sys.api(), "/broadcast", &json!({ "data": { "k": [1, 2] } })).await?;
    assert_eq!(raw.next_text().await?, r#"{"k":[1,2]}"#);
    Ok(())
}

#[tokio::test]
async fn broadcast_exclude_skips_the_listed_connections() -> anyhow::Result<()> {
    let sys = System::start(1, 2).await?;
    let mut a = Client::connect(sys.gw(0), "").await?;
    let mut b = Client::connect(sys.gw(1), "").await?;
    let (code, body) =
        post(sys.api(), "/broadcast", &json!({ "data": "not for a", "exclude": [a.connection] })).await?;
    assert_eq!(code, 200, "{body}");
    b.expect_data(&json!("not for a")).await?;
    expect_nothing_before_marker(&sys, &mut a, "excluded").await?;
    Ok(())
}

#[tokio::test]
async fn client_ping_gets_a_reply() -> anyhow::Result<()> {
    let sys = System::start(1, 1).await?;
    let mut a = Client::connect(sys.gw(0), "").await?;
    let r = a.command(json!({ "op": "ping" })).await?;
    assert_eq!(r["ok"], true, "{r}");
    Ok(())
}

#[tokio::test]
async fn raw_clients_are_welcomed_with_the_seeds_own_line() -> anyhow::Result<()> {
    let sys = System::start(1, 1).await?;
    let mut raw = Client::connect_raw(sys.gw(0), "?format=raw").await?;
    let line = raw.next_text().await?;
    let (gateway, seq) =
        pushmesh_tests::seed_welcome(&line).ok_or_else(|| anyhow::anyhow!("not the seed's welcome line: {line:?}"))?;
    assert_eq!(line, format!("worker id:{gateway} connection id:{seq} connected"));
    // The two ids in it are exactly what the seed's publish form takes.
    let r = seed_get(sys.api(), "for the seed client", Some((&gateway, &seq.to_string()))).await?;
    assert_eq!(r, (200, "ok".to_owned()));
    assert_eq!(raw.next_text().await?, "for the seed client");
    Ok(())
}
