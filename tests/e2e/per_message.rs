//! The per-message path (issue 11): confirmed sends, bulk sends, and the
//! stream of publishes between ingress and hub.

use std::time::Duration;

use pushmesh_common::proto::push_api_client::PushApiClient;
use pushmesh_common::proto::{
    ApiPublishRequest, ApiSendRequest, ApiStreamRequest, api_stream_request, api_stream_result,
};
use pushmesh_tests::*;
use serde_json::{Value, json};

/// Confirmed sends say whether the connection got the message: on the HTTP
/// API, the seed's form and gRPC alike.
#[tokio::test]
async fn a_confirmed_send_says_delivered_or_unknown_connection() -> anyhow::Result<()> {
    let sys = System::start(1, 1).await?;
    let api = sys.api();
    let mut live = Client::connect(sys.gw(0), "").await?;
    let gone = Client::connect(sys.gw(0), "").await?;
    let gone_id = gone.connection.clone();
    drop(gone);
    let never = format!("{}:999999", live.gateway);
    // The gateway notices the closed connection.
    eventually("the closed connection to be gone", || async {
        let (_, body) = get(api, "/stats").await.ok()?;
        body.contains("\"connections\":1").then_some(())
    })
    .await?;

    // HTTP.
    let (code, body) =
        post(api, "/send", &json!({ "connection": live.connection, "data": "live", "confirm": true })).await?;
    assert_eq!((code, &body["delivered"]), (200, &json!(true)), "{body}");
    live.expect_data(&json!("live")).await?;
    for id in [&gone_id, &never] {
        let (code, body) = post(api, "/send", &json!({ "connection": id, "data": "x", "confirm": true })).await?;
        assert_eq!((code, body["error"]["code"].as_str()), (404, Some("unknown_connection")), "{id}: {body}");
    }
    // Without confirm, the same send is fire-and-forget: accepted.
    let (code, body) = post(api, "/send", &json!({ "connection": gone_id, "data": "x" })).await?;
    assert_eq!((code, body.get("delivered")), (200, None), "{body}");
    // confirm is for one connection.
    let (code, body) = post(api, "/send", &json!({ "user": "alice", "data": "x", "confirm": true })).await?;
    assert_eq!(code, 400, "{body}");

    // The seed's form.
    let seq = live.connection.rsplit_once(':').unwrap().1.to_owned();
    let (code, text) =
        get(api, &format!("/?content=seed&to_worker_id={}&to_connection_id={seq}&confirm=1", live.gateway)).await?;
    assert_eq!((code, text.as_str()), (200, "ok"));
    live.expect_data(&json!("seed")).await?;
    let gone_seq = gone_id.rsplit_once(':').unwrap().1;
    let (code, text) =
        get(api, &format!("/?content=x&to_worker_id={}&to_connection_id={gone_seq}&confirm=1", live.gateway)).await?;
    assert_eq!(code, 404, "{text}");
    let (code, _) = get(api, "/?content=x&confirm=1").await?;
    assert_eq!(code, 400, "confirm=1 with a broadcast");

    // gRPC.
    let mut grpc = PushApiClient::connect(format!("http://{}", sys.ingress.addr("grpc"))).await?;
    let send = |connection: &str| ApiSendRequest {
        connection: connection.to_owned(),
        data_json: "\"grpc\"".into(),
        confirm: true,
        ..Default::default()
    };
    let r = grpc.send(send(&live.connection)).await?.into_inner();
    assert!(r.delivered, "{r:?}");
    live.expect_data(&json!("grpc")).await?;
    let e = grpc.send(send(&never)).await.expect_err("an unknown connection");
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");

    let m = metrics(sys.hubs[0].addr("admin")).await?;
    assert_eq!(sample(&m, "pushmesh_hub_confirmed_sends_total", &[("result", "delivered")]), 3.0);
    assert_eq!(sample(&m, "pushmesh_hub_confirmed_sends_total", &[("result", "unknown_connection")]), 4.0);
    Ok(())
}

