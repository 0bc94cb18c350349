//! The gateway under hostile clients, second round (issue 13): each abuse
//! gets its documented close, no abuse grows the gateway's memory without
//! bound, and a bystander on the same gateway keeps receiving.

use std::time::Duration;

use pushmesh_tests::*;
use serde_json::json;

/// The bystander got every one of `n` broadcasts since the last check.
async fn bystander_still_receives(sys: &System, client: &mut Client, tag: &str) -> anyhow::Result<()> {
    let (code, body) = post(sys.api(), "/broadcast", &json!({ "data": tag })).await?;
    anyhow::ensure!(code == 200, "{body}");
    client.expect_data(&json!(tag)).await?;
    Ok(())
}

/// Pings are commands too: a client flooding them (and reading nothing) is
/// cut off like any command flood, not answered pong by pong into an
/// unbounded queue.
#[tokio::test]
async fn a_ping_flood_is_cut_off_and_its_pongs_are_bounded() -> anyhow::Result<()> {
    let sys = System::start(1, 1).await?;
    let mut bystander = Client::connect(sys.gw(0), "").await?;
    let mut flooder = RawWs::connect(sys.gw(0)).await?;
    let ping = RawWs::frame(true, 9, &[b'p'; 125]);
    // 2,000 pings in a few writes, never reading a pong.
    for _ in 0..20 {
        flooder.write(&ping.repeat(100)).await?;
    }
    let (code, reason) = flooder.expect_close().await?;
    assert_eq!(code, 1008, "{reason}");
    assert!(reason.contains("rate limit"), "{reason}");
    drop(flooder);
    eventually("the flood counted as a rate-limited disconnect", || async {
        let m = metrics(sys.gw(0)).await.ok()?;
        (sample(&m, "pushmesh_gateway_disconnects_total", &[("reason", "rate_limited")]) == 1.0).then_some(())
    })
    .await?;
    bystander_still_receives(&sys, &mut bystander, "after the ping flood").await
}

