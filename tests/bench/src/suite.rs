//! `make bench`: every target of the benchmark, one after the other, then
//! one JSON file, one plot and a Markdown summary of target vs measured
//! (what docs/performance.md quotes).

use std::fmt::Write as _;

use anyhow::Result;
use clap::ValueEnum;
use serde::Serialize;

use crate::clientops::{self, ClientArgs, ClientPhase, ClientRun};
use crate::hubbench::{self, HubArgs, HubResult};
use crate::procstat;
use crate::report::{self, IdleResult, MsgPhase, MsgRun, SweepResult};
use crate::scenario::{self, Env, ScenarioArgs, TargetKind};
use crate::targeted::{self, BulkTransport, MsgArgs, Workload};
use crate::worker::LoadOp;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Part {
    Hub,
    Fixed,
    Sweep,
    Connect,
    Fifty,
    /// Targeted sends, one request each: fixed rates, the sweep, the ceiling.
    Unicast,
    /// Many sends per request (/batch), and the ceiling.
    Bulk,
    /// Publishes over many small channels (figures).
    Channels,
    /// Client publish and rpc over the WebSocket, with no proxy and
    /// through an HTTP and a gRPC backend (figures; the proxy's cost).
    ClientOps,
}

#[derive(Debug, Clone, clap::Args)]
pub struct SuiteArgs {
    /// Parts to run (default: all): hub, fixed, sweep, connect, fifty, unicast, bulk, channels, client-ops.
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
    /// 10,000 clients over 2 gateways, one POST /send per message: 1,000
    /// and 10,000 sends/s, then the sweep; and the per-message ceiling.
    unicast: Option<MsgRun>,
    /// The same clients, 1,000 sends per POST /batch at 200,000 sends/s.
    bulk: Option<MsgRun>,
    /// The same sends over the ingress's gRPC PublishStream (pushmesh only).
    bulk_stream: Option<MsgRun>,
    /// The same clients over 5,000 channels, 10,000 publishes/s.
    channels: Option<MsgRun>,
    /// 4,000 clients over 2 gateways and 400 channels, 400 of them
    /// publishing over their WebSocket at 1,000 and 5,000 publishes/s: no
    /// proxy, HTTP and gRPC backend.
    client_publish: Option<ClientRun>,
    /// The same 400 clients calling rpc at 1,000 and 5,000 calls/s, HTTP
    /// and gRPC backend.
    client_rpc: Option<ClientRun>,
}

/// The client-ops settings of the suite (see `client_publish`).
const CLIENT_OPS_RATES: [f64; 2] = [1_000.0, 5_000.0];

