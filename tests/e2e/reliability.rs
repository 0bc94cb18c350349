//! Slow consumers, drains and failures: what a client can lose, and when.

use pushmesh_tests::*;
use serde_json::{Value, json};

/// Publish `n` numbered messages on `channel`, `per_batch` at a time through
/// `/batch` (which runs its commands in order), each carrying `pad` bytes.
async fn publish_numbered(
    api: std::net::SocketAddr,
    channel: &str,
    n: usize,
    per_batch: usize,
    pad: usize,
) -> anyhow::Result<()> {
    let filler = "x".repeat(pad);
    let mut i = 0;
    while i < n {
        let cmds: Vec<Value> = (i..(i + per_batch).min(n))
            .map(|k| json!({ "op": "publish", "channel": channel, "data": { "n": k, "pad": filler } }))
            .collect();
        let (code, body) = post(api, "/batch", &Value::Array(cmds)).await?;
        assert_eq!(code, 200, "{body}");
        for r in body["results"].as_array().unwrap() {
            assert_eq!(r["ok"], true, "{r}");
        }
        i += per_batch;
    }
    Ok(())
}

/// Read messages until `n` numbered ones arrived; they must be 0..n in order.
async fn read_numbered(mut c: Client, n: usize) -> anyhow::Result<Client> {
    for k in 0..n {
        let m = c.next_json().await?;
        anyhow::ensure!(
            m["type"] == "message" && m["data"]["n"] == json!(k),
            "expected message {k}, got {}",
            m["data"]["n"]
        );
    }
    Ok(c)
}

