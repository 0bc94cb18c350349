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
    assert!(got as f64 <= to_slow, "the slow client read {got} frames, more than the {to_slow} written to it");
    Ok(())
}
