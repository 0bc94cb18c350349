//! Channel state engines at the hub: positioned (channel) publishes per
//! second and the latency the engine adds, Redis against memory, over many
//! channels. Publishing goes over gRPC straight to the hub, as the `hub`
//! subcommand does, so the HTTP edge's cost is not in the figures.
//!
//! For each engine: a hub (with a `redis-server` this tool starts on a
//! loopback address of its own, unless --redis-url names one), fake
//! gateways subscribed to every channel that check each channel's offsets
//! arrive consecutive and in order, then
//! 1. capacity: closed-loop publishers (connections × in-flight) to the
//!    channels in turn, as fast as the hub answers;
//! 2. latency: publishes at a fixed rate (open loop, one task per publish,
//!    so a slow answer does not delay the next send), the `Publish` round
//!    trip recorded in a histogram.
//!
//! With --end-to-end it also runs the `fixed` scenario (WebSocket clients on
//! one channel, publishes through the ingress) on each engine.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

use pushmesh_common::proto::hub_client::HubClient;
use pushmesh_common::proto::{
    AttachRequest, Hello, PublishRequest, TopicsChange, attach_request, attach_response, publish_request,
};

use pushmesh_tests::Redis;

use crate::procstat;
use crate::scenario::{Env, ScenarioArgs, TargetKind};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Which {
    Memory,
    Redis,
    Both,
}