#[tokio::test]
async fn a_client_that_stops_reading_is_closed_and_slows_no_one() -> anyhow::Result<()> {
    const N: usize = 10_000;
    let sys = System::start_with(1, 1, &["--outbound-queue", "256"], &[]).await?;
    let gw = sys.gw(0);
    let mut fast = Vec::new();
    for _ in 0..2 {
        let mut c = Client::connect(gw, "").await?;
        c.subscribe("firehose").await?;
        fast.push(c);
    }
    let mut slow = Client::connect(gw, "").await?;
    slow.subscribe("firehose").await?;
    let rss_before = sample(&metrics(gw).await?, "process_resident_memory_bytes", &[]);

    // The fast clients read as the messages come; the slow one never reads.
    let readers: Vec<_> = fast.into_iter().map(|c| tokio::spawn(read_numbered(c, N))).collect();
    publish_numbered(sys.api(), "firehose", N, 200, 2048).await?;
    for r in readers {
        r.await??;
    }

    let m = metrics(gw).await?;
    assert_eq!(sample(&m, "pushmesh_gateway_disconnects_total", &[("reason", "slow_consumer")]), 1.0);
    let dropped = sample(&m, "pushmesh_gateway_dropped_total", &[("reason", "slow_consumer")]);
    assert!(dropped > 0.0, "the slow consumer's undelivered messages are counted");
    assert_eq!(sample(&m, "pushmesh_gateway_hub_deliveries_total", &[]), N as f64);
    // The fast clients got all N each (checked above); whatever else was
    // written went to the slow one before it was cut off.
    let to_slow = sample(&m, "pushmesh_gateway_deliveries_total", &[]) - (2 * N) as f64;
    assert!(to_slow >= 0.0 && to_slow < N as f64, "frames written to the slow client: {to_slow}");
    let rss_after = sample(&m, "process_resident_memory_bytes", &[]);
    let growth = (rss_after - rss_before) / (1024.0 * 1024.0);
    assert!(growth < 64.0, "gateway RSS grew by {growth:.1} MiB for a 256-frame queue bound");
    eprintln!("slow consumer: {dropped} frames dropped, gateway RSS growth {growth:.1} MiB");

    // The slow client finds its stream cut short: what the kernel buffered,
    // then the end (with or without a close frame, depending on whether
    // one could still be written).
    let mut got = 0;
    loop {
        match slow.next_message().await {
            Ok(tokio_tungstenite::tungstenite::Message::Text(_)) => got += 1,
            Ok(tokio_tungstenite::tungstenite::Message::Close(f)) => {
                if let Some(f) = f {
                    assert_eq!(u16::from(f.code), 1013);
                }
                break;
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    // Frames of the batch that was abandoned when the policy fired count as
    // dropped, though the kernel may have taken some of them: up to one
    // batch (256 frames) may reach the client on top of `to_slow`.
    assert!(got as f64 <= to_slow + 256.0, "the slow client read {got} frames, more than the {to_slow} written to it");
    Ok(())
}

#[tokio::test]
async fn a_client_that_resubscribes_with_since_gets_exactly_what_it_missed() -> anyhow::Result<()> {
    let sys = System::start_with(1, 2, &[], &[]).await?;
    let mut a = Client::connect(sys.gw(0), "").await?;
    a.subscribe("log").await?;
    for i in 0..3 {
        post(sys.api(), "/publish", &json!({ "channel": "log", "data": i })).await?;
    }
    let mut last = json!(null);
    for i in 0..3 {
        last = a.expect_data(&json!(i)).await?;
        assert_eq!(last["offset"], json!(i + 1), "{last}");
    }
    let epoch = last["epoch"].as_str().unwrap().to_owned();
    drop(a);

    // Missed while away: 3..8.
    for i in 3..8 {
        post(sys.api(), "/publish", &json!({ "channel": "log", "data": i })).await?;
    }
    // Back, on the other gateway, with the last position seen.
    let mut b = Client::connect(sys.gw(1), "").await?;
    let r = b.subscribe_since("log", &epoch, 3).await?;
    assert_eq!((&r["recovered"], &r["epoch"], &r["offset"]), (&json!(true), &json!(epoch), &json!(8)), "{r}");
    for i in 3..8 {
        let m = b.expect_data(&json!(i)).await?;
        assert_eq!(m["offset"], json!(i + 1));
    }
    // Then live ones, no gap, no duplicate.
    post(sys.api(), "/publish", &json!({ "channel": "log", "data": 8 })).await?;
    assert_eq!(b.expect_data(&json!(8)).await?["offset"], 9);

    // A position from another epoch cannot be recovered, and says so.
    let mut c = Client::connect(sys.gw(1), "").await?;
    let r = c.subscribe_since("log", "0123456789abcdef", 2).await?;
    assert_eq!((&r["recovered"], &r["epoch"]), (&json!(false), &json!(epoch)), "{r}");
    post(sys.api(), "/publish", &json!({ "channel": "log", "data": 9 })).await?;
    c.expect_data(&json!(9)).await?;
    Ok(())
}

#[tokio::test]
async fn recovery_past_the_history_bound_is_refused_and_idempotent_publishes_deliver_once() -> anyhow::Result<()> {
    let sys = System::start(1, 1).await?;
    // Restart the hub with a small history.
    let grpc = sys.hubs[0].addr("grpc");
    let mut sys = sys;
    sys.hubs[0].kill().await;
    let small = Proc::start(
        "hub",
        &["--grpc-addr", &grpc.to_string(), "--admin-addr", "127.0.0.1:0", "--history-size", "5", "--warmup-ms", "300"],
    )
    .await?;
    wait_ready(sys.gw(0)).await?;
    wait_ready(sys.api()).await?;

    let (_, first) = post(sys.api(), "/publish", &json!({ "channel": "t", "data": 0 })).await?;
    let epoch = first["epoch"].as_str().unwrap().to_owned();
    for i in 1..10 {
        post(sys.api(), "/publish", &json!({ "channel": "t", "data": i })).await?;
    }
    let mut c = Client::connect(sys.gw(0), "").await?;
    let r = c.subscribe_since("t", &epoch, 1).await?;
    assert_eq!((&r["recovered"], &r["offset"]), (&json!(false), &json!(10)), "8 missed, 5 kept: {r}");
    // Within the bound it works.
    let mut d = Client::connect(sys.gw(0), "").await?;
    let r = d.subscribe_since("t", &epoch, 6).await?;
    assert_eq!(r["recovered"], true, "{r}");
    for i in 6..10 {
        d.expect_data(&json!(i)).await?;
    }

    // The same idempotency key twice: one delivery, the same position.
    let body = json!({ "channel": "t", "data": "once", "idempotency_key": "order-17" });
    let (_, p1) = post(sys.api(), "/publish", &body).await?;
    let (_, p2) = post(sys.api(), "/publish", &body).await?;
    assert_eq!(
        (p1["offset"].clone(), p2["offset"].clone(), p2["duplicate"].clone()),
        (json!(11), json!(11), json!(true)),
        "{p1} {p2}"
    );
    d.expect_data(&json!("once")).await?;
    post(sys.api(), "/publish", &json!({ "channel": "t", "data": "next" })).await?;
    d.expect_data(&json!("next")).await?;

    let m = metrics(small.addr("admin")).await?;
    assert!(sample(&m, "pushmesh_hub_history_bytes", &[]) > 0.0);
    Ok(())
}

#[tokio::test]
async fn sigterm_on_a_gateway_moves_clients_to_another_without_loss() -> anyhow::Result<()> {
    let sys = System::start(1, 2).await?;
    let mut a = Client::connect(sys.gw(0), "").await?;
    a.subscribe("ticks").await?;
    let api = sys.api();
    // A steady publisher: 300 messages, one every 5 ms.
    let publisher = tokio::spawn(async move {
        for i in 0..300 {
            let (code, body) = post(api, "/publish", &json!({ "channel": "ticks", "data": i })).await?;
            anyhow::ensure!(code == 200, "publish {i}: {body}");
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        Ok(())
    });
    // Read a while, then the gateway is told to stop.
    let mut seen = Vec::new();
    let mut pos = (String::new(), 0u64);
    while seen.len() < 50 {
        let m = a.next_json().await?;
        seen.push(m["data"].as_u64().unwrap());
        pos = (m["epoch"].as_str().unwrap().to_owned(), m["offset"].as_u64().unwrap());
    }
    sys.gateways[0].signal("TERM");
    loop {
        match a.next_message().await? {
            tokio_tungstenite::tungstenite::Message::Text(t) => {
                let m: Value = serde_json::from_str(t.as_str())?;
                seen.push(m["data"].as_u64().unwrap());
                pos = (m["epoch"].as_str().unwrap().to_owned(), m["offset"].as_u64().unwrap());
            }
            tokio_tungstenite::tungstenite::Message::Close(f) => {
                assert_eq!(f.map(|f| u16::from(f.code)), Some(1012));
                break;
            }
            _ => {}
        }
    }
    // Reconnect elsewhere and recover from the last position.
    let mut b = Client::connect(sys.gw(1), "").await?;
    let r = b.subscribe_since("ticks", &pos.0, pos.1).await?;
    assert_eq!(r["recovered"], true, "{r}");
    publisher.await??;
    while seen.len() < 300 {
        let m = b.next_json().await?;
        seen.push(m["data"].as_u64().unwrap());
    }
    assert_eq!(
        seen,
        (0..300).collect::<Vec<u64>>(),
        "every message once, in order, across the move (since {pos:?}, reply {r})"
    );
    Ok(())
}

/// Steady publishing at 200 messages/s while the channel's hub fails.
/// Publishing must never be refused; the figures (messages lost without
/// recovery, detection time) are printed for docs/reliability.md.
async fn failover_under_steady_publishing(signal: &str) -> anyhow::Result<()> {
    let sys = System::start_with(2, 2, &["--keepalive-secs", "1"], &["--publish-timeout-ms", "500"]).await?;
    let mut clients = Vec::new();
    for g in 0..2 {
        let mut c = Client::connect(sys.gw(g), "").await?;
        c.subscribe("steady").await?;
        clients.push(c);
    }
    let owner = sys.owner_of("steady").await?;
    for c in &mut clients {
        c.expect_data(&json!("probe")).await?;
    }
    const N: u64 = 1200; // 6 s at 200/s
    let api = sys.api();
    let answered = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let progress = answered.clone();
    let publisher = tokio::spawn(async move {
        let start = tokio::time::Instant::now();
        let mut refused = 0u64;
        let mut worst = std::time::Duration::ZERO;
        for i in 0..N {
            tokio::time::sleep_until(start + std::time::Duration::from_millis(5 * i)).await;
            let t = std::time::Instant::now();
            let (code, _) = post(api, "/publish", &json!({ "channel": "steady", "data": i })).await?;
            worst = worst.max(t.elapsed());
            refused += u64::from(code != 200);
            progress.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        anyhow::Ok((refused, worst))
    });
    // The fault comes after 400 publishes were answered (2 s at 200/s).
    eventually("400 publishes answered before the fault", || async {
        (answered.load(std::sync::atomic::Ordering::Relaxed) >= 400).then_some(())
    })
    .await?;
    let at_fault = answered.load(std::sync::atomic::Ordering::Relaxed);
    let failed_at = std::time::Instant::now();
    sys.hubs[owner].signal(signal);
    // Gateways notice the hub is gone (immediately on a kill; by keepalive
    // when it hangs).
    let gw = sys.gw(0);
    eventually("gateway to drop the failed hub", || async move {
        let m = metrics(gw).await.ok()?;
        (sample(&m, "pushmesh_gateway_hubs_attached", &[]) == 1.0).then_some(())
    })
    .await?;
    let detected = failed_at.elapsed();
    let (refused, worst) = publisher.await??;
    assert_eq!(refused, 0, "no publish may be refused while another hub is up");

    // Collect what each client got; everything after the failover must be there.
    let mut lost_total = 0;
    for c in &mut clients {
        let mut got = std::collections::BTreeSet::new();
        // Read until the last message (published after failover) arrives.
        loop {
            let m = c.next_json().await?;
            let n = m["data"].as_u64().unwrap();
            got.insert(n);
            if n == N - 1 {
                break;
            }
        }
        let lost: Vec<u64> = (0..N).filter(|n| !got.contains(n)).collect();
        // Published more than a second after the failover was detected (at 5 ms each).
        let well_after = at_fault + (detected.as_millis() as u64 + 1000) / 5;
        let after_failover = lost.iter().filter(|&&n| n > well_after).count();
        assert_eq!(after_failover, 0, "messages published well after the failover were lost: {lost:?}");
        lost_total += lost.len();
    }
    eprintln!(
        "FIGURES hub {signal}: detection {:.2}s, publishes refused {refused}, worst publish latency {:.0} ms, messages lost without recovery {lost_total} of {} (2 clients, 200 msg/s)",
        detected.as_secs_f64(),
        worst.as_secs_f64() * 1000.0,
        2 * N
    );
    if signal == "STOP" {
        sys.hubs[owner].signal("CONT");
        eventually("the hub to rejoin", || async move {
            let m = metrics(gw).await.ok()?;
            (sample(&m, "pushmesh_gateway_hubs_attached", &[]) == 2.0).then_some(())
        })
        .await?;
    }
    Ok(())
}

#[tokio::test]
async fn a_killed_hub_fails_over_and_publishing_goes_on() -> anyhow::Result<()> {
    failover_under_steady_publishing("KILL").await
}

#[tokio::test]
async fn a_hung_hub_is_detected_by_keepalive_and_rejoins_when_it_resumes() -> anyhow::Result<()> {
    failover_under_steady_publishing("STOP").await
}

/// A gateway that stops reading its hub stream and then dies: what the hub
/// had accepted and queued for it is counted, none of it silently lost.
#[tokio::test]
async fn deliveries_queued_for_a_gateway_that_dies_are_counted() -> anyhow::Result<()> {
    let sys = System::start_with(1, 1, &[], &[]).await?;
    let hub_admin = sys.hubs[0].addr("admin");
    let dropped = |reason: &'static str| async move {
        anyhow::Ok(sample(&metrics(hub_admin).await?, "pushmesh_hub_dropped_total", &[("reason", reason)]))
    };
    assert_eq!(dropped("gateway_gone").await?, 0.0);
    let mut sys = sys;
    sys.gateways[0].signal("STOP");
    // Broadcasts pile up behind the frozen gateway: HTTP/2 windows, then the hub's queue.
    publish_numbered_broadcasts(sys.api(), 10_000, 250, 1024).await?;
    sys.gateways[0].kill().await;
    let gone = eventually("the hub to count what it held for the dead gateway", || async move {
        let n = dropped("gateway_gone").await.ok()?;
        (n > 0.0).then_some(n)
    })
    .await?;
    let full = dropped("gateway_queue_full").await?;
    eprintln!(
        "FIGURES gateway death with a backlog: {gone} deliveries counted gateway_gone, {full} gateway_queue_full"
    );
    Ok(())
}

async fn publish_numbered_broadcasts(
    api: std::net::SocketAddr,
    n: usize,
    per_batch: usize,
    pad: usize,
) -> anyhow::Result<()> {
    let filler = "x".repeat(pad);
    for start in (0..n).step_by(per_batch) {
        let cmds: Vec<Value> = (start..(start + per_batch).min(n))
            .map(|k| json!({ "op": "broadcast", "data": { "n": k, "pad": filler } }))
            .collect();
        let (code, body) = post(api, "/batch", &Value::Array(cmds)).await?;
        assert_eq!(code, 200, "{body}");
    }
    Ok(())
}
