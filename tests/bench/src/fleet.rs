//! The parent's side of the client workers: spawn them (this same binary,
//! `worker` subcommand), split the clients between them, send each the same
//! command and gather the answers, merge their measurements.

use std::net::{Ipv4Addr, SocketAddr};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use hdrhistogram::Histogram;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use crate::worker::{ChannelSpread, Cmd, Event, Expect, Load, Report, Spec};

/// Most connections one worker holds: the per-process open-file limit is
/// 20,000 and a worker needs a few descriptors of its own.
pub const MAX_PER_WORKER: usize = 19_000;
/// Connections bound to one source address (the ephemeral range is about
/// 28,000 ports per address).
const PER_SOURCE: usize = 10_000;

pub struct WorkerProc {
    pub child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
}

pub struct Fleet {
    pub workers: Vec<WorkerProc>,
}

/// The workers' merged phase measurements.
pub struct Merged {
    pub hist: Histogram<u64>,
    /// Per sequence number offset: receivers over all workers.
    pub counts: Vec<u64>,
    pub unique: u64,
    pub duplicates: u64,
    pub stray: u64,
    pub closed: u64,
    pub open: usize,
    pub last_recv_ns: u64,
    pub misdelivered: u64,
    pub out_of_order: u64,
    /// Load ops answered `ok` (a bit per sequence number offset), answered
    /// so, and answered with an error (the first one's frame).
    pub accepted: Vec<u64>,
    pub op_ok: u64,
    pub op_errors: u64,
    pub first_op_error: Option<String>,
}

/// What the workers did with a load.
#[derive(Debug, Clone, Copy, Default)]
pub struct Loaded {
    pub written: u64,
    pub failed: u64,
    pub late_max_ms: f64,
}

/// Connect-phase totals.
#[derive(Debug, Clone, Copy)]
pub struct ConnectStats {
    pub retried: usize,
    pub max_ms: f64,
    pub slow: usize,
    pub open: usize,
    pub secs: f64,
}

impl Fleet {
    /// Start enough workers for `total` clients (at least `min_workers`),
    /// each assigned its own source addresses, spreading clients over
    /// `targets` round-robin. `tag` keeps source ranges of fleets that run
    /// at the same time apart.
    pub async fn spawn(
        total: usize,
        min_workers: usize,
        connect_concurrency: usize,
        targets: &[SocketAddr],
        channel: Option<&str>,
        tag: u8,
    ) -> Result<Fleet> {
        Self::spawn_spread(total, min_workers, connect_concurrency, targets, channel, None, tag).await
    }