#[derive(Debug, Clone, clap::Args)]
pub struct EngineArgs {
    /// Which engine(s) to measure.
    #[arg(long, value_enum, default_value = "both")]
    pub engine: Which,
    /// Channels published to (in turn); every fake gateway subscribes to all.
    #[arg(long, default_value_t = 1000)]
    pub channels: usize,
    /// Fake gateways attached.
    #[arg(long, default_value_t = 2)]
    pub gateways: usize,
    /// Publisher HTTP/2 connections to the hub.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// Capacity phase: publish calls in flight per connection.
    #[arg(long, default_value_t = 64)]
    pub in_flight: usize,
    /// Seconds measured per phase (after one second of warm-up).
    #[arg(long, default_value_t = 5.0)]
    pub duration: f64,
    /// Latency phase: publishes per second offered.
    #[arg(long, default_value_t = 10_000.0)]
    pub rate: f64,
    /// Bytes of each published JSON value.
    #[arg(long, default_value_t = 32)]
    pub payload_bytes: usize,
    /// Use this Redis instead of starting a redis-server.
    #[arg(long)]
    pub redis_url: Option<String>,
    /// The started redis-server writes an AOF (appendfsync always: every write on disk first).
    #[arg(long)]
    pub redis_aof: bool,
    /// Extra argument for the hub (repeatable), e.g. --hub-arg=--redis-connections=4.
    #[arg(long = "hub-arg", allow_hyphen_values = true)]
    pub hub_args: Vec<String>,
    /// Also run the end-to-end `fixed` scenario (channel target) on each engine.
    #[arg(long)]
    pub end_to_end: bool,
    /// End to end: WebSocket clients on the channel.
    #[arg(long, default_value_t = 1000)]
    pub e2e_connections: usize,
    /// End to end: deliveries per second offered.
    #[arg(long, default_value_t = 20_000.0)]
    pub e2e_rate: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct EngineResult {
    pub engine: String,
    pub channels: usize,
    pub gateways: usize,
    pub capacity_publishes_per_s: f64,
    pub capacity_hub_cpu_cores: f64,
    pub capacity_redis_cpu_cores: f64,
    pub offered_rate: f64,
    pub achieved_rate: f64,
    pub latency_p50_us: u64,
    pub latency_p99_us: u64,
    pub latency_p999_us: u64,
    pub latency_max_us: u64,
    pub latency_hub_cpu_cores: f64,
    pub latency_redis_cpu_cores: f64,
    /// Deliveries the hub queued that no fake gateway received.
    pub lost: u64,
    /// Deliveries whose offset was not above the channel's previous one.
    pub out_of_order: u64,
    /// Offsets skipped (a publish the engine positioned but whose answer
    /// came too late: it failed, and is in the history only).
    pub gaps: u64,
    pub publish_errors: u64,
    pub hub_rss_mib: f64,
    /// End to end (fixed scenario), when run.
    pub e2e: Option<serde_json::Value>,
}

pub async fn cmd(env: &Env, a: EngineArgs) -> Result<bool> {
    let engines = match a.engine {
        Which::Memory => vec!["memory"],
        Which::Redis => vec!["redis"],
        Which::Both => vec!["memory", "redis"],
    };
    let mut results = Vec::new();
    for e in engines {
        results.push(run(env, &a, e).await?);
    }
    if let [m, r] = &results[..] {
        eprintln!(
            "redis / memory: capacity {:.2}×; p99 at {:.0}/s: {} µs vs {} µs (added {} µs)",
            r.capacity_publishes_per_s / m.capacity_publishes_per_s.max(1.0),
            a.rate,
            r.latency_p99_us,
            m.latency_p99_us,
            r.latency_p99_us as i64 - m.latency_p99_us as i64
        );
    }
    crate::report::write_json(&env.out.join("engine.json"), &results)?;
    // Skipped offsets are only allowed where publishes failed.
    Ok(results.iter().all(|r| r.lost == 0 && r.out_of_order == 0 && r.publish_errors == 0 && r.gaps == 0))
}

async fn run(env: &Env, a: &EngineArgs, engine: &str) -> Result<EngineResult> {
    // The harness's redis-server (a loopback address of its own), unless
    // --redis-url names one.
    let redis = match (engine, &a.redis_url) {
        ("redis", None) if a.redis_aof => Some(Redis::start_with_aof().await?),
        ("redis", None) => Some(Redis::start().await?),
        _ => None,
    };
    let mut hub_args: Vec<String> =
        ["--grpc-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0", "--engine", engine].map(String::from).to_vec();
    if engine == "redis" {
        let url = a.redis_url.clone().or_else(|| redis.as_ref().map(Redis::url)).expect("a Redis");
        hub_args.extend(["--redis-url".into(), url, "--redis-prefix".into(), format!("bench{}", std::process::id())]);
    }
    hub_args.extend(a.hub_args.iter().cloned());
    let hub =
        crate::cluster::start(&env.bin("hub")?, &format!("hub-{engine}"), &hub_args, &env.out.join("logs")).await?;
    let url = format!("http://{}", hub.addr("grpc"));
    let names: Vec<String> = (0..a.channels).map(|i| format!("bench-{i}")).collect();
    let counters = Arc::new(Counters::default());
    let mut streams = Vec::new();
    for i in 0..a.gateways {
        streams.push(fake_gateway(&url, i, &names, counters.clone()).await?);
    }
    let mut conns = Vec::new();
    for _ in 0..a.connections.max(1) {
        conns.push(Endpoint::from_shared(url.clone())?.tcp_nodelay(true).connect().await.context("connect to hub")?);
    }
    let data = bytes::Bytes::from(format!(r#"{{"p":"{}"}}"#, "x".repeat(a.payload_bytes.saturating_sub(8))));
    let redis_pid = redis.as_ref().map(Redis::pid);
    let cpu = |pid: Option<u32>| pid.and_then(procstat::sample).map(|s| s.cpu_s).unwrap_or(0.0);

    // 1. Capacity, closed loop.
    let stop = Arc::new(AtomicBool::new(false));
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for conn in &conns {
        for _ in 0..a.in_flight {
            let mut client = HubClient::new(conn.clone());
            let (stop, next, counters, names, data) =
                (stop.clone(), next.clone(), counters.clone(), names.clone(), data.clone());
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let ch = names[next.fetch_add(1, Ordering::Relaxed) as usize % names.len()].clone();
                    publish(&mut client, ch, data.clone(), &counters).await;
                }
            }));
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (p0, h0, r0, t0) =
        (counters.publishes.load(Ordering::Relaxed), cpu(Some(hub.pid())), cpu(redis_pid), Instant::now());
    tokio::time::sleep(Duration::from_secs_f64(a.duration)).await;
    let secs = t0.elapsed().as_secs_f64();
    let (p1, h1, r1) = (counters.publishes.load(Ordering::Relaxed), cpu(Some(hub.pid())), cpu(redis_pid));
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let capacity = (p1 - p0) as f64 / secs;
    let (cap_hub, cap_redis) = ((h1 - h0) / secs, (r1 - r0) / secs);

    // 2. Latency at a fixed rate, open loop.
    let hist = Arc::new(std::sync::Mutex::new(Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?));
    let interval = Duration::from_secs_f64(1.0 / a.rate.max(1.0));
    let warm = (a.rate as u64).max(1); // one second of warm-up, not recorded
    let total = warm + (a.rate * a.duration) as u64;
    let start = tokio::time::Instant::now();
    let mut inflight = Vec::with_capacity(total as usize);
    let (mut h0, mut r0, mut t0) = (0.0, 0.0, Instant::now());
    for i in 0..total {
        if i == warm {
            (h0, r0, t0) = (cpu(Some(hub.pid())), cpu(redis_pid), Instant::now());
        }
        tokio::time::sleep_until(start + interval.mul_f64(i as f64)).await;
        let mut client = HubClient::new(conns[i as usize % conns.len()].clone());
        let (ch, data, counters, hist) =
            (names[i as usize % names.len()].clone(), data.clone(), counters.clone(), hist.clone());
        inflight.push(tokio::spawn(async move {
            let sent = Instant::now();
            if publish(&mut client, ch, data, &counters).await && i >= warm {
                let us = sent.elapsed().as_micros().max(1) as u64;
                let _ = hist.lock().expect("histogram").record(us);
            }
        }));
    }
    let sent_secs = t0.elapsed().as_secs_f64();
    for t in inflight {
        let _ = t.await;
    }
    let (lat_hub, lat_redis) = ((cpu(Some(hub.pid())) - h0) / sent_secs, (cpu(redis_pid) - r0) / sent_secs);

    // Everything the hub queued must arrive, in order.
    let want = counters.queued.load(Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(10);
    while counters.received.load(Ordering::Relaxed) < want && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let h = hist.lock().expect("histogram").clone();
    let r = EngineResult {
        engine: engine.to_owned(),
        channels: a.channels,
        gateways: a.gateways,
        capacity_publishes_per_s: capacity,
        capacity_hub_cpu_cores: cap_hub,
        capacity_redis_cpu_cores: cap_redis,
        offered_rate: a.rate,
        achieved_rate: h.len() as f64 / sent_secs,
        latency_p50_us: h.value_at_quantile(0.5),
        latency_p99_us: h.value_at_quantile(0.99),
        latency_p999_us: h.value_at_quantile(0.999),
        latency_max_us: h.max(),
        latency_hub_cpu_cores: lat_hub,
        latency_redis_cpu_cores: lat_redis,
        lost: want.saturating_sub(counters.received.load(Ordering::Relaxed)),
        out_of_order: counters.out_of_order.load(Ordering::Relaxed),
        gaps: counters.gaps.load(Ordering::Relaxed),
        publish_errors: counters.errors.load(Ordering::Relaxed),
        hub_rss_mib: procstat::sample(hub.pid()).map(|s| s.rss_kib as f64 / 1024.0).unwrap_or(0.0),
        e2e: None,
    };
    eprintln!(
        "engine {engine}, {} channels, {} fake gateways: capacity {:.0} positioned publishes/s (hub {:.2} cores, redis {:.2}); at {:.0}/s offered ({:.0} done): publish p50 {} µs, p99 {} µs, p99.9 {} µs, max {} µs (hub {:.2} cores, redis {:.2}); lost {}, out of order {}, offsets skipped {}, errors {}",
        r.channels,
        r.gateways,
        r.capacity_publishes_per_s,
        r.capacity_hub_cpu_cores,
        r.capacity_redis_cpu_cores,
        r.offered_rate,
        r.achieved_rate,
        r.latency_p50_us,
        r.latency_p99_us,
        r.latency_p999_us,
        r.latency_max_us,
        r.latency_hub_cpu_cores,
        r.latency_redis_cpu_cores,
        r.lost,
        r.out_of_order,
        r.gaps,
        r.publish_errors
    );
    drop(streams);
    drop(hub);
    let mut r = r;
    if a.end_to_end {
        r.e2e = Some(end_to_end(env, a, engine, redis.as_ref()).await?);
    }
    drop(redis);
    Ok(r)
}

/// The `fixed` scenario (WebSocket clients on one channel, publishes through
/// the ingress) with the hub on `engine`.
async fn end_to_end(env: &Env, a: &EngineArgs, engine: &str, redis: Option<&Redis>) -> Result<serde_json::Value> {
    let mut hub_args = vec![format!("--engine={engine}")];
    if engine == "redis" {
        let url = a.redis_url.clone().or_else(|| redis.map(Redis::url)).expect("a Redis");
        hub_args.push(format!("--redis-url={url}"));
    }
    hub_args.extend(a.hub_args.iter().cloned());
    let s = ScenarioArgs {
        connections: a.e2e_connections,
        gateways: 2,
        workers: 2,
        target: TargetKind::Channel,
        rate: a.e2e_rate,
        duration: a.duration,
        payload_bytes: a.payload_bytes,
        max_p99_ms: 1000.0,
        no_ceiling: true,
        ceiling_batch: 16,
        sweep_factor: 1.5,
        sweep_steps: 1,
        gateway_args: Vec::new(),
        hub_args,
        connect_concurrency: 128,
        label: Some(format!("{} conns / 2 gw, channel, {engine} engine", a.e2e_connections)),
    };
    crate::report::print_header();
    let r = crate::scenario::run_fixed(env, &s).await?;
    Ok(serde_json::to_value(&r)?)
}

#[derive(Default)]
struct Counters {
    publishes: AtomicU64,
    queued: AtomicU64,
    errors: AtomicU64,
    received: AtomicU64,
    out_of_order: AtomicU64,
    gaps: AtomicU64,
}

async fn publish(client: &mut HubClient<Channel>, channel: String, data: bytes::Bytes, c: &Counters) -> bool {
    let req = PublishRequest { target: Some(publish_request::Target::Channel(channel)), data, ..Default::default() };
    match client.publish(req).await {
        Ok(r) => {
            c.publishes.fetch_add(1, Ordering::Relaxed);
            c.queued.fetch_add(u64::from(r.into_inner().gateways), Ordering::Relaxed);
            true
        }
        Err(_) => {
            c.errors.fetch_add(1, Ordering::Relaxed);
            false
        }
    }
}

/// Attach like a gateway, subscribe to every channel, count deliveries and
/// check each channel's offsets come consecutive. Dropping the sender detaches.
async fn fake_gateway(url: &str, i: usize, names: &[String], c: Arc<Counters>) -> Result<mpsc::Sender<AttachRequest>> {
    let channel = Endpoint::from_shared(url.to_owned())?.tcp_nodelay(true).connect().await.context("connect to hub")?;
    let mut client = HubClient::new(channel).max_decoding_message_size(64 << 20);
    let (tx, rx) = mpsc::channel(16);
    let msg = |k| AttachRequest { kind: Some(k) };
    tx.send(msg(attach_request::Kind::Hello(Hello { gateway_id: format!("bench-gw-{i}"), instance: String::new() })))
        .await?;
    let topics = names.iter().map(|n| format!("c:{n}")).collect();
    tx.send(msg(attach_request::Kind::Subscribe(TopicsChange { request_id: 1, topics }))).await?;
    let mut inbound = client.attach(ReceiverStream::new(rx)).await?.into_inner();
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), inbound.message())
            .await
            .map_err(|_| anyhow!("no subscribe ack from the hub"))??
            .ok_or_else(|| anyhow!("attach stream ended"))?;
        if let Some(attach_response::Kind::TopicsAck(a)) = m.kind {
            if a.request_id == 1 {
                break;
            }
            bail!("unexpected ack {}", a.request_id);
        }
    }
    let n = names.len();
    tokio::spawn(async move {
        // Per channel: (epoch, last offset) seen here.
        let mut last: Vec<(String, u64)> = vec![(String::new(), 0); n];
        while let Ok(Some(m)) = inbound.message().await {
            if let Some(attach_response::Kind::Deliveries(d)) = m.kind {
                c.received.fetch_add(d.items.len() as u64, Ordering::Relaxed);
                for item in d.items {
                    let Some(k) = item.channel.strip_prefix("bench-").and_then(|s| s.parse::<usize>().ok()) else {
                        continue;
                    };
                    let (epoch, off) = &mut last[k % n];
                    if *epoch == item.epoch {
                        if item.offset <= *off {
                            c.out_of_order.fetch_add(1, Ordering::Relaxed);
                        } else if item.offset != *off + 1 {
                            c.gaps.fetch_add(item.offset - *off - 1, Ordering::Relaxed);
                        }
                    } else {
                        *epoch = item.epoch.clone();
                    }
                    *off = item.offset;
                }
            }
        }
    });
    Ok(tx)
}
