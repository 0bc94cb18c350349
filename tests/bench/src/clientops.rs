//! Client ops over the WebSocket (issue 15): what a client publish costs
//! from the publishing client to every subscriber, and what the gateway's
//! backend proxy adds per call.
//!
//! - **publish**: N clients over G gateways, client g subscribed to channel
//!   `bench:{g mod C}` of a namespace that allows client publish. Every
//!   `stride`th client is a publisher; op `seq` is written by one of them
//!   (chosen by the spread's high bits) as `{"op":"publish"}` to channel
//!   `spread(seq) mod C` (publishers need not be members), at its
//!   scheduled time on an open-loop schedule of R ops/s over all
//!   publishers, with that time in its data. Every subscriber of the
//!   channel must receive it once, in offset order; the publish reply must
//!   be `ok` (a hub took it).
//! - **rpc**: the same publishers write `{"op":"rpc","method":"echo"}`; the
//!   backend echoes the data and the reply must bring it back to the caller
//!   (`c` = the caller's number): round-trip latency.
//!
//! `--proxy none|http|grpc` runs the same phases with the namespace's
//! `proxy_publish` off, or on against the benchmark's own minimal backend
//! (`proxybackend`: allows every publish unchanged, echoes every rpc) over
//! HTTP or gRPC. The backend is a process of its own, so its CPU is
//! reported apart; the difference between the `none` row and an
//! `http`/`grpc` row at the same rate is the proxy's cost per call
//! (gateway CPU, backend CPU, latency), printed after the table.
//!
//! Latency runs from the op's scheduled time to the frame read by the
//! subscriber (or the caller), so a late writer shows up as latency (no
//! coordinated omission). The gateways run with
//! `--client-commands-per-sec=0`: the per-client command budget is a
//! policy, not a cost.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Result, bail};
use serde::Serialize;

use crate::cluster::{self, Cluster, Proc, Usage};
use crate::fleet::Fleet;
use crate::procstat;
use crate::proxybackend::ProxyKind;
use crate::report::Latency;
use crate::scenario::Env;
use crate::wire;
use crate::worker::{ChannelSpread, Expect, Load, LoadOp};

/// The namespace the benchmark's channels live in.
const PREFIX: &str = "bench:";

#[derive(Debug, Clone, clap::Args)]
pub struct ClientArgs {
    /// WebSocket clients.
    #[arg(long, default_value_t = 4_000)]
    pub connections: usize,
    #[arg(long, default_value_t = 2)]
    pub gateways: usize,
    /// Client worker processes, at least.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Ops per second over all publishing clients; a comma-separated list
    /// runs one phase per rate.
    #[arg(long, value_delimiter = ',', default_value = "2000")]
    pub rate: Vec<f64>,
    /// Seconds of ops per phase.
    #[arg(long, default_value_t = 5.0)]
    pub duration: f64,
    /// Bytes of each op's data (JSON text, padded).
    #[arg(long, default_value_t = 64)]
    pub payload_bytes: usize,
    /// What the clients send.
    #[arg(long, value_enum, default_value = "publish")]
    pub op: LoadOp,
    /// Backend proxy transports, one run each (comma-separated; default:
    /// none,http,grpc for publish, http,grpc for rpc, which needs a backend).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub proxy: Vec<ProxyKind>,
    /// Channels (publish): client g subscribes to `bench:{g mod channels}`.
    #[arg(long, default_value_t = 400)]
    pub channels: usize,
    /// Clients that write ops (every connections/publishers-th client).
    #[arg(long, default_value_t = 400)]
    pub publishers: usize,
    /// A phase passes when its p99 is at most this and everything was
    /// delivered exactly once.
    #[arg(long, default_value_t = 50.0)]
    pub max_p99_ms: f64,
    /// Runtime threads of the benchmark's backend.
    #[arg(long, default_value_t = 2)]
    pub backend_threads: usize,
    /// Extra argument for every ws-gateway (repeatable).
    #[arg(long = "gateway-arg", allow_hyphen_values = true)]
    pub gateway_args: Vec<String>,
    /// Connection attempts in flight per worker process while connecting.
    #[arg(long, default_value_t = 128)]
    pub connect_concurrency: usize,
    /// Name for this configuration in tables.
    #[arg(long)]
    pub label: Option<String>,
}

