//! Targeted workloads: every message is for one receiver, so the cost that
//! counts is the per-message path (HTTP request → ingress → hub → gateway →
//! one socket), not the fan-out.
//!
//! - **unicast**: N clients over G gateways; message k goes to one client,
//!   chosen by an even deterministic spread, addressed by the connection id
//!   its worker read from the welcome frame, one `POST /send` per message
//!   (or the seed's `GET /?to_worker_id=…&to_connection_id=…&content=…`).
//! - **channels**: the clients spread over K channels (client g joins
//!   channel g mod K: one or two subscribers each when K ≥ N/2), one
//!   `POST /publish` per message to one channel; each answer must carry the
//!   message's position (`epoch`/`offset`), and each client checks that the
//!   offsets it receives rise.
//! - **bulk**: many sends per request (`POST /batch` with `--batch` `send`
//!   ops), each to one client as in unicast; per-item results are read back.
//!
//! Each message's data names its intended receiver (`c`: the client's global
//! number, or the channel's); a worker counts a message that reaches any
//! other client as **misdelivered**. Messages are published open loop at a
//! fixed rate by the lean generator (`loadgen`), stamped with their
//! *scheduled* time, so latency includes any queueing in front of the
//! system (no coordinated omission). The per-message ceiling
//! (`msgceiling`) is measured with the same clients and generator, and
//! pushmesh's figures are given as ratios to it.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, bail};
use clap::ValueEnum;
use serde::Serialize;

use crate::cluster::{self, Cluster};
use crate::fleet::Fleet;
use crate::grpcstream;
use crate::loadgen::{self, Arrivals, Method, Plan, Script};
use crate::msgceiling::MsgCeiling;
use crate::procstat;
use crate::report::{self, Latency, MsgPhase, MsgRatio, MsgRun, MsgSweep};
use crate::scenario::Env;
use crate::wire;
use crate::worker::{ChannelSpread, Expect};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Workload {
    Unicast,
    Channels,
    Bulk,
}

/// How a unicast message is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Form {
    /// `POST /send {"connection": id, "data": …}`.
    Send,
    /// The seed's `GET /?to_worker_id=W&to_connection_id=C&content=…` (the
    /// data then arrives as a JSON string).
    Seed,
}

/// Which client publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Publisher {
    /// The benchmark's own open-loop HTTP/1.1 generator (`loadgen`).
    Lean,
    /// reqwest, one task per request: to measure what a general-purpose
    /// client costs.
    Reqwest,
}

/// How bulk sends travel.
///
/// **Hook for a streaming transport.** The bulk workload builds its
/// messages independently of the transport ([`BulkPlan`]: for each request,
/// the messages with their target connection ids and data) and expects back,
/// per message, whether it was accepted. `POST /batch` is the only transport
/// today. A gRPC `PublishStream` (issue 11; not yet in
/// `proto/pushmesh/v1/api.proto`) is meant to be a second variant here: add
/// `PublishStream`, and in [`run_bulk_transport`] send each request's items
/// over one long-lived stream (the same open-loop schedule: a request's
/// items are written at its scheduled time) and mark `accepted` from the
/// per-item results. Everything else (accounting, latency, CPU, the suite's
/// rows) is shared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BulkTransport {
    /// `POST /batch` with `--batch` `send` ops per request.
    Batch,
    /// The ingress's gRPC `PushApi.PublishStream`: one long-lived stream,
    /// `--batch` sends written at each scheduled time, a result per send
    /// (the per-message ceiling has no gRPC: it keeps `/batch`).
    GrpcStream,
}

