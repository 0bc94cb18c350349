//! The bulk workload over the ingress's gRPC `PushApi.PublishStream`: one
//! long-lived HTTP/2 stream carries every send, written `--batch` at a time
//! at each scheduled instant (the same schedule and messages as `/batch`),
//! and every send gets its own result on the answer stream. What a backend
//! that pushes continuously would use instead of HTTP requests.
//!
//! Like the lean HTTP generator it runs on a thread of its own (a
//! current-thread runtime), so its CPU is its thread's and its schedule is
//! not disturbed by the benchmark's other tasks.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use tokio_stream::wrappers::ReceiverStream;

use pushmesh_common::proto::api_stream_request::Command;
use pushmesh_common::proto::api_stream_result::Outcome as ItemOutcome;
use pushmesh_common::proto::push_api_client::PushApiClient;
use pushmesh_common::proto::{ApiSendRequest, ApiStreamRequest};

use crate::loadgen::{self, Outcome, Plan};
use crate::targeted::MsgScript;
use crate::wire;

/// Results still missing this long after the last send are errors.
const ANSWER_WITHIN: Duration = Duration::from_secs(30);

pub async fn run_on_thread(addr: SocketAddr, plan: Plan, mut script: MsgScript) -> Result<(Outcome, MsgScript)> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("grpc-publisher".to_owned())
        .spawn(move || {
            let r = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("publisher runtime")
                .and_then(|rt| rt.block_on(run(addr, &plan, &mut script)));
            let _ = tx.send(r.map(|o| (o, script)));
        })
        .context("start the gRPC publisher thread")?;
    rx.await.context("the gRPC publisher thread ended without an answer")?
}

async fn run(addr: SocketAddr, plan: &Plan, script: &mut MsgScript) -> Result<Outcome> {
    let cpu0 = loadgen::thread_cpu_s();
    let mut client = PushApiClient::connect(format!("http://{addr}"))
        .await
        .with_context(|| format!("connect to the ingress's gRPC API at {addr}"))?
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20);
    let (tx, rx) = tokio::sync::mpsc::channel::<ApiStreamRequest>(65_536);
    let mut results = client.publish_stream(ReceiverStream::new(rx)).await.context("open PublishStream")?.into_inner();
    // Results are read by a task of their own: a sender that stopped
    // reading while the ingress waits to write results would deadlock the
    // stream under overload (HTTP/2 flow control).
    let (res_tx, mut res_rx) = tokio::sync::mpsc::unbounded_channel();
    let reader = tokio::spawn(async move {
        loop {
            let r = results.message().await;
            let end = !matches!(r, Ok(Some(_)));
            if res_tx.send(r).is_err() || end {
                return;
            }
        }
    });

    let offsets = plan.arrivals.offsets(plan.requests, plan.per_sec);
    let (m0, w0) = (loadgen::mono_ns(), wire::now_ns());
    let (start_mono, start_wall) = (m0 + 5_000_000, w0 + 5_000_000);
    let mut out = Outcome { start_ns: start_wall, connections: 1, ..Default::default() };
    let mut lag = loadgen::lag_histogram();
    // Stream item id → message number.
    let mut pending: HashMap<u64, u64> = HashMap::new();
    let mut next_id = 1u64;

    for (i, off) in offsets.iter().enumerate() {
        let due = start_mono + off;
        // Take in results while waiting for the next due time.
        loop {
            let now = loadgen::mono_ns();
            if now >= due {
                break;
            }
            tokio::select! {
                Some(r) = res_rx.recv() => read_result(r.context("PublishStream")?, &mut pending, script, &mut out)?,
                _ = tokio::time::sleep(Duration::from_nanos(due - now)) => {}
            }
        }
        let now = loadgen::mono_ns();
        let _ = lag.record(now.saturating_sub(due) / 1000);
        for (k, connection, data_json) in script.bulk_sends(i as u64, start_wall + off) {
            let id = next_id;
            next_id += 1;
            pending.insert(id, k);
            let send = ApiSendRequest { connection, data_json, ..Default::default() };
            tx.send(ApiStreamRequest { id, command: Some(Command::Send(send)) })
                .await
                .map_err(|_| anyhow!("the PublishStream request stream closed"))?;
        }
        out.requests += 1;
        while let Ok(r) = res_rx.try_recv() {
            read_result(r.context("PublishStream")?, &mut pending, script, &mut out)?;
        }
    }
    drop(tx);
    let deadline = tokio::time::Instant::now() + ANSWER_WITHIN;
    while !pending.is_empty() {
        match tokio::time::timeout_at(deadline, res_rx.recv()).await {
            Ok(Some(r)) => read_result(r.context("PublishStream")?, &mut pending, script, &mut out)?,
            Ok(None) => {
                out.errors += pending.len() as u64;
                out.first_error.get_or_insert(format!("the stream ended with {} results missing", pending.len()));
                break;
            }
            Err(_) => {
                out.errors += pending.len() as u64;
                out.first_error.get_or_insert(format!("{} results missing after {ANSWER_WITHIN:?}", pending.len()));
                break;
            }
        }
    }
    reader.abort();
    out.ok = out.requests;
    loadgen::lag_figures(&mut out, &lag);
    out.thread_cpu_s = Some(loadgen::thread_cpu_s() - cpu0);
    Ok(out)
}

/// One item's result: mark its message accepted, or count why not (an
/// item refused inside the stream counts once, as a refused `/batch` item).
fn read_result(
    r: Option<pushmesh_common::proto::ApiStreamResult>,
    pending: &mut HashMap<u64, u64>,
    script: &mut MsgScript,
    out: &mut Outcome,
) -> Result<()> {
    let r = r.ok_or_else(|| anyhow!("the ingress ended the stream with results missing"))?;
    let k = pending.remove(&r.id).ok_or_else(|| anyhow!("a result for unknown item {}", r.id))?;
    let error = match r.outcome {
        Some(ItemOutcome::Ok(_)) => None,
        Some(ItemOutcome::Error(e)) => Some(format!("{}: {}", e.code, e.message)),
        None => Some("a result with no outcome".to_owned()),
    };
    if let Some(e) = script.bulk_result(k, error) {
        out.first_error.get_or_insert(e);
    }
    Ok(())
}