impl ClientArgs {
    pub fn defaults(op: LoadOp) -> ClientArgs {
        ClientArgs {
            connections: 4_000,
            gateways: 2,
            workers: 2,
            rate: vec![2_000.0],
            duration: 5.0,
            payload_bytes: 64,
            op,
            proxy: Vec::new(),
            channels: 400,
            publishers: 400,
            max_p99_ms: 50.0,
            backend_threads: 2,
            gateway_args: Vec::new(),
            connect_concurrency: 128,
            label: None,
        }
    }

    /// The proxy settings to run: as given, or every one the op allows.
    fn proxies(&self) -> Vec<ProxyKind> {
        match (self.proxy.is_empty(), self.op) {
            (false, _) => self.proxy.clone(),
            (true, LoadOp::Publish) => vec![ProxyKind::None, ProxyKind::Http, ProxyKind::Grpc],
            (true, LoadOp::Rpc) => vec![ProxyKind::Http, ProxyKind::Grpc],
        }
    }

    fn config_label(&self) -> String {
        self.label.clone().unwrap_or_else(|| match self.op {
            LoadOp::Publish => format!(
                "publish {}c/{}gw, {} ch, {} pub",
                self.connections, self.gateways, self.channels, self.publishers
            ),
            LoadOp::Rpc => format!("rpc {}c/{}gw, {} callers", self.connections, self.gateways, self.publishers),
        })
    }
}

/// One phase: R ops/s through one proxy setting, and what arrived where.
#[derive(Debug, Clone, Serialize)]
pub struct ClientPhase {
    pub config: String,
    pub op: LoadOp,
    pub proxy: ProxyKind,
    pub connections: usize,
    pub gateways: usize,
    pub channels: Option<usize>,
    pub publishers: usize,
    pub payload_bytes: usize,
    /// Ops per second asked for.
    pub offered_rate: f64,
    pub duration_s: f64,
    /// Ops scheduled, written by the clients, and not written (client not
    /// open, socket failed).
    pub ops: u64,
    pub written: u64,
    pub write_failed: u64,
    /// Ops answered `ok` (publish: a hub took it; rpc: the backend answered).
    pub accepted: u64,
    /// Ops answered with an error, and the first such reply.
    pub op_errors: u64,
    pub first_op_error: Option<String>,
    /// Ops written that got no reply at all.
    pub unanswered: u64,
    /// Backend calls of the op's kind the gateways counted `ok` in the
    /// phase (`pushmesh_gateway_proxy_requests_total`): every op with a
    /// proxy, none without.
    pub proxied: u64,
    /// Deliveries owed: publish, Σ over accepted ops of the channel's
    /// subscribers; rpc, one reply per accepted call.
    pub expected: u64,
    pub delivered: u64,
    pub lost: u64,
    pub duplicates: u64,
    pub misdelivered: u64,
    pub out_of_order: u64,
    pub stray: u64,
    pub disconnected: u64,
    pub offered_delivery_rate: f64,
    pub delivered_rate: f64,
    /// Scheduled time → the subscriber (publish) or the caller (rpc) read it.
    pub latency_ms: Latency,
    /// CPU µs per op over pushmesh's processes (hub, gateways, ingress).
    pub pushmesh_us_per_op: f64,
    /// The same per process, the backend included.
    pub us_per_op: Vec<(String, f64)>,
    /// The benchmark's backend's CPU per op (0 with no proxy).
    pub backend_us_per_op: f64,
    pub workers_us_per_delivery: f64,
    /// The most an op was written after its scheduled time.
    pub writer_late_max_ms: f64,
    pub usage: Vec<Usage>,
    /// CPU seconds the machine spent on anything but the processes above.
    pub other_cpu_s: f64,
    pub pass: bool,
}

impl ClientPhase {
    /// Every op was written and accepted, and reached exactly its receivers, in order.
    pub fn correct(&self) -> bool {
        self.lost == 0
            && self.duplicates == 0
            && self.misdelivered == 0
            && self.out_of_order == 0
            && self.op_errors == 0
            && self.unanswered == 0
            && self.write_failed == 0
            && self.accepted == self.ops
            && self.proxied == if self.proxy == ProxyKind::None { 0 } else { self.ops }
            && self.expected > 0
    }

    pub fn passes(&self, max_p99_ms: f64) -> bool {
        self.correct() && self.latency_ms.p99 <= max_p99_ms && self.delivered_rate >= 0.9 * self.offered_delivery_rate
    }