#[derive(Debug, Clone, clap::Args)]
pub struct MsgArgs {
    /// WebSocket clients.
    #[arg(long, default_value_t = 10_000)]
    pub connections: usize,
    /// ws-gateway processes (the per-message ceiling is one process).
    #[arg(long, default_value_t = 2)]
    pub gateways: usize,
    /// Client worker processes, at least.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Messages per second (sends for unicast and bulk, publishes for
    /// channels); a comma-separated list runs one fixed phase per rate.
    #[arg(long, value_delimiter = ',', default_value = "10000")]
    pub rate: Vec<f64>,
    /// Seconds of publishing per phase.
    #[arg(long, default_value_t = 5.0)]
    pub duration: f64,
    /// Bytes of each message's data (JSON text, padded).
    #[arg(long, default_value_t = 64)]
    pub payload_bytes: usize,
    /// A phase passes when its p99 is at most this (and nothing is lost,
    /// doubled, misdelivered or refused).
    #[arg(long, default_value_t = 50.0)]
    pub max_p99_ms: f64,
    /// After the fixed rates, sweep for the highest passing rate (from the
    /// last --rate, ×--sweep-factor while phases pass, then bisecting).
    #[arg(long)]
    pub sweep: bool,
    #[arg(long, default_value_t = 1.5)]
    pub sweep_factor: f64,
    /// Most phases per sweep.
    #[arg(long, default_value_t = 8)]
    pub sweep_steps: usize,
    /// Skip the per-message ceiling.
    #[arg(long)]
    pub no_ceiling: bool,
    /// Measure only the per-message ceiling.
    #[arg(long, conflicts_with = "no_ceiling")]
    pub no_pushmesh: bool,
    /// Unicast: POST /send, or the seed's GET form.
    #[arg(long, value_enum, default_value = "send")]
    pub form: Form,
    #[arg(long, value_enum, default_value = "lean")]
    pub publisher: Publisher,
    /// When messages are due: evenly spaced, or a Poisson process of the
    /// same rate.
    #[arg(long, value_enum, default_value = "uniform")]
    pub arrivals: Arrivals,
    /// Most publisher connections (requests in flight) at once.
    #[arg(long, default_value_t = 1024)]
    pub publisher_connections: usize,
    /// Channels: how many (client g joins channel g mod K).
    #[arg(long, default_value_t = 5_000)]
    pub channels: usize,
    /// Bulk: sends per request.
    #[arg(long, default_value_t = 1_000)]
    pub batch: usize,
    /// Bulk: how the sends travel.
    #[arg(long, value_enum, default_value = "batch")]
    pub transport: BulkTransport,
    /// Extra argument for every ws-gateway (repeatable).
    #[arg(long = "gateway-arg", allow_hyphen_values = true)]
    pub gateway_args: Vec<String>,
    /// Extra argument for the http-ingress (repeatable).
    #[arg(long = "ingress-arg", allow_hyphen_values = true)]
    pub ingress_args: Vec<String>,
    /// Connection attempts in flight per worker process while connecting.
    #[arg(long, default_value_t = 128)]
    pub connect_concurrency: usize,
    /// HTTP threads of the per-message ceiling (default: one per core).
    #[arg(long)]
    pub ceiling_threads: Option<usize>,
    /// Name for this configuration in tables.
    #[arg(long)]
    pub label: Option<String>,
}

impl MsgArgs {
    pub fn defaults() -> MsgArgs {
        MsgArgs {
            connections: 10_000,
            gateways: 2,
            workers: 2,
            rate: vec![10_000.0],
            duration: 5.0,
            payload_bytes: 64,
            max_p99_ms: 50.0,
            sweep: false,
            sweep_factor: 1.5,
            sweep_steps: 8,
            no_ceiling: false,
            no_pushmesh: false,
            form: Form::Send,
            publisher: Publisher::Lean,
            arrivals: Arrivals::Uniform,
            publisher_connections: 1024,
            channels: 5_000,
            batch: 1_000,
            transport: BulkTransport::Batch,
            gateway_args: Vec::new(),
            ingress_args: Vec::new(),
            connect_concurrency: 128,
            ceiling_threads: None,
            label: None,
        }
    }

    pub fn config_label(&self, w: Workload) -> String {
        self.label.clone().unwrap_or_else(|| {
            let what = match w {
                Workload::Unicast => match self.form {
                    Form::Send => "unicast /send".to_owned(),
                    Form::Seed => "unicast seed GET".to_owned(),
                },
                Workload::Channels => format!("{} channels", self.channels),
                Workload::Bulk => match self.transport {
                    BulkTransport::Batch => format!("bulk {}/req", self.batch),
                    BulkTransport::GrpcStream => format!("bulk gRPC stream {}/write", self.batch),
                },
            };
            format!("{} conns / {} gw, {what}", self.connections, self.gateways)
        })
    }

