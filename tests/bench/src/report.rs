//! Results: the structures written as JSON, and the terminal table.

use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::cluster::Usage;

#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Latency {
    /// Quantiles of a histogram of microseconds, in milliseconds.
    pub fn from_us(h: &hdrhistogram::Histogram<u64>) -> Latency {
        let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        Latency { p50: ms(0.5), p90: ms(0.9), p99: ms(0.99), p999: ms(0.999), max: h.max() as f64 / 1000.0 }
    }
}

/// One phase: a rate, held for a while, and what arrived.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseResult {
    pub config: String,
    pub system: String,
    pub connections: usize,
    pub gateways: usize,
    /// Deliveries per second asked for (publishes/s × receivers).
    pub offered_rate: f64,
    pub publishes: u64,
    pub publish_rate: f64,
    pub duration_s: f64,
    /// Deliveries owed: accepted publishes × receivers.
    pub expected: u64,
    /// Distinct deliveries received.
    pub delivered: u64,
    pub lost: u64,
    pub duplicates: u64,
    /// Deliveries of an earlier phase's messages that arrived in this one.
    pub stray: u64,
    pub publish_errors: u64,
    pub publish_first_error: Option<String>,
    pub publisher_max_lag_ms: f64,
    /// Clients the server closed (e.g. as slow consumers) during the phase.
    pub disconnected: u64,
    /// Distinct deliveries over the time from the first scheduled publish
    /// to the last delivery.
    pub delivered_rate: f64,
    /// End to end: scheduled publish time → the client read the frame.
    pub latency_ms: Latency,
    /// RSS at the end, CPU seconds during the phase, per process.
    pub usage: Vec<Usage>,
    /// CPU seconds the machine spent on anything but the processes above
    /// (the publisher in this tool, other users of the machine): a large
    /// value means the figures were disturbed.
    pub other_cpu_s: f64,
    /// CPU microseconds the delivering processes (gateways, or the ceiling)
    /// spent per delivery: less sensitive to a busy machine than latency.
    pub server_us_per_delivery: f64,
    pub pass: bool,
}

impl PhaseResult {
    /// Sustained: p99 within the bound, nothing lost or doubled, every
    /// publish accepted, and the delivered rate kept up with the offered one.
    pub fn passes(&self, max_p99_ms: f64) -> bool {
        self.latency_ms.p99 <= max_p99_ms
            && self.lost == 0
            && self.duplicates == 0
            && self.publish_errors == 0
            && self.delivered_rate >= 0.9 * self.offered_rate
    }

    pub fn cpu(&self, prefix: &str) -> f64 {
        self.usage.iter().filter(|u| u.name.starts_with(prefix)).map(|u| u.cpu_s).sum::<f64>() + 0.0
    }
}

/// A sweep (or a single fixed phase) of one system.
#[derive(Debug, Clone, Serialize)]
pub struct SweepResult {
    pub config: String,
    pub system: String,
    /// Delivered rate of the best passing phase.
    pub max_rate: Option<f64>,
    pub best: Option<PhaseResult>,
    pub steps: Vec<PhaseResult>,
}