    /// CPU µs per op of processes named `prefix…`.
    pub fn us(&self, prefix: &str) -> f64 {
        self.us_per_op.iter().filter(|(n, _)| n.starts_with(prefix)).map(|(_, v)| v).sum::<f64>() + 0.0
    }
}

/// What the proxy adds per call at one rate: for publish, an `http`/`grpc`
/// phase minus the `none` phase; for rpc (which needs a backend), the
/// call's whole cost.
#[derive(Debug, Clone, Serialize)]
pub struct ProxyCost {
    pub op: LoadOp,
    pub proxy: ProxyKind,
    pub rate: f64,
    /// Whether the figures are differences from the `none` phase.
    pub versus_none: bool,
    pub gateways_us_per_call: f64,
    pub hub_us_per_call: f64,
    pub backend_us_per_call: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ClientRun {
    pub op: LoadOp,
    pub config: String,
    pub phases: Vec<ClientPhase>,
    pub proxy_costs: Vec<ProxyCost>,
}

impl ClientRun {
    pub fn phase(&self, proxy: ProxyKind, rate: f64) -> Option<&ClientPhase> {
        self.phases.iter().find(|p| p.proxy == proxy && p.offered_rate == rate)
    }
}

/// The benchmark's backend, started like a service (it announces its address).
async fn start_backend(env: &Env, kind: ProxyKind, threads: usize) -> Result<Proc> {
    let exe = std::env::current_exe()?;
    let args =
        ["proxy-backend".to_owned(), "--kind".to_owned(), kind.name().to_owned(), format!("--threads={threads}")];
    cluster::start(&exe, "backend", &args, &env.out.join("logs")).await
}

/// The gateways' namespaces file (docs/proxy.md) for `proxy`: client
/// publish in `bench:`, proxied when there is a backend; rpc on.
fn write_namespaces(env: &Env, proxy: ProxyKind, backend: Option<&Proc>) -> Result<PathBuf> {
    let mut toml = String::new();
    if let Some(b) = backend {
        let endpoint = match proxy {
            ProxyKind::Http => format!("http://{}/pushmesh", b.addr("http")),
            ProxyKind::Grpc => format!("grpc://{}", b.addr("grpc")),
            ProxyKind::None => bail!("no backend without a proxy"),
        };
        // Generous limits: the benchmark measures the proxy's cost, not
        // its fences (a refusal would count as an error anyway).
        toml.push_str(&format!(
            "[proxy]\nendpoint = \"{endpoint}\"\ntimeout_ms = 10000\nmax_in_flight = 100000\nrpc = true\nretries = 0\n\n"
        ));
    }
    toml.push_str(&format!(
        "[[namespace]]\nprefix = \"{PREFIX}\"\nclient_publish = true\nproxy_publish = {}\n",
        backend.is_some()
    ));
    let path = std::path::absolute(env.out.join(format!("namespaces-{}.toml", proxy.name())))?;
    std::fs::write(&path, toml)?;
    Ok(path)
}

pub async fn run(env: &Env, a: &ClientArgs) -> Result<ClientRun> {
    let proxies = a.proxies();
    if a.op == LoadOp::Rpc && proxies.contains(&ProxyKind::None) {
        bail!("--op rpc needs a backend: --proxy http, grpc or both (not none)");
    }
    if a.connections == 0 || a.rate.is_empty() || a.rate.iter().any(|r| *r <= 0.0) {
        bail!("--connections and every --rate must be positive");
    }
    let publishers = a.publishers.clamp(1, a.connections);
    let stride = a.connections / publishers;
    let mut run = ClientRun { op: a.op, config: a.config_label(), phases: Vec::new(), proxy_costs: Vec::new() };
    let mut seq = 1;
    print_header();
    for proxy in proxies {
        let backend = match proxy {
            ProxyKind::None => None,
            k => Some(start_backend(env, k, a.backend_threads).await?),
        };
        let ns = write_namespaces(env, proxy, backend.as_ref())?;
        let mut gateway_args = vec![format!("--namespaces={}", ns.display()), "--client-commands-per-sec=0".to_owned()];
        gateway_args.extend(a.gateway_args.iter().cloned());
        let cluster = Cluster::start_with(env, a.gateways, &gateway_args, &[], &[]).await?;
        let spread =
            (a.op == LoadOp::Publish).then(|| ChannelSpread { prefix: PREFIX.to_owned(), count: a.channels.max(1) });
        let fleet = Fleet::spawn_spread(
            a.connections,
            a.workers,
            a.connect_concurrency,
            &cluster.gateway_addrs(),
            None,
            spread,
            12,
        )
        .await?;
        let http = crate::publisher::client();
        let mut ctx =
            Ctx { cluster: &cluster, http, backend: backend.as_ref(), fleet, args: a, proxy, publishers, stride };
        ctx.connect().await?;
        for &rate in &a.rate {
            run.phases.push(ctx.phase(rate, &mut seq).await?);
        }
    }
    run.proxy_costs = proxy_costs(&run);
    print_costs(&run);
    Ok(run)
}

struct Ctx<'a> {
    cluster: &'a Cluster,
    http: reqwest::Client,
    backend: Option<&'a Proc>,
    fleet: Fleet,
    args: &'a ClientArgs,
    proxy: ProxyKind,
    publishers: usize,
    stride: usize,
}

