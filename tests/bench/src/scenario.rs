//! The measurements: one *phase* is "publish at a rate for a while, wait for
//! the deliveries, account for every one"; `fixed` runs one phase per
//! system, `sweep` searches for the highest rate that passes, `idle` looks
//! at connections at rest. A *system* is pushmesh, or the ceiling in one of
//! its two write modes; all are read by the same client workers.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::ValueEnum;

use crate::ceiling::Ceiling;
use crate::cluster::{self, Cluster};
use crate::fleet::{ConnectStats, Fleet};
use crate::procstat;
use crate::publisher::{self, Target};
use crate::report::{self, ConnectResult, IdleResult, Latency, PhaseResult, SweepResult};

/// Where binaries are and results go.
pub struct Env {
    pub bin_dir: PathBuf,
    pub out: PathBuf,
}

impl Env {
    pub fn new(bin_dir: Option<PathBuf>, out: PathBuf) -> Result<Env> {
        let bin_dir = match bin_dir {
            Some(d) => d,
            None => std::env::current_exe()?.parent().context("own directory")?.to_path_buf(),
        };
        std::fs::create_dir_all(&out).with_context(|| format!("create {}", out.display()))?;
        Ok(Env { bin_dir, out })
    }

    pub fn bin(&self, name: &str) -> Result<PathBuf> {
        let p = self.bin_dir.join(name);
        if !p.exists() {
            bail!("{} is missing: build the service binaries first (cargo build --release --bins)", p.display());
        }
        Ok(p)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TargetKind {
    /// POST /broadcast: every connection receives every message.
    Broadcast,
    /// POST /publish to one channel every connection subscribed to.
    Channel,
}

#[derive(Debug, Clone, clap::Args)]
pub struct ScenarioArgs {
    /// WebSocket clients.
    #[arg(long, default_value_t = 1000)]
    pub connections: usize,
    /// ws-gateway processes (and ceiling processes).
    #[arg(long, default_value_t = 2)]
    pub gateways: usize,
    /// Client worker processes, at least (more when one would pass 19,000 sockets).
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    #[arg(long, value_enum, default_value = "broadcast")]
    pub target: TargetKind,
    /// Deliveries per second offered (fixed), or the first rate tried (sweep).
    #[arg(long, default_value_t = 50_000.0)]
    pub rate: f64,
    /// Seconds of publishing per phase.
    #[arg(long, default_value_t = 5.0)]
    pub duration: f64,
    /// Extra bytes of padding in each message's data.
    #[arg(long, default_value_t = 0)]
    pub payload_bytes: usize,
    /// A phase passes when its p99 is at most this (and nothing is lost).
    #[arg(long, default_value_t = 50.0)]
    pub max_p99_ms: f64,
    /// Skip the ceiling measurements.
    #[arg(long)]
    pub no_ceiling: bool,
    /// Most frames per write in the ceiling's batched mode.
    #[arg(long, default_value_t = 16)]
    pub ceiling_batch: usize,
    /// Sweep: rate multiplier while phases pass.
    #[arg(long, default_value_t = 1.5)]
    pub sweep_factor: f64,
    /// Sweep: most phases per system.
    #[arg(long, default_value_t = 10)]
    pub sweep_steps: usize,
    /// Extra argument for every ws-gateway (repeatable), e.g. --gateway-arg=--outbound-queue=4096.
    #[arg(long = "gateway-arg", allow_hyphen_values = true)]
    pub gateway_args: Vec<String>,
    /// Extra argument for the hub (repeatable), e.g. --hub-arg=--engine=redis.
    #[arg(long = "hub-arg", allow_hyphen_values = true)]
    pub hub_args: Vec<String>,
    /// Connection attempts in flight per worker process while connecting.
    #[arg(long, default_value_t = 128)]
    pub connect_concurrency: usize,
    /// Name for this configuration in tables and the plot.
    #[arg(long)]
    pub label: Option<String>,
}

impl ScenarioArgs {
    pub fn config_label(&self) -> String {
        self.label.clone().unwrap_or_else(|| {
            let t = match self.target {
                TargetKind::Broadcast => "broadcast",
                TargetKind::Channel => "channel",
            };
            format!("{} conns / {} gw, {t}", self.connections, self.gateways)
        })
    }

    fn channel(&self) -> Option<&'static str> {
        (self.target == TargetKind::Channel).then_some("bench")
    }

    fn publish_target(&self) -> Target {
        match self.target {
            TargetKind::Broadcast => Target::Broadcast,
            TargetKind::Channel => Target::Channel("bench".to_owned()),
        }
    }
}

/// What delivers the frames in a phase.
pub enum System<'a> {
    Pushmesh { cluster: &'a Cluster, http: reqwest::Client, target: Target },
    Ceiling { ceiling: &'a mut Ceiling, batch: usize },
}

impl System<'_> {
    pub fn name(&self) -> String {
        match self {
            System::Pushmesh { .. } => "pushmesh".to_owned(),
            System::Ceiling { batch: 1, .. } => "ceiling, 1 frame/write".to_owned(),
            System::Ceiling { batch, .. } => format!("ceiling, ≤{batch} frames/write"),
        }
    }

    fn samples(&self, fleet: &Fleet) -> Vec<(String, procstat::Sample)> {
        let mut v = match self {
            System::Pushmesh { cluster, .. } => cluster.sample(),
            System::Ceiling { ceiling, .. } => ceiling
                .pids()
                .iter()
                .enumerate()
                .map(|(i, p)| (format!("ceiling-{i}"), procstat::sample(*p).unwrap_or_default()))
                .collect(),
        };
        v.extend(
            fleet
                .pids()
                .iter()
                .enumerate()
                .map(|(i, p)| (format!("worker-{i}"), procstat::sample(*p).unwrap_or_default())),
        );
        v
    }
}

/// Sequence numbers never repeat within a run, so a late delivery from an
/// earlier phase is recognised as such.
pub struct Seq(pub u64);

/// Publish at `rate` deliveries/s for `duration` seconds and account for
/// every delivery.
#[allow(clippy::too_many_arguments)]
pub async fn phase(
    system: &mut System<'_>,
    fleet: &mut Fleet,
    seq: &mut Seq,
    config: &str,
    connections: usize,
    gateways: usize,
    rate: f64,
    duration: f64,
    pad: usize,
    max_p99_ms: f64,
) -> Result<PhaseResult> {
    // Bring back clients a previous overloaded phase lost (slow-consumer closes).
    let (_, open) = fleet.progress().await?;
    if open < connections {
        fleet.connect().await?;
    }
    let per_sec = rate / connections as f64;
    let count = ((per_sec * duration).round() as u64).max(1);
    let first = seq.0;
    seq.0 += count;
    fleet.phase(first, count).await?;
    let before = system.samples(fleet);
    let machine0 = procstat::machine_busy_s();
    let (accepted, errors, first_error, start_ns, lag_ms, dead) = match system {
        System::Pushmesh { cluster, http, target } => {
            let o = publisher::run(http, cluster.ingress.addr("http"), target, first, count, per_sec, pad).await?;
            (o.accepted, o.errors, o.first_error, o.start_ns, o.max_lag_ms, 0)
        }
        System::Ceiling { ceiling, batch } => {
            let (dead, start_ns) = ceiling.run(first, count, per_sec, *batch, pad).await?;
            (vec![true; count as usize], 0, None, start_ns, 0.0, dead)
        }
    };
    let expected = accepted.iter().filter(|a| **a).count() as u64 * connections as u64;
    // Wait for the stragglers: until everything arrived, or nothing more
    // arrives for 2 s (10 s at most).
    let mut last = (0, tokio::time::Instant::now());
    let give_up = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (unique, _) = fleet.progress().await?;
        if unique >= expected || tokio::time::Instant::now() > give_up {
            break;
        }
        if unique != last.0 {
            last = (unique, tokio::time::Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(2) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let after = system.samples(fleet);
    let machine_cpu = procstat::machine_busy_s() - machine0;
    let m = fleet.report().await?;
    let mut lost = 0u64;
    for (i, ok) in accepted.iter().enumerate() {
        let got = m.counts.get(i).copied().unwrap_or(0);
        if *ok {
            lost += (connections as u64).saturating_sub(got);
        }
    }
    let span_s = (m.last_recv_ns.saturating_sub(start_ns) as f64 / 1e9).max(count as f64 / per_sec);
    let h = &m.hist;
    let mut r = PhaseResult {
        config: config.to_owned(),
        system: system.name(),
        connections,
        gateways,
        offered_rate: rate,
        publishes: count,
        publish_rate: per_sec,
        duration_s: duration,
        expected,
        delivered: m.unique,
        lost,
        duplicates: m.duplicates,
        stray: m.stray,
        publish_errors: errors,
        publish_first_error: first_error,
        publisher_max_lag_ms: lag_ms,
        disconnected: m.closed + dead as u64,
        delivered_rate: m.unique as f64 / span_s,
        latency_ms: Latency::from_us(h),
        usage: cluster::usage(&before, &after),
        other_cpu_s: 0.0,
        server_us_per_delivery: 0.0,
        pass: false,
    };
    r.other_cpu_s = (machine_cpu - r.usage.iter().map(|u| u.cpu_s).sum::<f64>()).max(0.0);
    let server = if r.system == "pushmesh" { r.cpu("gw-") } else { r.cpu("ceiling-") };
    r.server_us_per_delivery = server * 1e6 / r.delivered.max(1) as f64;
    r.pass = r.passes(max_p99_ms);
    report::print_row(&r);
    // Let queues empty and the machine settle before the next phase.
    tokio::time::sleep(Duration::from_millis(500)).await;
    Ok(r)
}

/// Highest passing rate: grow by `factor` while phases pass, then bisect
/// between the best pass and the lowest failure, within `steps` phases.
#[allow(clippy::too_many_arguments)]
pub async fn sweep(
    system: &mut System<'_>,
    fleet: &mut Fleet,
    seq: &mut Seq,
    a: &ScenarioArgs,
    start_rate: f64,
) -> Result<SweepResult> {
    let config = a.config_label();
    let mut steps = Vec::new();
    let (mut best, mut fail): (Option<f64>, Option<f64>) = (None, None);
    let mut rate = start_rate;
    for _ in 0..a.sweep_steps.max(1) {
        let r = phase(
            system,
            fleet,
            seq,
            &config,
            a.connections,
            a.gateways,
            rate,
            a.duration,
            a.payload_bytes,
            a.max_p99_ms,
        )
        .await?;
        if r.pass {
            best = Some(best.map_or(rate, |b: f64| b.max(rate)));
        } else {
            fail = Some(fail.map_or(rate, |f: f64| f.min(rate)));
        }
        steps.push(r);
        rate = match (best, fail) {
            (Some(b), None) => b * a.sweep_factor,
            (None, Some(f)) => f / a.sweep_factor,
            (Some(b), Some(f)) if f / b > 1.08 => (b + f) / 2.0,
            (Some(_), Some(_)) => break,
            (None, None) => unreachable!("one phase ran"),
        };
    }
    let best_phase = best.and_then(|b| steps.iter().find(|s| s.pass && s.offered_rate == b).cloned());
    Ok(SweepResult {
        config,
        system: system.name(),
        max_rate: best_phase.as_ref().map(|p| p.delivered_rate),
        best: best_phase,
        steps,
    })
}

async fn pushmesh_fleet(env: &Env, a: &ScenarioArgs) -> Result<(Cluster, Fleet, ConnectStats)> {
    let cluster = Cluster::start(env, a.gateways, &a.gateway_args, &a.hub_args).await?;
    let mut fleet =
        Fleet::spawn(a.connections, a.workers, a.connect_concurrency, &cluster.gateway_addrs(), a.channel(), 10)
            .await?;
    let c = fleet.connect().await?;
    eprintln!(
        "pushmesh: {} clients connected to {} gateways in {:.2} s ({:.0}/s)",
        c.open,
        a.gateways,
        c.secs,
        c.open as f64 / c.secs.max(1e-9)
    );
    Ok((cluster, fleet, c))
}

async fn ceiling_fleet(env: &Env, a: &ScenarioArgs) -> Result<(Ceiling, Fleet)> {
    let threads = 2usize.div_ceil(a.gateways).max(1);
    let ceiling = Ceiling::start(a.gateways, threads, &env.out.join("logs")).await?;
    let mut fleet = Fleet::spawn(a.connections, a.workers, a.connect_concurrency, &ceiling.addrs(), None, 20).await?;
    fleet.connect().await?;
    Ok((ceiling, fleet))
}

/// Both ceiling modes, one phase each at `rate` (or a sweep when `sweep`).
async fn ceiling_runs(env: &Env, a: &ScenarioArgs, sweep_from: Option<f64>) -> Result<Vec<SweepResult>> {
    let (mut ceiling, mut fleet) = ceiling_fleet(env, a).await?;
    let mut seq = Seq(1);
    let mut out = Vec::new();
    for batch in [1, a.ceiling_batch] {
        let mut sys = System::Ceiling { ceiling: &mut ceiling, batch };
        let r = match sweep_from {
            Some(start) => sweep(&mut sys, &mut fleet, &mut seq, a, start).await?,
            None => {
                let p = phase(
                    &mut sys,
                    &mut fleet,
                    &mut seq,
                    &a.config_label(),
                    a.connections,
                    a.gateways,
                    a.rate,
                    a.duration,
                    a.payload_bytes,
                    a.max_p99_ms,
                )
                .await?;
                SweepResult::single(p)
            }
        };
        out.push(r);
    }
    Ok(out)
}

pub async fn run_fixed(env: &Env, a: &ScenarioArgs) -> Result<Vec<SweepResult>> {
    let mut out = Vec::new();
    {
        let (cluster, mut fleet, _) = pushmesh_fleet(env, a).await?;
        let mut sys = System::Pushmesh { cluster: &cluster, http: publisher::client(), target: a.publish_target() };
        let p = phase(
            &mut sys,
            &mut fleet,
            &mut Seq(1),
            &a.config_label(),
            a.connections,
            a.gateways,
            a.rate,
            a.duration,
            a.payload_bytes,
            a.max_p99_ms,
        )
        .await?;
        out.push(SweepResult::single(p));
    }
    if !a.no_ceiling {
        out.extend(ceiling_runs(env, a, None).await?);
    }
    Ok(out)
}

pub async fn run_sweep(env: &Env, a: &ScenarioArgs) -> Result<Vec<SweepResult>> {
    let mut out = Vec::new();
    let pm = {
        let (cluster, mut fleet, _) = pushmesh_fleet(env, a).await?;
        let mut sys = System::Pushmesh { cluster: &cluster, http: publisher::client(), target: a.publish_target() };
        sweep(&mut sys, &mut fleet, &mut Seq(1), a, a.rate).await?
    };
    let start = pm.max_rate.unwrap_or(a.rate).max(a.rate);
    out.push(pm);
    if !a.no_ceiling {
        // Start the ceiling where pushmesh topped out: it is at least as fast.
        out.extend(ceiling_runs(env, a, Some(start)).await?);
    }
    Ok(out)
}

/// Connect `connections` idle clients: the connect rate, and the gateways'
/// RSS per connection (after minus before, over connections); then
/// broadcast to all of them at `rate` for `duration`.
pub async fn run_idle(env: &Env, a: &ScenarioArgs) -> Result<IdleResult> {
    let cluster = Cluster::start(env, a.gateways, &a.gateway_args, &a.hub_args).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let gw_rss = |c: &Cluster| -> u64 {
        c.gateways.iter().map(|g| procstat::sample(g.pid_or_zero()).map(|s| s.rss_kib).unwrap_or(0)).sum()
    };
    let before_kib = gw_rss(&cluster);
    let mut fleet =
        Fleet::spawn(a.connections, a.workers, a.connect_concurrency, &cluster.gateway_addrs(), a.channel(), 10)
            .await?;
    let c = fleet.connect().await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after_kib = gw_rss(&cluster);
    let connect = ConnectResult {
        connections: c.open,
        gateways: a.gateways,
        secs: c.secs,
        rate: c.open as f64 / c.secs.max(1e-9),
        rate_per_gateway: c.open as f64 / c.secs.max(1e-9) / a.gateways as f64,
        max_ms: c.max_ms,
        slow: c.slow,
        retried: c.retried,
    };
    let per_conn = (after_kib.saturating_sub(before_kib)) as f64 * 1024.0 / c.open.max(1) as f64;
    eprintln!(
        "idle: {} clients over {} gateways connected in {:.2} s = {:.0}/s ({:.0}/s per gateway; slowest {:.0} ms, {} over 500 ms, {} retried); gateway RSS {:.1} → {:.1} MiB = {:.0} B per connection",
        c.open,
        a.gateways,
        c.secs,
        connect.rate,
        connect.rate_per_gateway,
        c.max_ms,
        c.slow,
        c.retried,
        before_kib as f64 / 1024.0,
        after_kib as f64 / 1024.0,
        per_conn
    );
    let broadcast = if a.duration > 0.0 {
        let mut sys = System::Pushmesh { cluster: &cluster, http: publisher::client(), target: a.publish_target() };
        Some(
            phase(
                &mut sys,
                &mut fleet,
                &mut Seq(1),
                &a.config_label(),
                a.connections,
                a.gateways,
                a.rate,
                a.duration,
                a.payload_bytes,
                a.max_p99_ms,
            )
            .await?,
        )
    } else {
        None
    };
    Ok(IdleResult {
        config: a.config_label(),
        connect,
        gateway_rss_before_mib: before_kib as f64 / 1024.0,
        gateway_rss_after_mib: after_kib as f64 / 1024.0,
        rss_per_connection_bytes: per_conn,
        broadcast,
    })
}

pub async fn fixed_cmd(env: &Env, a: ScenarioArgs) -> Result<bool> {
    report::print_header();
    let r = run_fixed(env, &a).await?;
    report::print_ratios(&r);
    report::write_json(&env.out.join("fixed.json"), &r)?;
    Ok(r[0].steps.iter().all(|p| p.lost == 0 && p.duplicates == 0))
}

pub async fn sweep_cmd(env: &Env, a: ScenarioArgs) -> Result<bool> {
    report::print_header();
    let r = run_sweep(env, &a).await?;
    report::print_ratios(&r);
    report::write_json(&env.out.join("sweep.json"), &r)?;
    crate::plot::latency_vs_rate(&env.out.join("latency.png"), &r)?;
    eprintln!("wrote {} and {}", env.out.join("sweep.json").display(), env.out.join("latency.png").display());
    Ok(true)
}

pub async fn idle_cmd(env: &Env, a: ScenarioArgs) -> Result<bool> {
    report::print_header();
    let r = run_idle(env, &a).await?;
    report::write_json(&env.out.join("idle.json"), &r)?;
    Ok(r.broadcast.as_ref().is_none_or(|p| p.lost == 0 && p.duplicates == 0))
}

/// A few seconds, few clients: the tool still works and nothing is lost,
/// over broadcast, a channel, and the ceiling; then the targeted workloads
/// (unicast in both forms and on the per-message ceiling, channels, bulk):
/// every message reaches exactly its receivers, in order.
pub async fn smoke_cmd(env: &Env) -> Result<bool> {
    let base = ScenarioArgs {
        connections: 200,
        gateways: 2,
        workers: 2,
        target: TargetKind::Broadcast,
        rate: 4000.0,
        duration: 1.0,
        payload_bytes: 16,
        max_p99_ms: 1000.0,
        no_ceiling: false,
        ceiling_batch: 4,
        sweep_factor: 1.5,
        sweep_steps: 1,
        gateway_args: Vec::new(),
        hub_args: Vec::new(),
        connect_concurrency: 128,
        label: None,
    };
    report::print_header();
    let mut results = run_fixed(env, &base).await?;
    let ch = ScenarioArgs { target: TargetKind::Channel, no_ceiling: true, ..base };
    results.extend(run_fixed(env, &ch).await?);
    report::write_json(&env.out.join("smoke.json"), &results)?;
    let mut ok = true;
    for p in results.iter().flat_map(|r| &r.steps) {
        let bad = p.lost > 0 || p.duplicates > 0 || p.publish_errors > 0 || p.delivered == 0 || p.expected == 0;
        if bad {
            eprintln!(
                "smoke: {} / {}: expected {}, delivered {}, lost {}, duplicates {}, publish errors {} ({})",
                p.config,
                p.system,
                p.expected,
                p.delivered,
                p.lost,
                p.duplicates,
                p.publish_errors,
                p.publish_first_error.as_deref().unwrap_or("-")
            );
            ok = false;
        }
    }
    let targeted = crate::targeted::smoke(env).await?;
    report::write_json(&env.out.join("smoke-targeted.json"), &targeted)?;
    for p in &targeted {
        if !p.correct() || p.delivered == 0 {
            eprintln!(
                "smoke: {} / {}: expected {}, delivered {}, lost {}, duplicates {}, misdelivered {}, out of order {}, publish errors {} ({})",
                p.config,
                p.system,
                p.expected,
                p.delivered,
                p.lost,
                p.duplicates,
                p.misdelivered,
                p.out_of_order,
                p.publish_errors,
                p.publish_first_error.as_deref().unwrap_or("-")
            );
            ok = false;
        }
    }
    let client_ops = crate::clientops::smoke(env).await?;
    report::write_json(&env.out.join("smoke-client-ops.json"), &client_ops)?;
    for p in &client_ops {
        if !p.correct() || p.delivered == 0 {
            eprintln!(
                "smoke: {} / proxy {}: ops {}, written {}, accepted {}, errors {} ({}), unanswered {}; expected {}, delivered {}, lost {}, duplicates {}, misdelivered {}, out of order {}",
                p.config,
                p.proxy.name(),
                p.ops,
                p.written,
                p.accepted,
                p.op_errors,
                p.first_op_error.as_deref().unwrap_or("-"),
                p.unanswered,
                p.expected,
                p.delivered,
                p.lost,
                p.duplicates,
                p.misdelivered,
                p.out_of_order,
            );
            ok = false;
        }
    }
    if ok {
        eprintln!("smoke: ok, every delivery arrived exactly once, to the client it was for");
    }
    Ok(ok)
}