    fn spread(&self, w: Workload) -> Option<ChannelSpread> {
        (w == Workload::Channels).then(|| ChannelSpread { prefix: "bench-".to_owned(), count: self.channels.max(1) })
    }

    /// The ingress flags a targeted run needs: no per-address rate limit
    /// (every request comes from the one load generator address, and the
    /// default 10,000/s would refuse the rest), and room for a bulk batch.
    fn ingress_args(&self, w: Workload) -> Vec<String> {
        let mut v = vec!["--rate-limit-per-sec=0".to_owned()];
        if w == Workload::Bulk {
            v.push(format!("--max-batch={}", self.batch.max(1)));
            v.push(format!("--max-body-bytes={}", (self.batch * (self.payload_bytes + 96)).max(1 << 20)));
        }
        v.extend(self.ingress_args.iter().cloned());
        v
    }
}

/// What delivers the messages in a phase.
pub enum Sys<'a> {
    Pushmesh(&'a Cluster),
    Ceiling(&'a MsgCeiling),
}

impl Sys<'_> {
    pub fn name(&self) -> &'static str {
        match self {
            Sys::Pushmesh(_) => "pushmesh",
            Sys::Ceiling(_) => "per-message ceiling",
        }
    }

    /// The ingress's gRPC API (pushmesh only).
    fn grpc_addr(&self) -> Option<std::net::SocketAddr> {
        match self {
            Sys::Pushmesh(c) => Some(c.ingress.addr("grpc")),
            Sys::Ceiling(_) => None,
        }
    }

    fn http_addr(&self) -> std::net::SocketAddr {
        match self {
            Sys::Pushmesh(c) => c.ingress.addr("http"),
            Sys::Ceiling(c) => c.http_addr(),
        }
    }

    /// The system's processes, the client workers and the benchmark's own
    /// process (the publisher).
    fn samples(&self, fleet: &Fleet) -> Vec<(String, procstat::Sample)> {
        let mut v = match self {
            Sys::Pushmesh(c) => c.sample(),
            Sys::Ceiling(c) => {
                vec![("msg-ceiling".to_owned(), procstat::sample(c.proc.pid_or_zero()).unwrap_or_default())]
            }
        };
        v.extend(
            fleet
                .pids()
                .iter()
                .enumerate()
                .map(|(i, p)| (format!("worker-{i}"), procstat::sample(*p).unwrap_or_default())),
        );
        v.push((PUBLISHER.to_owned(), procstat::sample(std::process::id()).unwrap_or_default()));
        v
    }

    /// Names of the processes that are the system under test.
    fn is_system(&self, name: &str) -> bool {
        match self {
            Sys::Pushmesh(_) => name == "hub" || name == "ingress" || name.starts_with("gw-"),
            Sys::Ceiling(_) => name == "msg-ceiling",
        }
    }
}

/// The benchmark's own process: the publisher (plus the little the parent
/// does to drive the workers).
const PUBLISHER: &str = "publisher";

/// One system's clients, connected, and their ids.
pub struct Ctx<'a> {
    pub sys: Sys<'a>,
    pub fleet: Fleet,
    ids: Arc<Vec<String>>,
    /// Next sequence number (never reused within a run).
    seq: u64,
    workload: Workload,
    args: &'a MsgArgs,
    http: reqwest::Client,
    config: String,
}