/// The targeted workloads' suite settings (issue 11's targets): 10,000
/// clients over 2 gateways, 64-byte data.
fn msg_args(rate: &[f64], duration: f64) -> MsgArgs {
    MsgArgs { rate: rate.to_vec(), duration, ..MsgArgs::defaults() }
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
    if want(Part::Unicast) {
        procstat::wait_quiet(quiet).await;
        let u = MsgArgs { sweep: true, ..msg_args(&[1_000.0, 10_000.0], a.duration) };
        s.unicast = Some(targeted::run(env, Workload::Unicast, &u).await?);
    }
    if want(Part::Bulk) {
        procstat::wait_quiet(quiet).await;
        s.bulk = Some(targeted::run(env, Workload::Bulk, &msg_args(&[200_000.0], a.duration)).await?);
        procstat::wait_quiet(quiet).await;
        let stream =
            MsgArgs { transport: BulkTransport::GrpcStream, no_ceiling: true, ..msg_args(&[200_000.0], a.duration) };
        s.bulk_stream = Some(targeted::run(env, Workload::Bulk, &stream).await?);
    }
    if want(Part::Channels) {
        procstat::wait_quiet(quiet).await;
        let c = MsgArgs { no_ceiling: true, ..msg_args(&[10_000.0], a.duration) };
        s.channels = Some(targeted::run(env, Workload::Channels, &c).await?);
    }
    if want(Part::ClientOps) {
        for op in [LoadOp::Publish, LoadOp::Rpc] {
            procstat::wait_quiet(quiet).await;
            let c = ClientArgs { rate: CLIENT_OPS_RATES.to_vec(), duration: a.duration, ..ClientArgs::defaults(op) };
            let r = Some(clientops::run(env, &c).await?);
            match op {
                LoadOp::Publish => s.client_publish = r,
                LoadOp::Rpc => s.client_rpc = r,
            }
        }
    }
    report::write_json(&env.out.join("suite.json"), &s)?;
    if let Some(u) = &s.unicast {
        crate::plot::msg_latency_vs_rate(&env.out.join("unicast.png"), u)?;
    }
    let mut plotted = s.sweep_10k.clone();
    plotted.extend(s.fixed_1k.iter().cloned());
    if !plotted.is_empty() {
        crate::plot::latency_vs_rate(&env.out.join("latency.png"), &plotted)?;
    }
    let md = summary(&s);
    std::fs::write(env.out.join("summary.md"), &md)?;
    eprintln!("\n{md}");
    let mut wrote = vec![env.out.join("suite.json"), env.out.join("summary.md")];
    if !plotted.is_empty() {
        wrote.push(env.out.join("latency.png"));
    }
    if s.unicast.is_some() {
        wrote.push(env.out.join("unicast.png"));
    }
    eprintln!("wrote {}", wrote.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "));
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
    if let Some(u) = &s.unicast {
        unicast_rows(&mut o, u);
    }
    if let Some(b) = &s.bulk {
        bulk_rows(&mut o, b);
    }
    if let Some(p) = s.bulk_stream.as_ref().and_then(|b| b.fixed_at("pushmesh", 200_000.0)) {
        let _ = writeln!(
            o,
            "| (the same sends over gRPC `PublishStream`, {} per write, a result per send) | {}; pushmesh {:.1} µs CPU per send | {} |",
            p.per_request,
            msg_figures(p),
            p.system_us_per_message,
            yes(p.pass)
        );
    }
    if let Some(c) = &s.channels
        && let Some(p) = c.fixed_at("pushmesh", 10_000.0)
    {
        let _ = writeln!(
            o,
            "| channels: 10,000 conns over {} channels (2 subscribers each), 10,000 publishes/s (figures) | {}; pushmesh {:.1} µs CPU per publish | {} |",
            thousands(p.channels.unwrap_or(0) as f64),
            msg_figures(p),
            p.system_us_per_message,
            yes(p.correct())
        );
    }
    for run in [&s.client_publish, &s.client_rpc].into_iter().flatten() {
        client_ops_rows(&mut o, run);
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

/// p50/p99/max, delivered, and everything that went wrong, in one cell.
fn msg_figures(p: &MsgPhase) -> String {
    let mut t = format!(
        "p50 {:.2} ms, p99 {:.2} ms, max {:.1} ms; {}/s delivered, lost {}",
        p.latency_ms.p50,
        p.latency_ms.p99,
        p.latency_ms.max,
        thousands(p.delivered_rate),
        p.lost
    );
    for (n, what) in [
        (p.duplicates, "duplicated"),
        (p.misdelivered, "misdelivered"),
        (p.out_of_order, "out of order"),
        (p.publish_errors, "refused"),
    ] {
        if n > 0 {
            let _ = write!(t, ", **{n} {what}**");
        }
    }
    t
}

/// The ceiling's figure next to pushmesh's.
fn vs_ceiling(run: &MsgRun, rate: f64) -> String {
    match run.fixed_at("per-message ceiling", rate) {
        Some(c) => format!("; ceiling p50 {:.2} ms, p99 {:.2} ms", c.latency_ms.p50, c.latency_ms.p99),
        None => String::new(),
    }
}

fn unicast_rows(o: &mut String, u: &MsgRun) {
    const WHAT: &str = "unicast, 10,000 conns / 2 gateways, one POST /send per message";
    for (rate, bound) in [(1_000.0, 1.0), (10_000.0, 5.0)] {
        if let Some(p) = u.fixed_at("pushmesh", rate) {
            let _ = writeln!(
                o,
                "| {WHAT}: p99 ≤ {bound} ms at {} sends/s | {}{} | {} |",
                thousands(rate),
                msg_figures(p),
                vs_ceiling(u, rate),
                yes(p.correct() && p.latency_ms.p99 <= bound)
            );
        }
    }
    if let Some(s) = u.sweep_of("pushmesh") {
        let measured = match &s.best {
            Some(b) => format!("{}/s (p99 {:.1} ms, lost 0)", thousands(b.offered_rate), b.latency_ms.p99),
            None => "no rate passed".to_owned(),
        };
        let _ = writeln!(
            o,
            "| highest sustained single-request sends/s, p99 ≤ 50 ms, zero loss: ≥ 33,000/s | {measured} | {} |",
            yes(s.max_rate.is_some_and(|r| r >= 33_000.0))
        );
        let c = u.sweep_of("per-message ceiling");
        let (measured, met) = match (s.max_rate, c.and_then(|c| c.max_rate)) {
            (Some(p), Some(c)) => {
                (format!("{:.2}× ({}/s against the ceiling's {}/s)", p / c, thousands(p), thousands(c)), p / c >= 0.8)
            }
            (p, c) => (format!("pushmesh {p:?}/s, ceiling {c:?}/s: no ratio"), false),
        };
        let _ = writeln!(o, "| (the same) ≥ 0.8× the per-message ceiling | {measured} | {} |", yes(met));
    }
    if let Some(p) = u.fixed_at("pushmesh", 10_000.0) {
        let ceiling = u
            .fixed_at("per-message ceiling", 10_000.0)
            .map_or(String::new(), |c| format!("; ceiling {:.1} µs", c.system_us_per_message));
        let _ = writeln!(
            o,
            "| CPU per send over all pushmesh processes ≤ 40 µs at 10,000 sends/s | {:.1} µs (ingress {:.1}, hub {:.1}, gateways {:.1}){ceiling}; publisher {:.1} µs per request ({:.2} cores), client workers {:.1} µs per delivery | {} |",
            p.system_us_per_message,
            p.us("ingress"),
            p.us("hub"),
            p.us("gw-"),
            p.publisher_us_per_request,
            p.publisher_cores,
            p.workers_us_per_delivery,
            yes(p.system_us_per_message <= 40.0)
        );
    }
}

fn bulk_rows(o: &mut String, b: &MsgRun) {
    if let Some(p) = b.fixed_at("pushmesh", 200_000.0) {
        let _ = writeln!(
            o,
            "| bulk: ≥ 200,000 targeted deliveries/s through /batch ({} sends per request), p99 ≤ 50 ms | {}{}; pushmesh {:.1} µs CPU per send | {} |",
            p.per_request,
            msg_figures(p),
            vs_ceiling(b, 200_000.0),
            p.system_us_per_message,
            yes(p.pass)
        );
    }
}

fn client_ops_rows(o: &mut String, run: &ClientRun) {
    for p in &run.phases {
        let what = match p.op {
            LoadOp::Publish => format!(
                "client publish → {} subscribers each, {} conns / {} gateways, {} publishers, {}/s",
                p.connections / p.channels.unwrap_or(1).max(1),
                thousands(p.connections as f64),
                p.gateways,
                p.publishers,
                thousands(p.offered_rate)
            ),
            LoadOp::Rpc => format!(
                "client rpc round trip, {} callers over {} gateways, {}/s",
                p.publishers,
                p.gateways,
                thousands(p.offered_rate)
            ),
        };
        let _ = writeln!(
            o,
            "| {what}, proxy {} (figures) | {}; pushmesh {:.1} µs CPU per op (gateways {:.1}, hub {:.1}), backend {} | {} |",
            p.proxy.name(),
            client_figures(p),
            p.pushmesh_us_per_op,
            p.us("gw-"),
            p.us("hub"),
            if p.proxy == crate::proxybackend::ProxyKind::None {
                "-".to_owned()
            } else {
                format!("{:.1} µs", p.backend_us_per_op)
            },
            yes(p.correct())
        );
    }
    for c in &run.proxy_costs {
        let what = if c.versus_none { "added by the proxy, against no proxy" } else { "the whole call" };
        let _ = writeln!(
            o,
            "| ({} proxy, {:?} at {}/s: {what}) | gateways {:+.1} µs, hub {:+.1} µs, backend {:.1} µs CPU per call; p50 {:+.2} ms, p99 {:+.2} ms | |",
            c.proxy.name(),
            c.op,
            thousands(c.rate),
            c.gateways_us_per_call,
            c.hub_us_per_call,
            c.backend_us_per_call,
            c.p50_ms,
            c.p99_ms
        );
    }
}

/// p50/p99/max, delivered, and everything that went wrong, in one cell.
fn client_figures(p: &ClientPhase) -> String {
    let mut t = format!(
        "p50 {:.2} ms, p99 {:.2} ms, max {:.1} ms; {}/s delivered, lost {}",
        p.latency_ms.p50,
        p.latency_ms.p99,
        p.latency_ms.max,
        thousands(p.delivered_rate),
        p.lost
    );
    for (n, what) in [
        (p.duplicates, "duplicated"),
        (p.misdelivered, "misdelivered"),
        (p.out_of_order, "out of order"),
        (p.op_errors, "refused"),
        (p.unanswered, "unanswered"),
    ] {
        if n > 0 {
            let _ = write!(t, ", **{n} {what}**");
        }
    }
    t
}

/// 12345.6 → "12,346".
fn thousands(v: f64) -> String {
    let digits = format!("{:.0}", v.abs());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if v < -0.5 { format!("-{out}") } else { out }
}

#[cfg(test)]
mod tests {
    #[test]
    fn thousands_are_separated() {
        assert_eq!(super::thousands(15937.5), "15,938");
        assert_eq!(super::thousands(1000.0), "1,000");
        assert_eq!(super::thousands(999.0), "999");
        assert_eq!(super::thousands(1_234_567.0), "1,234,567");
    }
}