/// A gateway that cannot answer (frozen): the confirmed send is answered
/// in time with 504, not left hanging, and says it may have been delivered.
#[tokio::test]
async fn a_confirmed_send_to_a_frozen_gateway_times_out_clearly() -> anyhow::Result<()> {
    let hub = hub_with(&["--confirm-timeout-ms", "300"]).await?;
    let urls = [hub_url(&hub)];
    let gw = gateway(&urls, &[]).await?;
    let ing = ingress(&urls, &[]).await?;
    wait_ready(gw.addr("http")).await?;
    wait_ready(ing.addr("http")).await?;
    let c = Client::connect(gw.addr("http"), "").await?;
    gw.signal("STOP");
    let started = std::time::Instant::now();
    let r = post(ing.addr("http"), "/send", &json!({ "connection": c.connection, "data": 1, "confirm": true })).await;
    gw.signal("CONT");
    let (code, body) = r?;
    assert_eq!((code, body["error"]["code"].as_str()), (504, Some("confirm_timeout")), "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("may or may not"), "{body}");
    assert!(started.elapsed() < Duration::from_secs(2), "answered after {:?}", started.elapsed());
    Ok(())
}

/// A /batch runs its sends together, in order per target, and keeps
/// "subscribe, then publish" in order.
#[tokio::test]
async fn a_batch_keeps_each_targets_order_and_its_admin_commands_in_place() -> anyhow::Result<()> {
    let sys = System::start(2, 2).await?;
    let mut a = Client::connect(sys.gw(0), "").await?;
    let mut b = Client::connect(sys.gw(1), "").await?;
    let mut cmds: Vec<Value> = vec![json!({ "op": "subscribe", "connection": a.connection, "channel": "news" })];
    for n in 0..300 {
        cmds.push(json!({ "op": "send", "connection": b.connection, "data": n }));
        cmds.push(json!({ "op": "publish", "channel": "news", "data": n }));
    }
    let (code, body) = post(sys.api(), "/batch", &Value::Array(cmds)).await?;
    assert_eq!(code, 200, "{body}");
    let results = body["results"].as_array().unwrap();
    assert_eq!(results.len(), 601);
    assert!(results.iter().all(|r| r["ok"] == true), "{body}");
    // Offsets follow the batch's order.
    let offsets: Vec<u64> = results.iter().skip(2).step_by(2).map(|r| r["offset"].as_u64().unwrap()).collect();
    assert!(offsets.windows(2).all(|w| w[1] == w[0] + 1), "{offsets:?}");
    assert_eq!(a.next_json().await?["type"], "subscribed");
    for n in 0..300 {
        a.expect_data(&json!(n)).await?;
        b.expect_data(&json!(n)).await?;
    }
    Ok(())
}

/// Backends that push continuously: one gRPC stream, each item answered by
/// its id, one channel's order kept; a hub killed mid-stream leaves no item
/// unanswered, and everything answered `ok` was delivered.
#[tokio::test]
async fn a_publish_stream_answers_every_item_even_when_a_hub_dies() -> anyhow::Result<()> {
    let mut sys = System::start(2, 1).await?;
    let mut c = Client::connect(sys.gw(0), "").await?;
    let channels = ["s-0", "s-1", "s-2", "s-3"];
    for ch in channels {
        c.subscribe(ch).await?;
    }
    let mut grpc = PushApiClient::connect(format!("http://{}", sys.ingress.addr("grpc"))).await?;
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let mut results = grpc.publish_stream(tokio_stream::wrappers::ReceiverStream::new(rx)).await?.into_inner();
    const N: u64 = 2000;
    let feeder = tokio::spawn(async move {
        for id in 0..N {
            let channel = channels[(id % 4) as usize].to_owned();
            let command = api_stream_request::Command::Publish(ApiPublishRequest {
                channel,
                data_json: id.to_string(),
                idempotency_key: String::new(),
            });
            if tx.send(ApiStreamRequest { id, command: Some(command) }).await.is_err() {
                break;
            }
            if id % 100 == 99 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    });
    let mut ok = Vec::new();
    // Answered before the kill: these keep their channel's order. Items in
    // flight when their hub died are retried on another hub (a new epoch
    // there) and may arrive out of order among themselves.
    let mut before_kill = std::collections::HashSet::new();
    let mut failed = 0;
    let mut answered = std::collections::HashSet::new();
    let mut killed = false;
    while answered.len() < N as usize {
        let r = tokio::time::timeout(WAIT, results.message()).await??.expect("the stream stays open");
        assert!(answered.insert(r.id), "item {} answered twice", r.id);
        match r.outcome {
            Some(api_stream_result::Outcome::Ok(_)) => {
                ok.push(r.id);
                if !killed {
                    before_kill.insert(r.id);
                }
            }
            Some(api_stream_result::Outcome::Error(e)) => {
                assert!(["unavailable"].contains(&e.code.as_str()), "{e:?}");
                failed += 1;
            }
            None => anyhow::bail!("a result without an outcome"),
        }
        if !killed && answered.len() == 500 {
            sys.hubs[1].kill().await;
            killed = true;
        }
    }
    feeder.await?;
    // Every item `ok` reached the subscriber, once, in order per channel.
    let mut got: std::collections::HashMap<String, Vec<u64>> = Default::default();
    let want: std::collections::HashSet<u64> = ok.iter().copied().collect();
    let mut seen = std::collections::HashSet::new();
    while seen.len() < want.len() {
        let m = c.next_json().await?;
        let n = m["data"].as_u64().unwrap();
        if want.contains(&n) {
            assert!(seen.insert(n), "message {n} delivered twice");
        }
        got.entry(m["channel"].as_str().unwrap().to_owned()).or_default().push(n);
    }
    for (ch, ns) in &got {
        let early: Vec<u64> = ns.iter().copied().filter(|n| before_kill.contains(n)).collect();
        assert!(early.windows(2).all(|w| w[0] < w[1]), "{ch} out of order before the kill: {early:?}");
    }
    eprintln!("publish stream: {} ok, {failed} refused while a hub died", ok.len());
    assert!(ok.len() as u64 > N / 2, "most items went through ({} ok)", ok.len());
    Ok(())
}
