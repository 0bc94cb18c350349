//! `make bench`: every target of the benchmark, one after the other, then
//! one JSON file, one plot and a Markdown summary of target vs measured
//! (what docs/performance.md quotes).

use std::fmt::Write as _;

use anyhow::Result;
use clap::ValueEnum;
use serde::Serialize;

use crate::hubbench::{self, HubArgs, HubResult};
use crate::procstat;
use crate::report::{self, IdleResult, SweepResult};
use crate::scenario::{self, Env, ScenarioArgs, TargetKind};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Part {
    Hub,
    Fixed,
    Sweep,
    Connect,
    Fifty,
}

#[derive(Debug, Clone, clap::Args)]
pub struct SuiteArgs {
    /// Parts to run (default: all): hub, fixed, sweep, connect, fifty.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub only: Vec<Part>,
    /// Seconds of publishing per phase.
    #[arg(long, default_value_t = 5.0)]
    pub duration: f64,
    /// Before each part, wait up to this many seconds for other work on the
    /// machine to stop.
    #[arg(long, default_value_t = 300)]
    pub wait_quiet_secs: u64,
}

#[derive(Debug, Default, Serialize)]
struct Suite {
    machine: String,
    hub: Vec<HubResult>,
    fixed_1k: Vec<SweepResult>,
    sweep_10k: Vec<SweepResult>,
    /// 10,000 clients, 96 connects in flight (under the listen backlog of 128).
    connect_10k: Option<IdleResult>,
    /// The same with 256 in flight: a reconnect storm.
    connect_10k_burst: Option<IdleResult>,
    fifty_k: Option<IdleResult>,
}

fn args(connections: usize, gateways: usize, rate: f64, duration: f64) -> ScenarioArgs {
    ScenarioArgs {
        connections,
        gateways,
        workers: 2,
        target: TargetKind::Broadcast,
        rate,
        duration,
        payload_bytes: 0,
        max_p99_ms: 50.0,
        no_ceiling: false,
        ceiling_batch: 16,
        sweep_factor: 1.5,
        sweep_steps: 8,
        gateway_args: Vec::new(),
        hub_args: Vec::new(),
        connect_concurrency: 128,
        label: None,
    }
}

pub async fn cmd(env: &Env, a: SuiteArgs) -> Result<bool> {
    let want = |p: Part| a.only.is_empty() || a.only.contains(&p);
    let mut s = Suite { machine: machine(), ..Default::default() };
    eprintln!("machine: {}", s.machine);
    let quiet = std::time::Duration::from_secs(a.wait_quiet_secs);
    if want(Part::Hub) {
        procstat::wait_quiet(quiet).await;
        for gateways in [8, 32, 64] {
            procstat::wait_quiet(quiet).await;
            s.hub.push(hubbench::run(env, &HubArgs { duration: a.duration, gateways, ..hub_defaults() }).await?);
        }
    }
    if want(Part::Fixed) {
        procstat::wait_quiet(quiet).await;
        report::print_header();
        let f = ScenarioArgs { max_p99_ms: 10.0, ..args(1_000, 2, 50_000.0, a.duration * 2.0) };
        s.fixed_1k = scenario::run_fixed(env, &f).await?;
        report::print_ratios(&s.fixed_1k);
    }
    if want(Part::Sweep) {
        procstat::wait_quiet(quiet).await;
        report::print_header();
        s.sweep_10k = scenario::run_sweep(env, &args(10_000, 2, 150_000.0, a.duration)).await?;
        report::print_ratios(&s.sweep_10k);
    }
    if want(Part::Connect) {
        procstat::wait_quiet(quiet).await;
        report::print_header();
        let paced = ScenarioArgs { connect_concurrency: 48, ..args(10_000, 1, 0.0, 0.0) };
        s.connect_10k = Some(scenario::run_idle(env, &paced).await?);
        procstat::wait_quiet(quiet).await;
        s.connect_10k_burst = Some(scenario::run_idle(env, &args(10_000, 1, 0.0, 0.0)).await?);
    }
    if want(Part::Fifty) {
        procstat::wait_quiet(quiet).await;
        report::print_header();
        let fifty = ScenarioArgs { connect_concurrency: 48, ..args(50_000, 3, 100_000.0, a.duration) };
        s.fifty_k = Some(scenario::run_idle(env, &fifty).await?);
    }
    report::write_json(&env.out.join("suite.json"), &s)?;
    let mut plotted = s.sweep_10k.clone();
    plotted.extend(s.fixed_1k.iter().cloned());
    if !plotted.is_empty() {
        crate::plot::latency_vs_rate(&env.out.join("latency.png"), &plotted)?;
    }
    let md = summary(&s);
    std::fs::write(env.out.join("summary.md"), &md)?;
    eprintln!("\n{md}");
    eprintln!(
        "wrote {}, {} and {}",
        env.out.join("suite.json").display(),
        env.out.join("latency.png").display(),
        env.out.join("summary.md").display()
    );
    Ok(true)
}

fn hub_defaults() -> HubArgs {
    HubArgs { gateways: 8, connections: 4, in_flight: 64, duration: 5.0, payload_bytes: 32 }
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name").map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned()))
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| m.lines().next().and_then(|l| l.split_whitespace().nth(1)).and_then(|k| k.parse::<f64>().ok()))
        .map(|k| format!("{:.0} GiB", k / 1024.0 / 1024.0))
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cores} cores ({cpu}), {mem} RAM, Linux {}", kernel.trim())
}