/// A client that pipelines commands past its budget in one write still gets
/// the 1008 close frame: the gateway shuts its side down and drains what
/// the client sent instead of resetting the connection on unread input.
#[tokio::test]
async fn a_client_past_its_command_budget_gets_the_close_frame_not_a_reset() -> anyhow::Result<()> {
    let sys = System::start(1, 1).await?;
    let mut bystander = Client::connect(sys.gw(0), "").await?;
    for _ in 0..3 {
        let mut c = RawWs::connect(sys.gw(0)).await?;
        let cmd = RawWs::frame(true, 1, br#"{"op":"ping"}"#);
        c.write(&cmd.repeat(500)).await?;
        // Read only once the gateway has closed, with most of that input
        // still unread on its side.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (code, reason) = c.expect_close().await?;
        assert_eq!(code, 1008, "{reason}");
        // …and then a clean end (FIN), not a reset: some clients' TCP
        // stacks drop data already received when a reset follows it.
        match c.read_frame().await {
            Ok(None) => {}
            other => anyhow::bail!("after the close frame: expected a clean EOF, got {other:?}"),
        }
    }
    bystander_still_receives(&sys, &mut bystander, "after the pipeliners").await
}

/// A close frame with a code no endpoint may send (RFC 6455 §7.4) is a
/// protocol error: answered with 1002, not a silent EOF.
#[tokio::test]
async fn an_invalid_close_code_is_answered_with_1002() -> anyhow::Result<()> {
    let sys = System::start(1, 1).await?;
    for bad in [999u16, 1005, 1006, 2999] {
        let mut c = RawWs::connect(sys.gw(0)).await?;
        let mut payload = bad.to_be_bytes().to_vec();
        payload.extend_from_slice(b"bye");
        c.write(&RawWs::frame(true, 8, &payload)).await?;
        let (code, _) = c.expect_close().await.map_err(|e| anyhow::anyhow!("close code {bad}: {e}"))?;
        assert_eq!(code, 1002, "close code {bad}");
    }
    // A valid one is echoed normally.
    let mut c = RawWs::connect(sys.gw(0)).await?;
    c.write(&RawWs::frame(true, 8, &1000u16.to_be_bytes())).await?;
    assert_eq!(c.expect_close().await?.0, 1000);
    Ok(())
}

/// A message that never ends (a text frame without FIN, then empty
/// continuation frames forever) is cut off, although it never grows.
#[tokio::test]
async fn endless_empty_continuation_frames_are_cut_off() -> anyhow::Result<()> {
    let sys = System::start_with(1, 1, &["--max-message-bytes", "4096"], &[]).await?;
    let mut bystander = Client::connect(sys.gw(0), "").await?;
    let mut c = RawWs::connect(sys.gw(0)).await?;
    c.write(&RawWs::frame(false, 1, b"{")).await?;
    let empty = RawWs::frame(false, 0, b"");
    let mut closed = None;
    for _ in 0..200 {
        if c.write(&empty.repeat(500)).await.is_err() {
            break;
        }
        if let Ok(r) = tokio::time::timeout(Duration::from_millis(5), c.read_frame()).await {
            closed = Some(r?);
            break;
        }
    }
    let frame = match closed {
        Some(Some(f)) if f.opcode == 8 => f,
        Some(Some(_)) => anyhow::bail!("expected a close frame"),
        _ => {
            let (code, reason) = c.expect_close().await?;
            RawFrame { fin: true, opcode: 8, payload: [code.to_be_bytes().to_vec(), reason.into_bytes()].concat() }
        }
    };
    let (code, reason) = frame.close().expect("a close code");
    assert_eq!(code, 1009, "{reason}");
    bystander_still_receives(&sys, &mut bystander, "after the endless message").await
}

/// Recovery cannot be used to make the gateway send far more than it is
/// asked: what one subscribe recovers is bounded in bytes (past it, the
/// client is told recovery was not possible, and reloads), and so is what
/// one connection recovers per second.
#[tokio::test]
async fn recovery_is_bounded_per_subscribe_and_per_connection() -> anyhow::Result<()> {
    let sys = System::start_with(1, 1, &["--max-recovery-bytes", "20000"], &[]).await?;
    let api = sys.api();
    let big = "x".repeat(1000);
    let mut first = None;
    for n in 0..60 {
        let (code, body) = post(api, "/publish", &json!({ "channel": "big", "data": { "n": n, "pad": big } })).await?;
        anyhow::ensure!(code == 200, "{body}");
        first.get_or_insert((body["epoch"].as_str().unwrap().to_owned(), body["offset"].as_u64().unwrap()));
    }
    let (epoch, offset) = first.unwrap();
    // 59 messages of ~1 kB after `since`: more than 20 kB. Not recovered.
    let mut c = Client::connect(sys.gw(0), "").await?;
    let r = c
        .command(json!({ "op": "subscribe", "channel": "big", "since": { "epoch": epoch, "offset": offset } }))
        .await?;
    assert_eq!((&r["ok"], &r["recovered"]), (&json!(true), &json!(false)), "{r}");
    // A recent position (a few messages back) still recovers.
    let mut c2 = Client::connect(sys.gw(0), "").await?;
    let r = c2
        .command(json!({ "op": "subscribe", "channel": "big", "since": { "epoch": epoch, "offset": offset + 55 } }))
        .await?;
    assert_eq!(r["recovered"], true, "{r}");
    for n in 56..60 {
        assert_eq!(c2.next_json().await?["data"]["n"], n);
    }
    // One connection asking again and again is limited per second: the
    // later ones get recovered: false, the live subscription still works.
    let mut recovered = 0;
    for ch in 0..10 {
        let channel = format!("big-{ch}");
        let r = c2.command(json!({ "op": "unsubscribe", "channel": "big" })).await?;
        assert_eq!(r["ok"], true);
        let r = c2
            .command(json!({ "op": "subscribe", "channel": "big", "since": { "epoch": epoch, "offset": offset + 45 } }))
            .await?;
        assert_eq!(r["ok"], true, "{channel}: {r}");
        if r["recovered"] == true {
            recovered += 1;
            for _ in 0..14 {
                c2.next_json().await?;
            }
        }
    }
    assert!(recovered < 10, "every one of 10 back-to-back recoveries of ~14 kB passed a 20 kB/s budget");
    Ok(())
}
