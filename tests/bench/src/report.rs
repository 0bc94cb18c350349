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
