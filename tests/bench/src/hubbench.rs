//! Hub only: how many topic deliveries per second the hub pushes to attached
//! gateway streams. Fake gateways attach over gRPC exactly as ws-gateway
//! does (hello, subscribe, wait for the ack) and only count what arrives;
//! publishers call `Publish` over several HTTP/2 connections with many
//! requests in flight each (closed loop: this measures capacity, not
//! latency under load).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Endpoint;

use pushmesh_common::proto::hub_client::HubClient;
use pushmesh_common::proto::{
    AttachRequest, Broadcast, Hello, PublishRequest, TopicsChange, attach_request, attach_response, publish_request,
};

use crate::procstat;
use crate::scenario::Env;

#[derive(Debug, Clone, clap::Args)]
pub struct HubArgs {
    /// Fake gateways attached, each subscribed to broadcast.
    #[arg(long, default_value_t = 8)]
    pub gateways: usize,
    /// Publisher HTTP/2 connections to the hub.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// Publish calls in flight per connection.
    #[arg(long, default_value_t = 64)]
    pub in_flight: usize,
    /// Seconds measured (after one second of warm-up).
    #[arg(long, default_value_t = 5.0)]
    pub duration: f64,
    /// Bytes of each published JSON value.
    #[arg(long, default_value_t = 32)]
    pub payload_bytes: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct HubResult {
    pub gateways: usize,
    pub connections: usize,
    pub in_flight: usize,
    pub payload_bytes: usize,
    pub duration_s: f64,
    pub publishes_per_s: f64,
    /// Delivery items received by the fake gateways per second.
    pub deliveries_per_s: f64,
    /// Deliveries the hub said it queued but no gateway received.
    pub lost: u64,
    pub publish_errors: u64,
    pub hub_cpu_cores: f64,
    pub hub_rss_mib: f64,
    /// This process (fake gateways and publishers) in cores.
    pub load_generator_cpu_cores: f64,
}

pub async fn cmd(env: &Env, a: HubArgs) -> Result<bool> {
    let r = run(env, &a).await?;
    crate::report::write_json(&env.out.join("hub.json"), &r)?;
    Ok(r.lost == 0 && r.publish_errors == 0)
}

pub async fn run(env: &Env, a: &HubArgs) -> Result<HubResult> {
    let hub = crate::cluster::start(
        &env.bin("hub")?,
        "hub-only",
        &["--grpc-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0"].map(String::from),
        &env.out.join("logs"),
    )
    .await?;
    let url = format!("http://{}", hub.addr("grpc"));
    let received = Arc::new(AtomicU64::new(0));
    let mut streams = Vec::new();
    for i in 0..a.gateways {
        streams.push(fake_gateway(&url, i, received.clone()).await?);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let publishes = Arc::new(AtomicU64::new(0));
    let queued = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let data = bytes::Bytes::from(format!(r#"{{"p":"{}"}}"#, "x".repeat(a.payload_bytes.saturating_sub(8))));
    let mut tasks = Vec::new();
    for _ in 0..a.connections {
        let channel =
            Endpoint::from_shared(url.clone())?.tcp_nodelay(true).connect().await.context("connect to hub")?;
        for _ in 0..a.in_flight {
            let mut client = HubClient::new(channel.clone());
            let (stop, publishes, queued, errors, data) =
                (stop.clone(), publishes.clone(), queued.clone(), errors.clone(), data.clone());
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let req = PublishRequest {
                        target: Some(publish_request::Target::Broadcast(Broadcast {})),
                        data: data.clone(),
                        ..Default::default()
                    };
                    match client.publish(req).await {
                        Ok(r) => {
                            publishes.fetch_add(1, Ordering::Relaxed);
                            queued.fetch_add(u64::from(r.into_inner().gateways), Ordering::Relaxed);
                        }
                        Err(_) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                }
            }));
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let me = std::process::id();
    let (r0, p0, h0, m0, t0) = (
        received.load(Ordering::Relaxed),
        publishes.load(Ordering::Relaxed),
        procstat::sample(hub.pid_or_zero()).unwrap_or_default(),
        procstat::sample(me).unwrap_or_default(),
        Instant::now(),
    );
    tokio::time::sleep(Duration::from_secs_f64(a.duration)).await;
    let (r1, p1, h1, m1, secs) = (
        received.load(Ordering::Relaxed),
        publishes.load(Ordering::Relaxed),
        procstat::sample(hub.pid_or_zero()).unwrap_or_default(),
        procstat::sample(me).unwrap_or_default(),
        t0.elapsed().as_secs_f64(),
    );
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    // Everything the hub queued must arrive.
    let want = queued.load(Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(10);
    while received.load(Ordering::Relaxed) < want && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = HubResult {
        gateways: a.gateways,
        connections: a.connections,
        in_flight: a.in_flight,
        payload_bytes: data.len(),
        duration_s: secs,
        publishes_per_s: (p1 - p0) as f64 / secs,
        deliveries_per_s: (r1 - r0) as f64 / secs,
        lost: want.saturating_sub(received.load(Ordering::Relaxed)),
        publish_errors: errors.load(Ordering::Relaxed),
        hub_cpu_cores: (h1.cpu_s - h0.cpu_s) / secs,
        hub_rss_mib: h1.rss_kib as f64 / 1024.0,
        load_generator_cpu_cores: (m1.cpu_s - m0.cpu_s) / secs,
    };
    eprintln!(
        "hub only: {} fake gateways, {}×{} publishers: {:.0} publishes/s → {:.0} topic deliveries/s to gateway streams; lost {}, publish errors {}; hub {:.2} cores, {:.1} MiB RSS; load generator {:.2} cores",
        r.gateways,
        r.connections,
        r.in_flight,
        r.publishes_per_s,
        r.deliveries_per_s,
        r.lost,
        r.publish_errors,
        r.hub_cpu_cores,
        r.hub_rss_mib,
        r.load_generator_cpu_cores
    );
    drop(streams);
    Ok(r)
}

/// Attach like a gateway, subscribe to broadcast, and count deliveries.
/// Returns the request sender: dropping it detaches.
async fn fake_gateway(url: &str, i: usize, received: Arc<AtomicU64>) -> Result<mpsc::Sender<AttachRequest>> {
    let channel = Endpoint::from_shared(url.to_owned())?.tcp_nodelay(true).connect().await.context("connect to hub")?;
    let mut client = HubClient::new(channel);
    let (tx, rx) = mpsc::channel(16);
    let hello = |k| AttachRequest { kind: Some(k) };
    tx.send(hello(attach_request::Kind::Hello(Hello { gateway_id: format!("bench-gw-{i}"), instance: String::new() })))
        .await?;
    tx.send(hello(attach_request::Kind::Subscribe(TopicsChange { request_id: 1, topics: vec!["b".to_owned()] })))
        .await?;
    let mut inbound = client.attach(ReceiverStream::new(rx)).await?.into_inner();
    // Wait for the ack: from then on every broadcast reaches this stream.
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), inbound.message())
            .await
            .map_err(|_| anyhow!("no subscribe ack from the hub"))??
            .ok_or_else(|| anyhow!("attach stream ended"))?;
        if let Some(attach_response::Kind::TopicsAck(a)) = msg.kind {
            if a.request_id == 1 {
                break;
            }
            bail!("unexpected ack {}", a.request_id);
        }
    }
    tokio::spawn(async move {
        while let Ok(Some(msg)) = inbound.message().await {
            if let Some(attach_response::Kind::Deliveries(d)) = msg.kind {
                received.fetch_add(d.items.len() as u64, Ordering::Relaxed);
            }
        }
    });
    Ok(tx)
}
