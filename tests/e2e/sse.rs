//! Server-Sent Events on the gateway: `GET /sse?channel=…` streams the
//! same deliveries a WebSocket client gets, and a browser's automatic
//! `Last-Event-ID` resumes every channel of the stream with nothing lost.

use pushmesh_tests::*;
use serde_json::json;

async fn publish(
    api: std::net::SocketAddr,
    channel: &str,
    data: serde_json::Value,
) -> anyhow::Result<serde_json::Value> {
    let (code, body) = post(api, "/publish", &json!({ "channel": channel, "data": data })).await?;
    anyhow::ensure!(code == 200, "publish: {body}");
    Ok(body)
}

#[tokio::test]
async fn a_stream_gets_its_channels_broadcasts_and_direct_sends() -> anyhow::Result<()> {
    let sys = System::start(1, 1).await?;
    let mut sse = SseClient::connect(sys.gw(0), "?channel=news", None).await?;
    let welcome = sse.expect("welcome").await?.json()?;
    let connection = welcome["connection"].as_str().unwrap_or_default().to_owned();
    assert!(connection.starts_with(&format!("{}:", welcome["gateway"].as_str().unwrap())), "{welcome}");
    assert_eq!(sse.expect("subscribed").await?.json()?["channel"], "news");

    let accepted = publish(sys.api(), "news", json!({ "n": 1 })).await?;
    let ev = sse.next_event().await?;
    assert_eq!(ev.event, "message");
    let frame = ev.json()?;
    assert_eq!((&frame["channel"], &frame["data"]), (&json!("news"), &json!({ "n": 1 })), "{frame}");
    let position = format!("{}:{}", accepted["epoch"].as_str().unwrap(), accepted["offset"]);
    assert_eq!(ev.id.as_deref(), Some(position.as_str()), "one channel: the id is exactly epoch:offset");

    // A broadcast and a direct send reach it too (no position: no id).
    post(sys.api(), "/broadcast", &json!({ "data": "to all" })).await?;
    let ev = sse.next_event().await?;
    assert_eq!((ev.json()?["data"].clone(), ev.id), (json!("to all"), None));
    let (code, body) = post(sys.api(), "/send", &json!({ "connection": connection, "data": "just you" })).await?;
    assert_eq!(code, 200, "{body}");
    assert_eq!(sse.next_event().await?.json()?["data"], "just you");
    // A line break inside the published JSON is split over data: lines.
    let (code, _) =
        post_raw(sys.api(), "/publish", b"{\"channel\":\"news\",\"data\":{\"a\":\n1}}".to_vec(), "application/json")
            .await?;
    assert_eq!(code, 200);
    assert_eq!(sse.next_event().await?.json()?["data"], json!({ "a": 1 }));

    // It counts as a connection: presence shows it, the gauge counts it.
    let (_, presence) = get(sys.api(), "/presence/news").await?;
    assert!(presence.contains(&connection), "{presence}");
    let text = metrics(sys.gw(0)).await?;
    assert_eq!(sample(&text, "pushmesh_gateway_sse_connections", &[]), 1.0);
    Ok(())
}