fn yes(b: bool) -> &'static str {
    if b { "yes" } else { "**no**" }
}

fn summary(s: &Suite) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "Machine: {}\n", s.machine);
    let _ = writeln!(o, "| target | measured | met |\n| --- | --- | --- |");
    if let Some(pm) = s.sweep_10k.iter().find(|r| r.system == "pushmesh") {
        let rate = pm.max_rate.unwrap_or(0.0);
        let measured = match &pm.best {
            Some(b) => format!("{rate:.0}/s sustained (p99 {:.1} ms, lost 0)", b.latency_ms.p99),
            None => {
                let low = pm.steps.iter().min_by(|a, b| a.offered_rate.total_cmp(&b.offered_rate));
                low.map_or("no phase ran".to_owned(), |l| {
                    format!(
                        "no rate passed; the lowest tried, {:.0}/s, had p99 {:.1} ms (lost {})",
                        l.offered_rate, l.latency_ms.p99, l.lost
                    )
                })
            }
        };
        let _ = writeln!(
            o,
            "| 10,000 conns / 2 gateways, broadcast: ≥ 400,000 deliveries/s with p99 ≤ 50 ms, zero loss | {measured} | {} |",
            yes(rate >= 400_000.0)
        );
        for c in ["ceiling, 1 frame/write", "ceiling, ≤16 frames/write"] {
            if let Some(r) = report::ratio(&s.sweep_10k, c) {
                let m = s.sweep_10k.iter().find(|x| x.system == c).and_then(|x| x.max_rate).unwrap_or(0.0);
                let _ = writeln!(o, "| (ratio to the machine's ceiling, {c}: {m:.0}/s) | {:.0}% | |", r * 100.0);
            }
        }
    }
    if let Some(p) = s.fixed_1k.iter().find(|r| r.system == "pushmesh").and_then(|r| r.steps.first()) {
        let _ = writeln!(
            o,
            "| 1,000 conns at 50,000 deliveries/s: p99 ≤ 10 ms | p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms, {:.0}/s delivered, lost {} | {} |",
            p.latency_ms.p99,
            p.latency_ms.p999,
            p.latency_ms.max,
            p.delivered_rate,
            p.lost,
            yes(p.latency_ms.p99 <= 10.0 && p.lost == 0)
        );
        for c in s.fixed_1k.iter().filter(|r| r.system != "pushmesh") {
            if let Some(cp) = c.steps.first() {
                let _ = writeln!(o, "| (same load on the {}) | p99 {:.2} ms | |", c.system, cp.latency_ms.p99);
            }
        }
    }
    if let Some(i) = &s.connect_10k {
        let _ = writeln!(
            o,
            "| idle connections ≤ 4 KiB of gateway RSS each | {:.0} B per connection ({} conns, 1 gateway) | {} |",
            i.rss_per_connection_bytes,
            i.connect.connections,
            yes(i.rss_per_connection_bytes <= 4096.0)
        );
        let _ = writeln!(
            o,
            "| connect rate ≥ 10,000/s per gateway | {:.0}/s ({} conns to 1 gateway in {:.2} s, 96 in flight) | {} |",
            i.connect.rate_per_gateway,
            i.connect.connections,
            i.connect.secs,
            yes(i.connect.rate_per_gateway >= 10_000.0)
        );
    }
    if let Some(i) = &s.connect_10k_burst {
        let _ = writeln!(
            o,
            "| (the same, 256 connects in flight) | {:.0}/s ({:.2} s; slowest connect {:.0} ms, {} over 500 ms) | {} |",
            i.connect.rate_per_gateway,
            i.connect.secs,
            i.connect.max_ms,
            i.connect.slow,
            yes(i.connect.rate_per_gateway >= 10_000.0)
        );
    }
    if let Some(f) = &s.fifty_k {
        let b = f.broadcast.as_ref();
        let _ = writeln!(
            o,
            "| 50,000 conns over 3 gateways, all receiving broadcasts (figures) | connected in {:.2} s ({:.0}/s per gateway), {:.0} B RSS/conn; {} | {} |",
            f.connect.secs,
            f.connect.rate_per_gateway,
            f.rss_per_connection_bytes,
            b.map_or("no broadcast".to_owned(), |b| format!(
                "{:.0} deliveries/s offered, {:.0}/s delivered, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms, lost {}",
                b.offered_rate, b.delivered_rate, b.latency_ms.p50, b.latency_ms.p99, b.latency_ms.max, b.lost
            )),
            b.map_or("-", |b| yes(b.lost == 0))
        );
    }
    for h in &s.hub {
        let _ = writeln!(
            o,
            "| hub ≥ 1,000,000 topic deliveries/s to gateway streams | {:.0}/s ({} fake gateways, {:.0} publishes/s, hub {:.2} cores, lost {}) | {} |",
            h.deliveries_per_s,
            h.gateways,
            h.publishes_per_s,
            h.hub_cpu_cores,
            h.lost,
            yes(h.deliveries_per_s >= 1_000_000.0 && h.lost == 0)
        );
    }
    o
}