    /// `spawn`, with each client subscribed to its own channel of `spread`
    /// (when given) instead of `channel`.
    pub async fn spawn_spread(
        total: usize,
        min_workers: usize,
        connect_concurrency: usize,
        targets: &[SocketAddr],
        channel: Option<&str>,
        spread: Option<ChannelSpread>,
        tag: u8,
    ) -> Result<Fleet> {
        let n = min_workers.max(total.div_ceil(MAX_PER_WORKER)).max(1);
        let exe = std::env::current_exe().context("own executable")?;
        let mut workers = Vec::with_capacity(n);
        let mut first_client = 0;
        for index in 0..n {
            let count = total / n + usize::from(index < total % n);
            let sources: Vec<Ipv4Addr> = (0..count.div_ceil(PER_SOURCE).max(1))
                .map(|j| Ipv4Addr::new(127, tag, index as u8 + 1, j as u8 + 1))
                .collect();
            // Rotate targets per worker so each gateway gets an even share.
            let mut t = targets.to_vec();
            t.rotate_left(index % targets.len());
            let spec = Spec {
                index,
                targets: t,
                count,
                sources,
                per_source: PER_SOURCE,
                channel: channel.map(str::to_owned),
                concurrency: connect_concurrency,
                first_client,
                spread: spread.clone(),
            };
            first_client += count;
            let mut child = Command::new(&exe)
                .arg("worker")
                .arg("--spec")
                .arg(serde_json::to_string(&spec)?)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true)
                .spawn()
                .context("spawn a client worker")?;
            let stdin = child.stdin.take().expect("piped");
            let stdout = BufReader::new(child.stdout.take().expect("piped")).lines();
            workers.push(WorkerProc { child, stdin, stdout });
        }
        Ok(Fleet { workers })
    }

    pub fn pids(&self) -> Vec<u32> {
        self.workers.iter().filter_map(|w| w.child.id()).collect()
    }

    /// Send `cmd` to every worker, then read each one's answer.
    async fn all(&mut self, cmd: &Cmd, limit: Duration) -> Result<Vec<Event>> {
        let line = format!("{}\n", serde_json::to_string(cmd)?);
        for w in &mut self.workers {
            w.stdin.write_all(line.as_bytes()).await.context("worker stdin")?;
            w.stdin.flush().await?;
        }
        let mut out = Vec::with_capacity(self.workers.len());
        for (i, w) in self.workers.iter_mut().enumerate() {
            let l = tokio::time::timeout(limit, w.stdout.next_line())
                .await
                .map_err(|_| anyhow!("worker {i} did not answer {cmd:?} within {limit:?}"))??
                .ok_or_else(|| anyhow!("worker {i} exited"))?;
            match serde_json::from_str::<Event>(&l).with_context(|| format!("worker {i} said {l:?}"))? {
                Event::Error { message } => bail!("worker {i}: {message}"),
                ev => out.push(ev),
            }
        }
        Ok(out)
    }

    /// Open every client that is not open; fails unless all are.
    pub async fn connect(&mut self) -> Result<ConnectStats> {
        let evs = self.all(&Cmd::Connect, Duration::from_secs(300)).await?;
        let (mut ok, mut failed, mut open, mut start, mut end) = (0, 0, 0, u64::MAX, 0);
        let mut first_error = None;
        let (mut max_ms, mut slow, mut retried) = (0.0, 0, 0);
        for ev in evs {
            if let Event::Connected {
                ok: o,
                failed: f,
                open: n,
                start_ns,
                end_ns,
                first_error: e,
                max_ms: mx,
                slow: sl,
                retried: r,
            } = ev
            {
                retried += r;
                max_ms = f64::max(max_ms, mx);
                slow += sl;
                ok += o;
                failed += f;
                open += n;
                if o > 0 {
                    start = start.min(start_ns);
                    end = end.max(end_ns);
                }
                if first_error.is_none() {
                    first_error = e;
                }
            }
        }
        if failed > 0 {
            bail!(
                "{failed} of {} clients failed to connect; first error: {}",
                ok + failed,
                first_error.unwrap_or_default()
            );
        }
        let secs = if end > start { (end - start) as f64 / 1e9 } else { 0.0 };
        Ok(ConnectStats { open, secs, max_ms, slow, retried })
    }

    pub async fn phase(&mut self, first: u64, count: u64) -> Result<()> {
        self.phase_expecting(first, count, Expect::Everyone).await
    }

    pub async fn phase_expecting(&mut self, first: u64, count: u64, expect: Expect) -> Result<()> {
        self.all(&Cmd::Phase { first, count, expect }, Duration::from_secs(30)).await.map(drop)
    }

    /// Every client's connection id, by global client number ("" for a
    /// client that is not open).
    pub async fn ids(&mut self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for ev in self.all(&Cmd::Ids, Duration::from_secs(30)).await? {
            if let Event::Ids { ids } = ev {
                out.extend(ids);
            }
        }
        Ok(out)
    }

    /// Unique deliveries so far, and open connections.
    pub async fn progress(&mut self) -> Result<(u64, usize)> {
        let mut unique = 0;
        let mut open = 0;
        for ev in self.all(&Cmd::Stats, Duration::from_secs(30)).await? {
            if let Event::Stats { unique: u, open: o } = ev {
                unique += u;
                open += o;
            }
        }
        Ok((unique, open))
    }

    /// Have every worker write its share of `load`'s ops; returns once
    /// all are written.
    pub async fn load(&mut self, load: &Load) -> Result<Loaded> {
        let limit = Duration::from_secs_f64(load.count as f64 / load.per_sec.max(1e-9) + 60.0);
        let mut out = Loaded::default();
        for ev in self.all(&Cmd::Load(load.clone()), limit).await? {
            if let Event::Loaded { written, failed, late_max_ms } = ev {
                out.written += written;
                out.failed += failed;
                out.late_max_ms = out.late_max_ms.max(late_max_ms);
            }
        }
        Ok(out)
    }

    pub async fn report(&mut self) -> Result<Merged> {
        let mut m = Merged {
            hist: Histogram::new_with_bounds(1, 120_000_000, 3).expect("bounds"),
            counts: Vec::new(),
            unique: 0,
            duplicates: 0,
            stray: 0,
            closed: 0,
            open: 0,
            last_recv_ns: 0,
            misdelivered: 0,
            out_of_order: 0,
            accepted: Vec::new(),
            op_ok: 0,
            op_errors: 0,
            first_op_error: None,
        };
        for ev in self.all(&Cmd::Report, Duration::from_secs(60)).await? {
            let Event::Report(r) = ev else { continue };
            let Report {
                hist_us,
                counts,
                unique,
                duplicates,
                stray,
                closed,
                open,
                last_recv_ns,
                misdelivered,
                out_of_order,
                accepted,
                op_ok,
                op_errors,
                first_op_error,
                ..
            } = *r;
            if m.accepted.len() < accepted.len() {
                m.accepted.resize(accepted.len(), 0);
            }
            for (w, bits) in m.accepted.iter_mut().zip(accepted) {
                *w |= bits;
            }
            m.op_ok += op_ok;
            m.op_errors += op_errors;
            if m.first_op_error.is_none() {
                m.first_op_error = first_op_error;
            }
            m.misdelivered += misdelivered;
            m.out_of_order += out_of_order;
            for (v, c) in hist_us {
                m.hist.saturating_record_n(v, c);
            }
            if m.counts.len() < counts.len() {
                m.counts.resize(counts.len(), 0);
            }
            for (i, c) in counts.into_iter().enumerate() {
                m.counts[i] += u64::from(c);
            }
            m.unique += unique;
            m.duplicates += duplicates;
            m.stray += stray;
            m.closed += closed;
            m.open += open;
            m.last_recv_ns = m.last_recv_ns.max(last_recv_ns);
        }
        Ok(m)
    }
}