impl Ctx<'_> {
    async fn connect(&mut self) -> Result<()> {
        let c = self.fleet.connect().await?;
        eprintln!(
            "proxy {}: {} clients connected in {:.2} s ({:.0}/s)",
            self.proxy.name(),
            c.open,
            c.secs,
            c.open as f64 / c.secs.max(1e-9)
        );
        Ok(())
    }

    /// Receivers of op `seq` under `load`.
    fn receivers(&self, load: &Load, seq: u64) -> u64 {
        match load.kind {
            LoadOp::Publish => {
                let (n, k) = (self.args.connections, load.channels);
                let ch = load.channel(seq);
                (n / k + usize::from(ch < n % k)) as u64
            }
            LoadOp::Rpc => 1,
        }
    }

    /// The system's processes, the backend, the workers and this process.
    fn samples(&self) -> Vec<(String, procstat::Sample)> {
        let mut v = self.cluster.sample();
        if let Some(b) = self.backend {
            v.push(("backend".to_owned(), procstat::sample(b.pid_or_zero()).unwrap_or_default()));
        }
        v.extend(
            self.fleet
                .pids()
                .iter()
                .enumerate()
                .map(|(i, p)| (format!("worker-{i}"), procstat::sample(*p).unwrap_or_default())),
        );
        v.push(("bench".to_owned(), procstat::sample(std::process::id()).unwrap_or_default()));
        v
    }

    /// `ok` backend calls of the op's kind, over the gateways' /metrics.
    async fn proxied_ok(&self) -> Result<u64> {
        let kind = match self.args.op {
            LoadOp::Publish => "publish",
            LoadOp::Rpc => "rpc",
        };
        let series = format!(r#"pushmesh_gateway_proxy_requests_total{{kind="{kind}",outcome="ok"}} "#);
        let mut total = 0;
        for addr in self.cluster.gateway_addrs() {
            let text = self.http.get(format!("http://{addr}/metrics")).send().await?.error_for_status()?.text().await?;
            total += text
                .lines()
                .find_map(|l| l.strip_prefix(&series))
                .and_then(|v| v.trim().parse::<f64>().ok())
                .unwrap_or(0.0) as u64;
        }
        Ok(total)
    }

    async fn phase(&mut self, rate: f64, seq: &mut u64) -> Result<ClientPhase> {
        let a = self.args;
        let (_, open) = self.fleet.progress().await?;
        if open < a.connections {
            // Clients an overloaded phase lost come back.
            self.connect().await?;
        }
        let ops = ((rate * a.duration).round() as u64).max(1);
        let first = *seq;
        *seq += ops;
        let expect = match a.op {
            LoadOp::Publish => Expect::Channel,
            LoadOp::Rpc => Expect::Client,
        };
        self.fleet.phase_expecting(first, ops, expect).await?;
        let load = Load {
            first,
            count: ops,
            per_sec: rate,
            // Time for every worker to get the command before op one is due.
            start_ns: wire::now_ns() + 200_000_000,
            kind: a.op,
            publishers: self.publishers,
            stride: self.stride,
            channels: a.channels.max(1),
            prefix: PREFIX.to_owned(),
            size: a.payload_bytes,
        };
        let owed_if_all: u64 = (first..first + ops).map(|s| self.receivers(&load, s)).sum();
        let proxied0 = self.proxied_ok().await?;
        let before = self.samples();
        let machine0 = procstat::machine_busy_s();
        let loaded = self.fleet.load(&load).await?;
        // Wait for the stragglers: until everything arrived, or nothing more
        // arrives for 2 s (10 s at most).
        let mut last = (0, tokio::time::Instant::now());
        let give_up = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let (unique, _) = self.fleet.progress().await?;
            if unique >= owed_if_all || tokio::time::Instant::now() > give_up {
                break;
            }
            if unique != last.0 {
                last = (unique, tokio::time::Instant::now());
            } else if last.1.elapsed() > Duration::from_secs(2) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let after = self.samples();
        let machine_cpu = procstat::machine_busy_s() - machine0;
        let proxied = self.proxied_ok().await?.saturating_sub(proxied0);
        let m = self.fleet.report().await?;
        let (mut accepted, mut expected, mut lost) = (0u64, 0u64, 0u64);
        for i in 0..ops as usize {
            if m.accepted.get(i / 64).is_some_and(|w| (w >> (i % 64)) & 1 == 1) {
                let r = self.receivers(&load, first + i as u64);
                accepted += 1;
                expected += r;
                lost += r.saturating_sub(m.counts.get(i).copied().unwrap_or(0));
            }
        }
        let usage = cluster::usage(&before, &after);
        let cpu = |f: &dyn Fn(&str) -> bool| usage.iter().filter(|u| f(&u.name)).map(|u| u.cpu_s).sum::<f64>();
        let is_pushmesh = |n: &str| n == "hub" || n == "ingress" || n.starts_with("gw-");
        let per_op = |s: f64| s * 1e6 / ops as f64;
        let schedule_s = ops as f64 / rate;
        let span_s = (m.last_recv_ns.saturating_sub(load.start_ns) as f64 / 1e9).max(schedule_s);
        let h = &m.hist;
        let mut r = ClientPhase {
            config: a.config_label(),
            op: a.op,
            proxy: self.proxy,
            connections: a.connections,
            gateways: a.gateways,
            channels: (a.op == LoadOp::Publish).then_some(load.channels),
            publishers: self.publishers,
            payload_bytes: a.payload_bytes,
            offered_rate: rate,
            duration_s: a.duration,
            ops,
            written: loaded.written,
            write_failed: loaded.failed,
            accepted,
            op_errors: m.op_errors,
            first_op_error: m.first_op_error.clone(),
            unanswered: loaded.written.saturating_sub(m.op_ok + m.op_errors),
            proxied,
            expected,
            delivered: m.unique,
            lost,
            duplicates: m.duplicates,
            misdelivered: m.misdelivered,
            out_of_order: m.out_of_order,
            stray: m.stray,
            disconnected: m.closed,
            offered_delivery_rate: expected as f64 / schedule_s,
            delivered_rate: m.unique as f64 / span_s,
            latency_ms: Latency::from_us(h),
            pushmesh_us_per_op: per_op(cpu(&is_pushmesh)),
            us_per_op: usage
                .iter()
                .filter(|u| is_pushmesh(&u.name) || u.name == "backend")
                .map(|u| (u.name.clone(), per_op(u.cpu_s)))
                .collect(),
            backend_us_per_op: per_op(cpu(&|n| n == "backend")),
            workers_us_per_delivery: cpu(&|n| n.starts_with("worker-")) * 1e6 / m.unique.max(1) as f64,
            writer_late_max_ms: loaded.late_max_ms,
            usage,
            other_cpu_s: 0.0,
            pass: false,
        };
        r.other_cpu_s = (machine_cpu - r.usage.iter().map(|u| u.cpu_s).sum::<f64>()).max(0.0);
        r.pass = r.passes(a.max_p99_ms);
        print_row(&r);
        // Let queues empty before the next phase.
        tokio::time::sleep(Duration::from_millis(500)).await;
        Ok(r)
    }
}