impl<'a> Ctx<'a> {
    pub async fn new(sys: Sys<'a>, mut fleet: Fleet, workload: Workload, args: &'a MsgArgs) -> Result<Ctx<'a>> {
        let c = fleet.connect().await?;
        eprintln!(
            "{}: {} clients connected in {:.2} s ({:.0}/s)",
            sys.name(),
            c.open,
            c.secs,
            c.open as f64 / c.secs.max(1e-9)
        );
        let ids = Arc::new(fleet.ids().await?);
        Ok(Ctx {
            sys,
            fleet,
            ids,
            seq: 1,
            workload,
            args,
            http: crate::publisher::client(),
            config: args.config_label(workload),
        })
    }

    /// Receivers of message `seq`.
    fn receivers(&self, seq: u64) -> u64 {
        match self.workload {
            Workload::Unicast | Workload::Bulk => 1,
            Workload::Channels => {
                let (n, k) = (self.args.connections, self.args.channels.max(1));
                let ch = wire::spread(seq, k);
                (n / k + usize::from(ch < n % k)) as u64
            }
        }
    }

    /// Publish `rate` messages/s for the configured duration and account
    /// for every delivery.
    pub async fn phase(&mut self, rate: f64) -> Result<MsgPhase> {
        let a = self.args;
        let (_, open) = self.fleet.progress().await?;
        if open < a.connections {
            // Clients an overloaded phase lost come back with new ids.
            self.fleet.connect().await?;
            self.ids = Arc::new(self.fleet.ids().await?);
        }
        if let Some(g) = self.ids.iter().position(String::is_empty) {
            bail!("client {g} has no connection id (not connected)");
        }
        let messages = ((rate * a.duration).round() as u64).max(1);
        let per_request = if self.workload == Workload::Bulk { a.batch.max(1) as u64 } else { 1 };
        let requests = messages.div_ceil(per_request);
        let first = self.seq;
        self.seq += messages;
        let expect = if self.workload == Workload::Channels { Expect::Channel } else { Expect::Client };
        self.fleet.phase_expecting(first, messages, expect).await?;
        let mut script = MsgScript {
            workload: self.workload,
            form: a.form,
            ids: self.ids.clone(),
            channels: a.channels.max(1),
            first,
            messages,
            per_request,
            size: a.payload_bytes,
            accepted: vec![false; messages as usize],
            item_errors: 0,
        };
        let plan = Plan {
            requests,
            per_sec: rate / per_request as f64,
            arrivals: a.arrivals,
            max_connections: a.publisher_connections,
            warm_connections: ((rate / per_request as f64) / 2_000.0).ceil().clamp(2.0, 64.0) as usize,
        };
        let before = self.sys.samples(&self.fleet);
        let machine0 = procstat::machine_busy_s();
        let addr = self.sys.http_addr();
        let outcome = match (a.publisher, self.workload) {
            (Publisher::Reqwest, _) => loadgen::run_reqwest(&self.http, addr, &plan, &mut script).await?,
            (Publisher::Lean, Workload::Bulk) => {
                let (o, s) = run_bulk_transport(a.transport, addr, self.sys.grpc_addr(), plan, script).await?;
                script = s;
                o
            }
            (Publisher::Lean, _) => {
                let (o, s) = run_lean(addr, plan, script).await?;
                script = s;
                o
            }
        };
        let accepted = script.accepted;
        let expected: u64 =
            accepted.iter().enumerate().filter(|(_, ok)| **ok).map(|(i, _)| self.receivers(first + i as u64)).sum();
        // Wait for the stragglers: until everything arrived, or nothing more
        // arrives for 2 s (10 s at most).
        let mut last = (0, tokio::time::Instant::now());
        let give_up = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let (unique, _) = self.fleet.progress().await?;
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
        let after = self.sys.samples(&self.fleet);
        let machine_cpu = procstat::machine_busy_s() - machine0;
        let m = self.fleet.report().await?;
        let mut lost = 0u64;
        for (i, ok) in accepted.iter().enumerate() {
            if *ok {
                lost += self.receivers(first + i as u64).saturating_sub(m.counts.get(i).copied().unwrap_or(0));
            }
        }
        let usage = cluster::usage(&before, &after);
        let cpu = |f: &dyn Fn(&str) -> bool| usage.iter().filter(|u| f(&u.name)).map(|u| u.cpu_s).sum::<f64>();
        let system_cpu = cpu(&|n| self.sys.is_system(n));
        let publisher_cpu = cpu(&|n| n == PUBLISHER);
        let workers_cpu = cpu(&|n| n.starts_with("worker-"));
        let per_msg = |s: f64| s * 1e6 / messages as f64;
        let schedule_s = messages as f64 / rate;
        let span_s = (m.last_recv_ns.saturating_sub(outcome.start_ns) as f64 / 1e9).max(schedule_s);
        let h = &m.hist;
        let mut r = MsgPhase {
            config: self.config.clone(),
            workload: self.workload,
            system: self.sys.name().to_owned(),
            form: match self.workload {
                Workload::Unicast => format!("{:?}", a.form).to_lowercase(),
                Workload::Channels => "publish".to_owned(),
                Workload::Bulk => format!("{:?}", a.transport).to_lowercase(),
            },
            publisher: format!("{:?}", a.publisher).to_lowercase(),
            arrivals: a.arrivals,
            connections: a.connections,
            gateways: a.gateways,
            channels: (self.workload == Workload::Channels).then_some(a.channels),
            per_request,
            payload_bytes: a.payload_bytes,
            offered_rate: rate,
            duration_s: a.duration,
            messages,
            requests,
            accepted: accepted.iter().filter(|a| **a).count() as u64,
            publish_errors: outcome.errors + script.item_errors,
            publish_first_error: outcome.first_error.clone(),
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
            system_us_per_message: per_msg(system_cpu),
            us_per_message: usage
                .iter()
                .filter(|u| self.sys.is_system(&u.name))
                .map(|u| (u.name.clone(), per_msg(u.cpu_s)))
                .collect(),
            publisher_us_per_request: publisher_cpu * 1e6 / requests as f64,
            publisher_cores: publisher_cpu / schedule_s,
            workers_us_per_delivery: workers_cpu * 1e6 / m.unique.max(1) as f64,
            generator: outcome,
            usage,
            other_cpu_s: 0.0,
            pass: false,
        };
        r.other_cpu_s = (machine_cpu - r.usage.iter().map(|u| u.cpu_s).sum::<f64>()).max(0.0);
        r.pass = r.passes(a.max_p99_ms);
        report::print_msg_row(&r);
        // Let queues empty and the machine settle before the next phase.
        tokio::time::sleep(Duration::from_millis(500)).await;
        Ok(r)
    }

    /// Highest passing rate: from `start` (whose phase may already have
    /// run: `seed`), grow by the factor while phases pass, then bisect
    /// between the best pass and the lowest failure.
    pub async fn sweep(&mut self, start: f64, seed: Option<MsgPhase>) -> Result<MsgSweep> {
        let a = self.args;
        let mut steps: Vec<MsgPhase> = Vec::new();
        let (mut best, mut fail): (Option<f64>, Option<f64>) = (None, None);
        let mut rate = start;
        let mut seed = seed.filter(|p| p.offered_rate == start);
        for _ in 0..a.sweep_steps.max(1) {
            let r = match seed.take() {
                Some(p) => p,
                None => self.phase(rate).await?,
            };
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
        Ok(MsgSweep {
            config: self.config.clone(),
            system: self.sys.name().to_owned(),
            max_rate: best_phase.as_ref().map(|p| p.offered_rate),
            best: best_phase,
            steps,
        })
    }

    /// The fixed rates, then the sweep if asked (from `sweep_from`, or the
    /// last rate).
    async fn all_phases(&mut self, sweep_from: Option<f64>) -> Result<(Vec<MsgPhase>, Option<MsgSweep>)> {
        let a = self.args;
        let mut fixed = Vec::new();
        for &rate in &a.rate {
            fixed.push(self.phase(rate).await?);
        }
        let sweep = if a.sweep {
            let start = sweep_from.or(a.rate.last().copied()).unwrap_or(10_000.0);
            let seed = fixed.iter().find(|p| p.offered_rate == start).cloned();
            Some(self.sweep(start, seed).await?)
        } else {
            None
        };
        Ok((fixed, sweep))
    }
}