#[tokio::test]
async fn last_event_id_resumes_every_channel_with_nothing_lost() -> anyhow::Result<()> {
    let sys = System::start(1, 1).await?;
    let (gw, api) = (sys.gw(0), sys.api());
    let mut sse = SseClient::connect(gw, "?channel=a&channel=b", None).await?;
    sse.expect("subscribed").await?;
    sse.expect("subscribed").await?;
    publish(api, "a", json!("a1")).await?;
    publish(api, "b", json!("b1")).await?;
    assert_eq!(sse.next_event().await?.json()?["data"], "a1");
    assert_eq!(sse.next_event().await?.json()?["data"], "b1");
    let last = sse.last_id.clone().expect("an id");
    assert_eq!(last.split(',').count(), 2, "both channels' positions: {last}");
    drop(sse);

    // Missed while away: two in a, one in b.
    for (ch, data) in [("a", "a2"), ("b", "b2"), ("a", "a3")] {
        publish(api, ch, json!(data)).await?;
    }
    let mut sse = SseClient::connect(gw, "?channel=a&channel=b", Some(&last)).await?;
    let mut got = Vec::new();
    let mut recovered = Vec::new();
    while got.len() < 3 || recovered.len() < 2 {
        let ev = sse.next_event().await?;
        match ev.event.as_str() {
            "subscribed" => recovered.push((ev.json()?["channel"].clone(), ev.json()?["recovered"].clone())),
            "message" => got.push(ev.json()?["data"].as_str().unwrap_or_default().to_owned()),
            _ => {}
        }
    }
    recovered.sort_by_key(|r| r.0.to_string());
    assert_eq!(recovered, vec![(json!("a"), json!(true)), (json!("b"), json!(true))]);
    let (a, b): (Vec<_>, Vec<_>) = got.iter().cloned().partition(|d| d.starts_with('a'));
    assert_eq!((a, b), (vec!["a2".to_owned(), "a3".to_owned()], vec!["b2".to_owned()]), "{got:?}");
    // …then live again.
    publish(api, "b", json!("b3")).await?;
    assert_eq!(sse.next_event().await?.json()?["data"], "b3");
    Ok(())
}

#[tokio::test]
async fn a_bad_last_event_id_gets_an_error_event_and_the_stream_goes_on() -> anyhow::Result<()> {
    let sys = System::start(1, 1).await?;
    for bad in ["not-an-id", "ab:1,cd:2", "zz:x"] {
        let mut sse = SseClient::connect(sys.gw(0), "?channel=news", Some(bad)).await?;
        let err = sse.expect("error").await?.json()?;
        assert_eq!(err["code"], "bad_last_event_id", "{bad}: {err}");
        assert!(err["message"].as_str().unwrap().contains("Last-Event-ID"), "{err}");
        sse.expect("subscribed").await?;
        publish(sys.api(), "news", json!(bad)).await?;
        assert_eq!(sse.next_event().await?.json()?["data"], json!(bad));
    }
    Ok(())
}

#[tokio::test]
async fn streams_are_refused_clearly_and_closed_with_a_reason() -> anyhow::Result<()> {
    let sys = System::start_with(1, 1, &["--jwt-secret", SECRET], &[]).await?;
    let gw = sys.gw(0);
    for (query, status, code) in [
        ("", 400, "bad_request"),
        ("?channel=a%20b", 400, "invalid_channel"),
        ("?channel=news", 401, "unauthorized"),
        (&format!("?channel=secret&token={}", token(SECRET, "alice", &["news"], 60)), 403, "permission_denied"),
    ] {
        let r = http().get(format!("http://{gw}/sse{query}")).send().await?;
        assert_eq!(r.status().as_u16(), status, "{query}");
        let body: serde_json::Value = r.json().await?;
        assert_eq!(body["error"]["code"], code, "{query}: {body}");
    }
    let t = token(SECRET, "alice", &["news"], 60);
    let mut sse = SseClient::connect(gw, &format!("?channel=news&token={t}"), None).await?;
    assert_eq!(sse.expect("welcome").await?.json()?["user"], "alice");
    sse.expect("subscribed").await?;
    // Sends to the user reach the stream.
    let (code, _) = post(sys.api(), "/send", &json!({ "user": "alice", "data": "hi alice" })).await?;
    assert_eq!(code, 200);
    assert_eq!(sse.next_event().await?.json()?["data"], "hi alice");
    // Draining: the stream ends with a close event saying 1012.
    sys.gateways[0].signal("TERM");
    let close = sse.expect("close").await?.json()?;
    assert_eq!(close["code"], 1012, "{close}");
    assert!(sse.next_event().await.is_err(), "the stream ends after close");
    Ok(())
}