/// Per proxied phase, what the proxy costs per call (see [`ProxyCost`]).
fn proxy_costs(run: &ClientRun) -> Vec<ProxyCost> {
    let mut out = Vec::new();
    for p in run.phases.iter().filter(|p| p.proxy != ProxyKind::None) {
        let base = run.phase(ProxyKind::None, p.offered_rate);
        let (gw, hub, p50, p99) = match base {
            Some(b) => (
                p.us("gw-") - b.us("gw-"),
                p.us("hub") - b.us("hub"),
                p.latency_ms.p50 - b.latency_ms.p50,
                p.latency_ms.p99 - b.latency_ms.p99,
            ),
            None => (p.us("gw-"), p.us("hub"), p.latency_ms.p50, p.latency_ms.p99),
        };
        out.push(ProxyCost {
            op: p.op,
            proxy: p.proxy,
            rate: p.offered_rate,
            versus_none: base.is_some(),
            gateways_us_per_call: gw,
            hub_us_per_call: hub,
            backend_us_per_call: p.backend_us_per_op,
            p50_ms: p50,
            p99_ms: p99,
        });
    }
    out
}

pub fn print_header() {
    eprintln!(
        "{:<34} {:<5} {:>7} {:>8} {:>7} {:>7} {:>7} {:>7} {:>5} {:>4} {:>5} {:>5} {:>4} {:>5} {:>6} {:>6} {:>6} {:>6} {:>6}  pass",
        "configuration",
        "proxy",
        "ops/s",
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
        "unans",
        "pmµs",
        "hub",
        "gws",
        "backnd",
        "late",
    );
}