/// The lean generator on a thread of its own (it sleeps to its schedule).
async fn run_lean(addr: std::net::SocketAddr, plan: Plan, script: MsgScript) -> Result<(loadgen::Outcome, MsgScript)> {
    loadgen::run_on_thread(addr, plan, script).await
}

/// The bulk workload's transport (see [`BulkTransport`]: the hook for a
/// streaming transport).
async fn run_bulk_transport(
    transport: BulkTransport,
    addr: std::net::SocketAddr,
    grpc: Option<std::net::SocketAddr>,
    plan: Plan,
    script: MsgScript,
) -> Result<(loadgen::Outcome, MsgScript)> {
    match (transport, grpc) {
        (BulkTransport::GrpcStream, Some(grpc)) => grpcstream::run_on_thread(grpc, plan, script).await,
        (BulkTransport::Batch, _) | (BulkTransport::GrpcStream, None) => run_lean(addr, plan, script).await,
    }
}

/// Which messages a bulk request carries: the transport-independent part
/// of a bulk phase (a streaming transport sends the same items).
pub struct BulkPlan {
    pub messages: u64,
    pub per_request: u64,
}

impl BulkPlan {
    /// Offsets (from `first`) of the messages in request `i`.
    pub fn items(&self, i: u64) -> std::ops::Range<u64> {
        let start = i * self.per_request;
        start..(start + self.per_request).min(self.messages)
    }
}