impl SweepResult {
    pub fn single(p: PhaseResult) -> Self {
        SweepResult {
            config: p.config.clone(),
            system: p.system.clone(),
            max_rate: p.pass.then_some(p.delivered_rate),
            best: p.pass.then(|| p.clone()),
            steps: vec![p],
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ConnectResult {
    pub connections: usize,
    pub gateways: usize,
    pub secs: f64,
    pub rate: f64,
    pub rate_per_gateway: f64,
    /// Slowest single connect (TCP, upgrade, welcome), and how many took over 500 ms.
    pub max_ms: f64,
    pub slow: usize,
    /// Connect attempts that failed and were tried again.
    pub retried: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct IdleResult {
    pub config: String,
    pub connect: ConnectResult,
    pub gateway_rss_before_mib: f64,
    pub gateway_rss_after_mib: f64,
    pub rss_per_connection_bytes: f64,
    pub broadcast: Option<PhaseResult>,
}

pub fn write_json<T: Serialize>(path: &Path, v: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(v)?;
    std::fs::write(path, text).with_context(|| format!("write {}", path.display()))
}

pub fn print_header() {
    eprintln!(
        "{:<30} {:<24} {:>10} {:>10} {:>8} {:>8} {:>8} {:>8} {:>7} {:>5} {:>6} {:>6} {:>6} {:>6} {:>6}  pass",
        "configuration",
        "system",
        "offered/s",
        "deliv/s",
        "p50 ms",
        "p99 ms",
        "p99.9",
        "max ms",
        "lost",
        "dup",
        "srvCPU",
        "µs/dl",
        "hubCPU",
        "cliCPU",
        "other",
    );
}

pub fn print_row(r: &PhaseResult) {
    let server_cpu = if r.system == "pushmesh" { r.cpu("gw-") } else { r.cpu("ceiling-") };
    eprintln!(
        "{:<30} {:<24} {:>10.0} {:>10.0} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>7} {:>5} {:>6.2} {:>6.2} {:>6.2} {:>6.2} {:>6.2}  {}{}",
        truncate(&r.config, 30),
        truncate(&r.system, 24),
        r.offered_rate,
        r.delivered_rate,
        r.latency_ms.p50,
        r.latency_ms.p99,
        r.latency_ms.p999,
        r.latency_ms.max,
        r.lost,
        r.duplicates,
        server_cpu,
        r.server_us_per_delivery,
        r.cpu("hub"),
        r.cpu("worker-"),
        r.other_cpu_s,
        if r.pass { "yes" } else { "no" },
        match (&r.publish_first_error, r.disconnected) {
            (Some(e), _) => format!("  publish errors {}: {}", r.publish_errors, truncate(e, 80)),
            (None, d) if d > 0 => format!("  {d} clients closed by the server"),
            _ => String::new(),
        }
    );
}

/// pushmesh's best rate as a fraction of each ceiling's.
pub fn print_ratios(results: &[SweepResult]) {
    let Some(pm) = results.iter().find(|r| r.system == "pushmesh") else { return };
    for c in results.iter().filter(|r| r.system != "pushmesh") {
        match (pm.max_rate, c.max_rate) {
            (Some(p), Some(m)) => eprintln!(
                "{}: pushmesh {:.0}/s = {:.0}% of the ceiling ({}) {:.0}/s",
                pm.config,
                p,
                100.0 * p / m,
                c.system,
                m
            ),
            _ => eprintln!("{}: no passing rate for pushmesh or {} (see the rows above)", pm.config, c.system),
        }
    }
}

/// pushmesh's best rate over a ceiling's, when both passed somewhere.
pub fn ratio(results: &[SweepResult], ceiling_system: &str) -> Option<f64> {
    let pm = results.iter().find(|r| r.system == "pushmesh")?.max_rate?;
    let c = results.iter().find(|r| r.system == ceiling_system)?.max_rate?;
    Some(pm / c)
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n { s.to_owned() } else { s.chars().take(n - 1).collect::<String>() + "…" }
}

// ---- targeted workloads (unicast, channels, bulk) ---------------------------

/// One phase of a targeted workload: a rate of messages, each for one
/// client (or one channel's subscribers), and what arrived where.
#[derive(Debug, Clone, Serialize)]
pub struct MsgPhase {
    pub config: String,
    pub workload: crate::targeted::Workload,
    pub system: String,
    /// How messages were asked for: send, seed, publish, batch.
    pub form: String,
    /// lean or reqwest.
    pub publisher: String,
    pub arrivals: crate::loadgen::Arrivals,
    pub connections: usize,
    pub gateways: usize,
    pub channels: Option<usize>,
    /// Messages per HTTP request (1 but for bulk).
    pub per_request: u64,
    pub payload_bytes: usize,
    /// Messages per second asked for.
    pub offered_rate: f64,
    pub duration_s: f64,
    pub messages: u64,
    pub requests: u64,
    /// Messages the system accepted.
    pub accepted: u64,
    pub publish_errors: u64,
    pub publish_first_error: Option<String>,
    /// Deliveries owed: Σ over accepted messages of their receivers.
    pub expected: u64,
    /// Distinct deliveries to the right client.
    pub delivered: u64,
    pub lost: u64,
    pub duplicates: u64,
    /// Deliveries to a client the message was not for.
    pub misdelivered: u64,
    /// Channel messages whose offset did not rise on a connection.
    pub out_of_order: u64,
    /// Deliveries of an earlier phase's messages that arrived in this one.
    pub stray: u64,
    /// Clients closed by the server during the phase.
    pub disconnected: u64,
    /// Deliveries per second the schedule asked for.
    pub offered_delivery_rate: f64,
    /// Distinct deliveries / (last delivery − first scheduled message).
    pub delivered_rate: f64,
    /// Scheduled send time → the client read the frame.
    pub latency_ms: Latency,
    /// CPU µs per message over the system's processes (pushmesh: hub,
    /// gateways and ingress; the ceiling: its one process).
    pub system_us_per_message: f64,
    /// The same per process.
    pub us_per_message: Vec<(String, f64)>,
    /// The benchmark process's CPU (the publisher) per HTTP request, and in
    /// cores over the schedule: near 1 means the load generator was the limit.
    pub publisher_us_per_request: f64,
    pub publisher_cores: f64,
    /// The client workers' CPU per delivery.
    pub workers_us_per_delivery: f64,
    /// What the load generator saw (lag behind its schedule, connections).
    pub generator: crate::loadgen::Outcome,
    pub usage: Vec<Usage>,
    /// CPU seconds the machine spent on anything but the processes above.
    pub other_cpu_s: f64,
    pub pass: bool,
}

impl MsgPhase {
    /// Every message accepted reached exactly its receivers, in order.
    pub fn correct(&self) -> bool {
        self.lost == 0
            && self.duplicates == 0
            && self.misdelivered == 0
            && self.out_of_order == 0
            && self.publish_errors == 0
            && self.expected > 0
    }

    /// Sustained: correct, p99 within the bound, and deliveries kept up
    /// with the schedule.
    pub fn passes(&self, max_p99_ms: f64) -> bool {
        self.correct() && self.latency_ms.p99 <= max_p99_ms && self.delivered_rate >= 0.9 * self.offered_delivery_rate
    }

    /// CPU µs per message of processes named `prefix…`.
    pub fn us(&self, prefix: &str) -> f64 {
        self.us_per_message.iter().filter(|(n, _)| n.starts_with(prefix)).map(|(_, v)| v).sum::<f64>() + 0.0
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct MsgSweep {
    pub config: String,
    pub system: String,
    /// Offered rate (messages/s) of the best passing phase.
    pub max_rate: Option<f64>,
    pub best: Option<MsgPhase>,
    pub steps: Vec<MsgPhase>,
}

/// pushmesh's figure over the ceiling's.
#[derive(Debug, Clone, Serialize)]
pub struct MsgRatio {
    pub what: String,
    pub pushmesh: f64,
    pub ceiling: f64,
    pub ratio: f64,
}

/// A targeted workload on pushmesh and on the per-message ceiling.
#[derive(Debug, Clone, Serialize)]
pub struct MsgRun {
    pub workload: crate::targeted::Workload,
    pub config: String,
    /// Fixed-rate phases, pushmesh's then the ceiling's.
    pub fixed: Vec<MsgPhase>,
    pub sweeps: Vec<MsgSweep>,
    pub ratios: Vec<MsgRatio>,
}

impl Default for MsgRun {
    fn default() -> Self {
        MsgRun {
            workload: crate::targeted::Workload::Unicast,
            config: String::new(),
            fixed: Vec::new(),
            sweeps: Vec::new(),
            ratios: Vec::new(),
        }
    }
}

impl MsgRun {
    pub fn fixed_at(&self, system: &str, rate: f64) -> Option<&MsgPhase> {
        self.fixed.iter().find(|p| p.system == system && p.offered_rate == rate)
    }

    pub fn sweep_of(&self, system: &str) -> Option<&MsgSweep> {
        self.sweeps.iter().find(|s| s.system == system)
    }
}

pub fn print_msg_header() {
    eprintln!(
        "{:<38} {:<10} {:>9} {:>9} {:>7} {:>7} {:>7} {:>7} {:>6} {:>4} {:>5} {:>5} {:>5} {:>7} {:>6} {:>6} {:>6} {:>7} {:>6} {:>5}  pass",
        "configuration",
        "system",
        "msgs/s",
        "deliv/s",
        "p50 ms",
        "p99 ms",
        "p99.9",
        "max ms",
        "lost",
        "dup",
        "misdl",
        "order",
        "err",
        "sysµs/m",
        "ingr",
        "hub",
        "gws",
        "pubµs/r",
        "lag99",
        "other",
    );
}

pub fn print_msg_row(r: &MsgPhase) {
    let sys = if r.system == "pushmesh" { "pushmesh" } else { "ceiling" };
    eprintln!(
        "{:<38} {:<10} {:>9.0} {:>9.0} {:>7.2} {:>7.2} {:>7.2} {:>7.2} {:>6} {:>4} {:>5} {:>5} {:>5} {:>7.1} {:>6.1} {:>6.1} {:>6.1} {:>7.1} {:>6.2} {:>5.1}  {}{}",
        truncate(&r.config, 38),
        sys,
        r.offered_rate,
        r.delivered_rate,
        r.latency_ms.p50,
        r.latency_ms.p99,
        r.latency_ms.p999,
        r.latency_ms.max,
        r.lost,
        r.duplicates,
        r.misdelivered,
        r.out_of_order,
        r.publish_errors,
        r.system_us_per_message,
        r.us("ingress"),
        r.us("hub"),
        r.us("gw-"),
        r.publisher_us_per_request,
        r.generator.lag_p99_ms,
        r.other_cpu_s,
        if r.pass { "yes" } else { "no" },
        match (&r.publish_first_error, r.disconnected) {
            (Some(e), _) => format!("  publish errors {}: {}", r.publish_errors, truncate(e, 100)),
            (None, d) if d > 0 => format!("  {d} clients closed by the server"),
            _ => String::new(),
        }
    );
}

pub fn print_msg_ratios(run: &MsgRun) {
    for r in &run.ratios {
        eprintln!(
            "{}: {}: pushmesh {:.2} / ceiling {:.2} = {:.2}×",
            run.config, r.what, r.pushmesh, r.ceiling, r.ratio
        );
    }
    for s in &run.sweeps {
        match &s.best {
            Some(b) => eprintln!(
                "{}: {} sustains {:.0} messages/s (p99 {:.2} ms, nothing lost)",
                s.config, s.system, b.offered_rate, b.latency_ms.p99
            ),
            None => eprintln!("{}: {}: no rate passed", s.config, s.system),
        }
    }
}