pub fn print_row(r: &ClientPhase) {
    eprintln!(
        "{:<34} {:<5} {:>7.0} {:>8.0} {:>7.2} {:>7.2} {:>7.2} {:>7.2} {:>5} {:>4} {:>5} {:>5} {:>4} {:>5} {:>6.1} {:>6.1} {:>6.1} {:>6} {:>6.1}  {}{}",
        r.config,
        r.proxy.name(),
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
        r.op_errors,
        r.unanswered,
        r.pushmesh_us_per_op,
        r.us("hub"),
        r.us("gw-"),
        if r.proxy == ProxyKind::None { "-".to_owned() } else { format!("{:.1}", r.backend_us_per_op) },
        r.writer_late_max_ms,
        if r.pass { "yes" } else { "no" },
        match (&r.first_op_error, r.write_failed, r.disconnected) {
            (Some(e), _, _) => format!("  {} errors, first: {e}", r.op_errors),
            _ if r.proxied != if r.proxy == ProxyKind::None { 0 } else { r.ops } => {
                format!("  the gateways counted {} backend calls for {} ops", r.proxied, r.ops)
            }
            (None, f, _) if f > 0 => format!("  {f} ops could not be written"),
            (None, _, d) if d > 0 => format!("  {d} clients closed by the server"),
            _ => String::new(),
        }
    );
}

fn print_costs(run: &ClientRun) {
    for c in &run.proxy_costs {
        let what = if c.versus_none { "added by the proxy" } else { "per call" };
        eprintln!(
            "{} {} proxy at {:.0}/s, {what}: gateways {:+.1} µs, hub {:+.1} µs, backend {:.1} µs CPU per call; p50 {:+.2} ms, p99 {:+.2} ms",
            run.config,
            c.proxy.name(),
            c.rate,
            c.gateways_us_per_call,
            c.hub_us_per_call,
            c.backend_us_per_call,
            c.p50_ms,
            c.p99_ms
        );
    }
}

pub async fn cmd(env: &Env, a: ClientArgs) -> Result<bool> {
    let run = run(env, &a).await?;
    let name = match a.op {
        LoadOp::Publish => "client-publish.json",
        LoadOp::Rpc => "client-rpc.json",
    };
    crate::report::write_json(&env.out.join(name), &run)?;
    eprintln!("wrote {}", env.out.join(name).display());
    Ok(run.phases.iter().all(ClientPhase::correct))
}