/// The requests of one phase, and which messages were accepted.
pub(crate) struct MsgScript {
    workload: Workload,
    form: Form,
    ids: Arc<Vec<String>>,
    channels: usize,
    first: u64,
    messages: u64,
    per_request: u64,
    size: usize,
    /// Per message: accepted by the system.
    accepted: Vec<bool>,
    /// Bulk items refused inside an accepted request.
    item_errors: u64,
}

impl MsgScript {
    fn bulk(&self) -> BulkPlan {
        BulkPlan { messages: self.messages, per_request: self.per_request }
    }

    /// Bulk request `i` as separate sends: (message number, connection id,
    /// data) — what a streaming transport writes one by one.
    pub(crate) fn bulk_sends(&self, i: u64, t_ns: u64) -> Vec<(u64, String, String)> {
        let n = self.ids.len();
        let mut data = Vec::with_capacity(self.size + 64);
        self.bulk()
            .items(i)
            .map(|k| {
                let seq = self.first + k;
                let c = wire::spread(seq, n);
                data.clear();
                wire::targeted_json(seq, t_ns, c as u64, self.size, &mut data);
                (k, self.ids[c].clone(), String::from_utf8_lossy(&data).into_owned())
            })
            .collect()
    }

    /// The stream's result for message `k`: accepted, or why not.
    pub(crate) fn bulk_result(&mut self, k: u64, error: Option<String>) -> Option<String> {
        match error {
            None => {
                self.accepted[k as usize] = true;
                None
            }
            Some(e) => {
                self.item_errors += 1;
                Some(e)
            }
        }
    }
}

impl Script for MsgScript {
    fn request(&mut self, i: u64, t_ns: u64, path: &mut Vec<u8>, body: &mut Vec<u8>) -> Method {
        let n = self.ids.len();
        match (self.workload, self.form) {
            (Workload::Unicast, Form::Send) => {
                let seq = self.first + i;
                let c = wire::spread(seq, n);
                path.extend_from_slice(b"/send");
                body.extend_from_slice(br#"{"connection":""#);
                body.extend_from_slice(self.ids[c].as_bytes());
                body.extend_from_slice(br#"","data":"#);
                wire::targeted_json(seq, t_ns, c as u64, self.size, body);
                body.push(b'}');
                Method::Post
            }
            (Workload::Unicast, Form::Seed) => {
                let seq = self.first + i;
                let c = wire::spread(seq, n);
                let id = &self.ids[c];
                let gateway = id.rsplit_once(':').map_or(id.as_str(), |(g, _)| g);
                path.extend_from_slice(b"/?to_worker_id=");
                wire::percent_encode(gateway.as_bytes(), path);
                path.extend_from_slice(b"&to_connection_id=");
                wire::percent_encode(id.as_bytes(), path);
                path.extend_from_slice(b"&content=");
                // `body` is free for a GET: the data's text before encoding.
                wire::targeted_json(seq, t_ns, c as u64, self.size, body);
                wire::percent_encode(body, path);
                body.clear();
                Method::Get
            }
            (Workload::Channels, _) => {
                let seq = self.first + i;
                let ch = wire::spread(seq, self.channels);
                path.extend_from_slice(b"/publish");
                body.extend_from_slice(br#"{"channel":"bench-"#);
                body.extend_from_slice(ch.to_string().as_bytes());
                body.extend_from_slice(br#"","data":"#);
                wire::targeted_json(seq, t_ns, ch as u64, self.size, body);
                body.push(b'}');
                Method::Post
            }
            (Workload::Bulk, _) => {
                path.extend_from_slice(b"/batch");
                body.push(b'[');
                for k in self.bulk().items(i) {
                    let seq = self.first + k;
                    let c = wire::spread(seq, n);
                    if body.len() > 1 {
                        body.push(b',');
                    }
                    body.extend_from_slice(br#"{"op":"send","connection":""#);
                    body.extend_from_slice(self.ids[c].as_bytes());
                    body.extend_from_slice(br#"","data":"#);
                    wire::targeted_json(seq, t_ns, c as u64, self.size, body);
                    body.push(b'}');
                }
                body.push(b']');
                Method::Post
            }
        }
    }

    fn response(&mut self, i: u64, status: u16, body: &[u8]) -> Result<(), String> {
        if status != 200 {
            return Err(format!("HTTP {status}: {}", String::from_utf8_lossy(&body[..body.len().min(300)])));
        }
        match self.workload {
            Workload::Unicast => {}
            Workload::Channels => {
                // A positioned publish: the answer says where the message is.
                if wire::number_after(body, br#""offset":"#).is_none() {
                    return Err(format!("publish answered without an offset: {}", String::from_utf8_lossy(body)));
                }
            }
            Workload::Bulk => {
                let items = self.bulk().items(i);
                let v: serde_json::Value =
                    serde_json::from_slice(body).map_err(|e| format!("unreadable /batch answer: {e}"))?;
                let results = v["results"].as_array().ok_or("/batch answer without results")?;
                if results.len() as u64 != items.end - items.start {
                    return Err(format!(
                        "/batch answered {} results for {} sends",
                        results.len(),
                        items.end - items.start
                    ));
                }
                let mut first_error = None;
                for (k, r) in items.zip(results) {
                    if r["ok"] == serde_json::Value::Bool(true) {
                        self.accepted[k as usize] = true;
                    } else {
                        self.item_errors += 1;
                        first_error.get_or_insert_with(|| r.to_string());
                    }
                }
                return match first_error {
                    None => Ok(()),
                    Some(e) => Err(format!("a /batch send was refused: {e}")),
                };
            }
        }
        self.accepted[i as usize] = true;
        Ok(())
    }
}

/// Run `workload` on pushmesh, then on the per-message ceiling (unicast and
/// bulk), with the same clients and publisher.
pub async fn run(env: &Env, workload: Workload, a: &MsgArgs) -> Result<MsgRun> {
    let logs = env.out.join("logs");
    let mut run = MsgRun { workload, config: a.config_label(workload), ..Default::default() };
    report::print_msg_header();
    if !a.no_pushmesh {
        let cluster = Cluster::start_with(env, a.gateways, &a.gateway_args, &[], &a.ingress_args(workload)).await?;
        let fleet = Fleet::spawn_spread(
            a.connections,
            a.workers,
            a.connect_concurrency,
            &cluster.gateway_addrs(),
            None,
            a.spread(workload),
            10,
        )
        .await?;
        let mut ctx = Ctx::new(Sys::Pushmesh(&cluster), fleet, workload, a).await?;
        let (fixed, sweep) = ctx.all_phases(None).await?;
        run.fixed.extend(fixed);
        run.sweeps.extend(sweep);
    }
    let ceiling_applies = workload != Workload::Channels;
    if !a.no_ceiling && ceiling_applies {
        if a.connections > crate::fleet::MAX_PER_WORKER {
            eprintln!(
                "per-message ceiling skipped: it is one process, which may hold only {} clients",
                crate::fleet::MAX_PER_WORKER
            );
        } else {
            let threads =
                a.ceiling_threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
            let ceiling = MsgCeiling::start(&logs, threads, a.connections * 4 + 1_000).await?;
            let fleet =
                Fleet::spawn(a.connections, a.workers, a.connect_concurrency, &[ceiling.ws_addr()], None, 30).await?;
            let mut ctx = Ctx::new(Sys::Ceiling(&ceiling), fleet, workload, a).await?;
            // The ceiling is at least as fast: its sweep starts where pushmesh's ended.
            let from =
                run.sweeps.first().and_then(|s| s.max_rate).filter(|r| *r > a.rate.last().copied().unwrap_or(0.0));
            let (fixed, sweep) = ctx.all_phases(from).await?;
            run.fixed.extend(fixed);
            run.sweeps.extend(sweep);
        }
    }
    run.ratios = ratios(&run);
    report::print_msg_ratios(&run);
    Ok(run)
}

/// pushmesh against the ceiling: latency at equal rate, CPU per message,
/// highest sustained rate.
fn ratios(run: &MsgRun) -> Vec<MsgRatio> {
    let mut out = Vec::new();
    let is_pm = |p: &MsgPhase| p.system == "pushmesh";
    for pm in run.fixed.iter().filter(|p| is_pm(p)) {
        let Some(c) = run.fixed.iter().find(|c| !is_pm(c) && c.offered_rate == pm.offered_rate) else { continue };
        let r = |what: String, p: f64, c: f64| MsgRatio { what, pushmesh: p, ceiling: c, ratio: p / c.max(1e-9) };
        let at = format!("at {:.0}/s", pm.offered_rate);
        out.push(r(format!("p50 ms {at}"), pm.latency_ms.p50, c.latency_ms.p50));
        out.push(r(format!("p99 ms {at}"), pm.latency_ms.p99, c.latency_ms.p99));
        out.push(r(format!("server CPU µs per message {at}"), pm.system_us_per_message, c.system_us_per_message));
    }
    let pm = run.sweeps.iter().find(|s| s.system == "pushmesh").and_then(|s| s.max_rate);
    let c = run.sweeps.iter().find(|s| s.system != "pushmesh").and_then(|s| s.max_rate);
    if let (Some(p), Some(c)) = (pm, c) {
        out.push(MsgRatio {
            what: "highest sustained rate, messages/s".to_owned(),
            pushmesh: p,
            ceiling: c,
            ratio: p / c,
        });
    }
    out
}

pub async fn cmd(env: &Env, workload: Workload, a: MsgArgs) -> Result<bool> {
    let run = run(env, workload, &a).await?;
    let name = format!("{}.json", format!("{workload:?}").to_lowercase());
    report::write_json(&env.out.join(&name), &run)?;
    eprintln!("wrote {}", env.out.join(&name).display());
    Ok(run.fixed.iter().chain(run.sweeps.iter().flat_map(|s| &s.steps)).all(MsgPhase::correct))
}

/// A few seconds each, few clients: unicast (both forms, and on the
/// ceiling), channels and bulk deliver every message exactly once, to the
/// right client, in order.
pub async fn smoke(env: &Env) -> Result<Vec<MsgPhase>> {
    let base =
        MsgArgs { connections: 200, rate: vec![1_000.0], duration: 1.0, max_p99_ms: 1_000.0, ..MsgArgs::defaults() };
    let mut out = Vec::new();
    out.extend(run(env, Workload::Unicast, &base).await?.fixed);
    let seed = MsgArgs { form: Form::Seed, rate: vec![500.0], no_ceiling: true, ..base.clone() };
    out.extend(run(env, Workload::Unicast, &seed).await?.fixed);
    let channels = MsgArgs { channels: 100, ..base.clone() };
    out.extend(run(env, Workload::Channels, &channels).await?.fixed);
    let bulk = MsgArgs { batch: 100, rate: vec![2_000.0], ..base };
    out.extend(run(env, Workload::Bulk, &bulk).await?.fixed);
    let stream = MsgArgs { transport: BulkTransport::GrpcStream, no_ceiling: true, ..bulk };
    out.extend(run(env, Workload::Bulk, &stream).await?.fixed);
    Ok(out)
}