/// Seconds long, few clients: client publish with no proxy and through an
/// HTTP and a gRPC backend, and rpc round trips over both, each op
/// delivered exactly once to each of its receivers, in order.
pub async fn smoke(env: &Env) -> Result<Vec<ClientPhase>> {
    let base = |op| ClientArgs {
        connections: 200,
        channels: 20,
        publishers: 20,
        rate: vec![200.0],
        duration: 1.0,
        max_p99_ms: 1_000.0,
        ..ClientArgs::defaults(op)
    };
    let mut out = run(env, &base(LoadOp::Publish)).await?.phases;
    out.extend(run(env, &base(LoadOp::Rpc)).await?.phases);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A correct phase of 1,000 publishes (10 receivers each) with the given
    /// gateway CPU, backend CPU and latency.
    fn phase(proxy: ProxyKind, gw_us: f64, backend_us: f64, p50: f64, p99: f64) -> ClientPhase {
        ClientPhase {
            config: "t".to_owned(),
            op: LoadOp::Publish,
            proxy,
            connections: 100,
            gateways: 2,
            channels: Some(10),
            publishers: 10,
            payload_bytes: 64,
            offered_rate: 1_000.0,
            duration_s: 1.0,
            ops: 1_000,
            written: 1_000,
            write_failed: 0,
            accepted: 1_000,
            op_errors: 0,
            first_op_error: None,
            unanswered: 0,
            proxied: if proxy == ProxyKind::None { 0 } else { 1_000 },
            expected: 10_000,
            delivered: 10_000,
            lost: 0,
            duplicates: 0,
            misdelivered: 0,
            out_of_order: 0,
            stray: 0,
            disconnected: 0,
            offered_delivery_rate: 10_000.0,
            delivered_rate: 10_000.0,
            latency_ms: Latency { p50, p90: p99, p99, p999: p99, max: p99 },
            pushmesh_us_per_op: gw_us + 5.0,
            us_per_op: vec![
                ("hub".to_owned(), 5.0),
                ("gw-0".to_owned(), gw_us / 2.0),
                ("gw-1".to_owned(), gw_us / 2.0),
                ("backend".to_owned(), backend_us),
            ],
            backend_us_per_op: backend_us,
            workers_us_per_delivery: 1.0,
            writer_late_max_ms: 0.0,
            usage: Vec::new(),
            other_cpu_s: 0.0,
            pass: true,
        }
    }

    #[test]
    fn the_proxy_cost_is_a_proxied_phase_minus_the_unproxied_one() {
        let run = ClientRun {
            op: LoadOp::Publish,
            config: "t".to_owned(),
            phases: vec![
                phase(ProxyKind::None, 20.0, 0.0, 1.0, 3.0),
                phase(ProxyKind::Http, 32.0, 15.0, 1.5, 4.0),
                phase(ProxyKind::Grpc, 36.0, 25.0, 1.25, 5.0),
            ],
            proxy_costs: Vec::new(),
        };
        let c = proxy_costs(&run);
        assert_eq!(c.len(), 2);
        assert!(c.iter().all(|c| c.versus_none));
        let http = (c[0].proxy, c[0].gateways_us_per_call, c[0].hub_us_per_call, c[0].backend_us_per_call);
        assert_eq!(http, (ProxyKind::Http, 12.0, 0.0, 15.0));
        assert_eq!((c[1].gateways_us_per_call, c[1].p50_ms, c[1].p99_ms), (16.0, 0.25, 2.0));
    }

    #[test]
    fn a_phase_is_correct_only_when_every_op_went_the_way_its_proxy_says() {
        assert!(phase(ProxyKind::Http, 1.0, 1.0, 1.0, 1.0).correct());
        // A proxied op that never reached the backend, or an unproxied one that did.
        assert!(!ClientPhase { proxied: 999, ..phase(ProxyKind::Http, 1.0, 1.0, 1.0, 1.0) }.correct());
        assert!(!ClientPhase { proxied: 1, ..phase(ProxyKind::None, 1.0, 0.0, 1.0, 1.0) }.correct());
        for bad in [
            ClientPhase { lost: 1, ..phase(ProxyKind::None, 1.0, 0.0, 1.0, 1.0) },
            ClientPhase { unanswered: 1, ..phase(ProxyKind::None, 1.0, 0.0, 1.0, 1.0) },
            ClientPhase { accepted: 999, ..phase(ProxyKind::None, 1.0, 0.0, 1.0, 1.0) },
            ClientPhase { write_failed: 1, ..phase(ProxyKind::None, 1.0, 0.0, 1.0, 1.0) },
        ] {
            assert!(!bad.correct());
        }
    }

    #[test]
    fn rpc_needs_a_backend_and_defaults_to_both() {
        let a = ClientArgs::defaults(LoadOp::Rpc);
        assert_eq!(a.proxies(), [ProxyKind::Http, ProxyKind::Grpc]);
        assert_eq!(ClientArgs::defaults(LoadOp::Publish).proxies().len(), 3);
    }
}
