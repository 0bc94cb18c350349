//! A client worker process: holds its share of the WebSocket clients and
//! accounts for every delivery they read.
//!
//! One thread, one current-thread runtime, one task per connection: no
//! locks, and the accounting state is a `RefCell` the tasks borrow briefly.
//! Sockets are read with `readable()` + `try_read` into one scratch buffer
//! shared by all connections, so an idle connection holds no read buffer.
//!
//! The parent drives the worker with JSON lines on stdin (`Cmd`) and reads
//! JSON lines on stdout (`Event`). The worker exits when stdin closes, so a
//! parent that dies takes its workers with it.

use std::cell::RefCell;
use std::net::{Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use pushmesh_common::client::ClientOp;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};

use crate::wire;

/// What a worker is for (passed as `--spec JSON`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Spec {
    pub index: usize,
    /// Servers (gateways or ceiling processes); connection i goes to i % len.
    pub targets: Vec<SocketAddr>,
    pub count: usize,
    /// Source addresses to bind, one per `per_source` connections.
    pub sources: Vec<Ipv4Addr>,
    pub per_source: usize,
    /// Subscribe each connection to this channel (else: broadcasts only).
    pub channel: Option<String>,
    /// Connection attempts in flight at once.
    pub concurrency: usize,
    /// The global number of this worker's first client (clients are
    /// numbered over the whole fleet; targeted messages name their receiver
    /// by it).
    #[serde(default)]
    pub first_client: usize,
    /// Subscribe client g to its own channel, `{prefix}{g % count}` (the
    /// channels workload), instead of `channel`.
    #[serde(default)]
    pub spread: Option<ChannelSpread>,
}

/// Clients spread over `count` channels named `{prefix}{n}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChannelSpread {
    pub prefix: String,
    pub count: usize,
}

impl Spec {
    /// The channel client `slot` of this worker subscribes to, if any.
    pub fn channel_of(&self, slot: usize) -> Option<String> {
        match &self.spread {
            Some(s) => Some(format!("{}{}", s.prefix, (self.first_client + slot) % s.count.max(1))),
            None => self.channel.clone(),
        }
    }
}

/// Who a phase's messages are for, and so how deliveries are checked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Expect {
    /// Every client gets every message (broadcast, one shared channel):
    /// duplicates are found with a bit per sequence number per client.
    #[default]
    Everyone,
    /// Each message is for one client, whose global number is its data's
    /// `c`; any other receiver is a misdelivery.
    Client,
    /// Each message is for one channel of the spread, numbered by `c`.
    Channel,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Cmd {
    /// Open every connection that is not open (all of them, the first time).
    Connect,
    /// Count deliveries of sequence numbers `first..first+count` from now on.
    Phase {
        first: u64,
        count: u64,
        #[serde(default)]
        expect: Expect,
    },
    /// Every client's connection id, from its welcome frame.
    Ids,
    /// Cheap progress counters.
    Stats,
    /// Everything measured in this phase.
    Report,
    /// Write client ops (publish or rpc) on the load's schedule; answered
    /// once this worker's last op is written.
    Load(Load),
}

/// Client ops on an open-loop schedule (the clientpub workload): op `seq`
/// (`first..first+count`) is due at `start_ns + (seq-first)/per_sec`, and
/// is written by client [`Load::publisher`] over its own WebSocket — by
/// the worker that holds that client. Its data is stamped with the due
/// time, so latency counts any lag of the writer too.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Load {
    pub first: u64,
    pub count: u64,
    pub per_sec: f64,
    /// Wall clock (ns since the Unix epoch) of op `first`.
    pub start_ns: u64,
    pub kind: LoadOp,
    /// Clients that write ops: every `stride`th client, `publishers` of them.
    pub publishers: usize,
    pub stride: usize,
    /// Publish: channels `{prefix}{n}`, n < channels (the fleet's spread).
    pub channels: usize,
    pub prefix: String,
    /// Bytes of each op's data.
    pub size: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum LoadOp {
    /// `{"op":"publish","channel":…,"data":…}` to channel `c` of the spread;
    /// every subscriber of it must receive the data once.
    Publish,
    /// `{"op":"rpc","method":"echo","data":…}`; the reply must echo the data
    /// (with `c` = the caller) back to the caller.
    Rpc,
}

impl Load {
    /// The global number of the client that writes op `seq` (the high bits
    /// of the spread pick it, the low bits the channel).
    pub fn publisher(&self, seq: u64) -> usize {
        ((wire::spread_bits(seq) >> 32) % self.publishers.max(1) as u64) as usize * self.stride.max(1)
    }

    /// The channel number a publish `seq` goes to.
    pub fn channel(&self, seq: u64) -> usize {
        wire::spread(seq, self.channels)
    }

    fn due_ns(&self, seq: u64) -> u64 {
        self.start_ns + ((seq - self.first) as f64 * 1e9 / self.per_sec.max(1e-9)) as u64
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(tag = "ev", rename_all = "snake_case")]
pub enum Event {
    Connected {
        ok: usize,
        failed: usize,
        open: usize,
        start_ns: u64,
        end_ns: u64,
        first_error: Option<String>,
        /// Slowest connect (TCP + upgrade + welcome), and how many took over 500 ms.
        max_ms: f64,
        slow: usize,
        /// Failed attempts that were tried again.
        retried: usize,
    },
    #[default]
    Ok,
    Stats {
        unique: u64,
        open: usize,
    },
    Report(Box<Report>),
    /// A load's ops written by this worker, ops that could not be written
    /// (the client was not open, or its socket failed), and the most any
    /// op was written after it was due.
    Loaded {
        written: u64,
        failed: u64,
        late_max_ms: f64,
    },
    /// Per client slot, its connection id ("" when it is not open).
    Ids {
        ids: Vec<String>,
    },
    Error {
        message: String,
    },
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Report {
    /// Latency histogram in microseconds, as (value, count) pairs.
    pub hist_us: Vec<(u64, u64)>,
    /// Per sequence number (offset from the phase's first): how many of this
    /// worker's connections received it.
    pub counts: Vec<u32>,
    pub unique: u64,
    pub duplicates: u64,
    /// Deliveries outside the phase's range (late ones from an earlier phase).
    pub stray: u64,
    pub closed: u64,
    pub open: usize,
    pub last_recv_ns: u64,
    pub bytes: u64,
    /// Targeted messages received by a client they were not for.
    #[serde(default)]
    pub misdelivered: u64,
    /// Channel messages whose `offset` was not above the previous one on
    /// the same connection.
    #[serde(default)]
    pub out_of_order: u64,
    /// Load ops answered `ok`, as a bit per sequence number of the phase.
    #[serde(default)]
    pub accepted: Vec<u64>,
    /// Load ops answered `ok`, and answered with an error.
    #[serde(default)]
    pub op_ok: u64,
    #[serde(default)]
    pub op_errors: u64,
    #[serde(default)]
    pub first_op_error: Option<String>,
}

#[derive(Clone, Copy)]
struct Phase {
    id: u64,
    first: u64,
    count: u64,
    expect: Expect,
}

/// The accounting every connection task updates.
struct State {
    phase: Phase,
    counts: Vec<u32>,
    hist: Histogram<u64>,
    unique: u64,
    duplicates: u64,
    stray: u64,
    closed: u64,
    last_recv_ns: u64,
    bytes: u64,
    misdelivered: u64,
    out_of_order: u64,
    accepted: Vec<u64>,
    op_ok: u64,
    op_errors: u64,
    first_op_error: Option<String>,
    /// Per connection slot: its socket while open (a load writes on it).
    conns: Vec<Option<Rc<Conn>>>,
    /// Per connection slot: open or not.
    open: Vec<bool>,
    /// Per connection slot: the id its welcome frame gave.
    ids: Vec<String>,
}

impl State {
    fn open_count(&self) -> usize {
        self.open.iter().filter(|o| **o).count()
    }
}

type Shared = Rc<RefCell<State>>;

thread_local! {
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(vec![0; 256 * 1024]);
}

pub fn main(spec: &str) -> std::process::ExitCode {
    let spec: Spec = match serde_json::from_str(spec) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("worker: bad --spec: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, run(spec));
    // Tens of thousands of tasks and sockets: the kernel frees them faster.
    std::process::exit(0)
}

async fn run(spec: Spec) {
    let state = Rc::new(RefCell::new(State {
        phase: Phase { id: 0, first: 0, count: 0, expect: Expect::Everyone },
        counts: Vec::new(),
        hist: Histogram::new_with_bounds(1, 120_000_000, 3).expect("histogram bounds"),
        unique: 0,
        duplicates: 0,
        stray: 0,
        closed: 0,
        last_recv_ns: 0,
        bytes: 0,
        misdelivered: 0,
        out_of_order: 0,
        accepted: Vec::new(),
        op_ok: 0,
        op_errors: 0,
        first_op_error: None,
        conns: vec![None; spec.count],
        open: vec![false; spec.count],
        ids: vec![String::new(); spec.count],
    }));
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut out = tokio::io::stdout();
    while let Ok(Some(line)) = lines.next_line().await {
        let ev = match serde_json::from_str::<Cmd>(&line) {
            Ok(cmd) => handle(&spec, &state, cmd).await,
            Err(e) => Event::Error { message: format!("bad command {line:?}: {e}") },
        };
        let mut text = serde_json::to_string(&ev).expect("event json");
        text.push('\n');
        if out.write_all(text.as_bytes()).await.is_err() || out.flush().await.is_err() {
            break;
        }
    }
}

async fn handle(spec: &Spec, state: &Shared, cmd: Cmd) -> Event {
    match cmd {
        Cmd::Connect => connect_all(spec, state).await,
        Cmd::Phase { first, count, expect } => {
            let mut st = state.borrow_mut();
            st.phase = Phase { id: st.phase.id + 1, first, count, expect };
            st.counts = vec![0; count as usize];
            st.hist.reset();
            st.unique = 0;
            st.duplicates = 0;
            st.stray = 0;
            st.closed = 0;
            st.last_recv_ns = 0;
            st.bytes = 0;
            st.misdelivered = 0;
            st.out_of_order = 0;
            st.accepted = vec![0; count.div_ceil(64) as usize];
            st.op_ok = 0;
            st.op_errors = 0;
            st.first_op_error = None;
            Event::Ok
        }
        Cmd::Ids => {
            let st = state.borrow();
            let ids = st.ids.iter().zip(&st.open).map(|(id, open)| if *open { id.clone() } else { String::new() });
            Event::Ids { ids: ids.collect() }
        }
        Cmd::Stats => {
            let st = state.borrow();
            Event::Stats { unique: st.unique, open: st.open_count() }
        }
        Cmd::Report => {
            let st = state.borrow();
            Event::Report(Box::new(Report {
                hist_us: st.hist.iter_recorded().map(|v| (v.value_iterated_to(), v.count_at_value())).collect(),
                counts: st.counts.clone(),
                unique: st.unique,
                duplicates: st.duplicates,
                stray: st.stray,
                closed: st.closed,
                open: st.open_count(),
                last_recv_ns: st.last_recv_ns,
                bytes: st.bytes,
                misdelivered: st.misdelivered,
                out_of_order: st.out_of_order,
                accepted: st.accepted.clone(),
                op_ok: st.op_ok,
                op_errors: st.op_errors,
                first_op_error: st.first_op_error.clone(),
            }))
        }
        Cmd::Load(load) => run_load(spec, state, &load).await,
    }
}

/// Write this worker's share of `load`'s ops, each when it is due. One
/// task writes them in order; a socket that cannot take an op at once
/// (the gateway is not reading) holds up the ops behind it, which shows
/// as latency, as it would for a real client.
async fn run_load(spec: &Spec, state: &Shared, load: &Load) -> Event {
    let (wall0, inst0) = (wire::now_ns(), tokio::time::Instant::now());
    let mine = spec.first_client..spec.first_client + spec.count;
    let (mut written, mut failed, mut late_max) = (0u64, 0u64, 0u64);
    let (mut data, mut frame) = (Vec::with_capacity(load.size + 64), Vec::with_capacity(load.size + 160));
    for seq in load.first..load.first + load.count {
        let g = load.publisher(seq);
        if !mine.contains(&g) {
            continue;
        }
        let due = load.due_ns(seq);
        if due > wire::now_ns() {
            tokio::time::sleep_until(inst0 + Duration::from_nanos(due.saturating_sub(wall0))).await;
        }
        late_max = late_max.max(wire::now_ns().saturating_sub(due));
        let Some(conn) = state.borrow().conns[g - spec.first_client].clone() else {
            failed += 1;
            continue;
        };
        let c = match load.kind {
            LoadOp::Publish => load.channel(seq),
            LoadOp::Rpc => g,
        };
        data.clear();
        wire::targeted_json(seq, due, c as u64, load.size, &mut data);
        let value: serde_json::Value = serde_json::from_slice(&data).expect("the benchmark's data is JSON");
        let op = match load.kind {
            LoadOp::Publish => ClientOp::publish(seq, format!("{}{c}", load.prefix), value),
            LoadOp::Rpc => ClientOp::rpc(seq, "echo", value),
        };
        frame.clear();
        wire::put_client_frame(&mut frame, 1, op.to_text().as_bytes());
        match conn.write_all(&frame).await {
            Ok(()) => written += 1,
            Err(_) => failed += 1,
        }
    }
    Event::Loaded { written, failed, late_max_ms: late_max as f64 / 1e6 }
}

/// A client's socket, shared by its read loop and the load task; a write
/// holds the lock so a pong and an op never interleave their bytes.
struct Conn {
    stream: TcpStream,
    write: tokio::sync::Mutex<()>,
}

impl Conn {
    async fn write_all(&self, mut buf: &[u8]) -> std::io::Result<()> {
        let _writing = self.write.lock().await;
        while !buf.is_empty() {
            match self.stream.try_write(buf) {
                Ok(n) => buf = &buf[n..],
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => self.stream.writable().await?,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// A connected client's socket, the bytes read past its handshake, and its
/// connection id from the welcome frame.
type Opened = (TcpStream, Vec<u8>, String);

/// Open every closed slot; a slot that fails is tried again (at most three
/// attempts), as a real client would, and the retries are counted.
async fn connect_all(spec: &Spec, state: &Shared) -> Event {
    let start_ns = wire::now_ns();
    let (mut ok, mut retried, mut max_ms, mut slow) = (0, 0, 0.0f64, 0);
    let mut last: (usize, Option<String>) = (0, None);
    for attempt in 0..3 {
        let (o, failed, first_error, mx, sl) = connect_pass(spec, state).await;
        ok += o;
        max_ms = max_ms.max(mx);
        slow += sl;
        last = (failed, first_error);
        if failed == 0 {
            break;
        }
        if attempt < 2 {
            retried += failed;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let end_ns = wire::now_ns();
    let open = state.borrow().open_count();
    Event::Connected { ok, failed: last.0, open, start_ns, end_ns, first_error: last.1, max_ms, slow, retried }
}

async fn connect_pass(spec: &Spec, state: &Shared) -> (usize, usize, Option<String>, f64, usize) {
    let todo: Vec<usize> = {
        let st = state.borrow();
        (0..spec.count).filter(|i| !st.open[*i]).collect()
    };
    let results: Vec<(usize, Result<Opened>, Duration)> = futures_util::stream::iter(todo)
        .map(|i| async move {
            let target = spec.targets[i % spec.targets.len()];
            let source = spec.sources[(i / spec.per_source.max(1)).min(spec.sources.len() - 1)];
            let t = std::time::Instant::now();
            let r = connect_one(target, source, spec.channel_of(i).as_deref()).await;
            (i, r, t.elapsed())
        })
        .buffer_unordered(spec.concurrency.max(1))
        .collect()
        .await;
    let (mut ok, mut failed, mut first_error) = (0, 0, None);
    let max_ms = results.iter().map(|r| r.2.as_secs_f64() * 1e3).fold(0.0, f64::max);
    let slow = results.iter().filter(|r| r.2 > Duration::from_millis(500)).count();
    for (i, r, _) in results {
        match r {
            Ok((stream, leftover, id)) => {
                ok += 1;
                {
                    let mut st = state.borrow_mut();
                    st.open[i] = true;
                    st.ids[i] = id;
                }
                let client = (spec.first_client + i) as u64;
                let keys = Keys { client, channel: spec.spread.as_ref().map_or(0, |s| client % s.count.max(1) as u64) };
                let conn = Rc::new(Conn { stream, write: tokio::sync::Mutex::new(()) });
                state.borrow_mut().conns[i] = Some(conn.clone());
                tokio::task::spawn_local(read_loop(i, keys, conn, leftover, state.clone()));
            }
            Err(e) => {
                failed += 1;
                first_error.get_or_insert_with(|| format!("{e:#}"));
            }
        }
    }
    (ok, failed, first_error, max_ms, slow)
}

/// TCP connect from `source`, WebSocket upgrade, welcome frame, and the
/// subscribe reply when subscribing. Returns bytes read past that.
async fn connect_one(target: SocketAddr, source: Ipv4Addr, channel: Option<&str>) -> Result<Opened> {
    let work = async {
        let sock = TcpSocket::new_v4()?;
        sock.set_reuseaddr(true)?;
        // Choose the source port at connect, by the whole 4-tuple: bind(addr:0)
        // would reserve a port per address, and once about half the range of
        // an address is taken each such bind costs milliseconds (measured:
        // 12 µs at 2,000 ports, 1–5 ms past 8,000), which made 50,000
        // connects take 46 s.
        nix::sys::socket::setsockopt(&sock, nix::sys::socket::sockopt::IpBindAddressNoPort, &true)
            .context("IP_BIND_ADDRESS_NO_PORT")?;
        sock.bind(SocketAddr::new(source.into(), 0)).with_context(|| format!("bind {source}:0"))?;
        let mut s = sock.connect(target).await.with_context(|| format!("connect {target}"))?;
        s.set_nodelay(true)?;
        s.write_all(&wire::upgrade_request(&target, "/ws")).await?;
        let mut buf = Vec::with_capacity(1024);
        let head_end = loop {
            if s.read_buf(&mut buf).await? == 0 {
                bail!("{target} closed during the upgrade");
            }
            if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
            if buf.len() > 16 * 1024 {
                bail!("upgrade response too long");
            }
        };
        if !buf.starts_with(b"HTTP/1.1 101") {
            let line = String::from_utf8_lossy(&buf[..buf.iter().position(|b| *b == b'\r').unwrap_or(0)]).into_owned();
            bail!("upgrade refused by {target}: {line}");
        }
        buf.drain(..head_end);
        let welcome = next_text(&mut s, &mut buf).await?;
        if !contains(&welcome, br#""type":"welcome""#) {
            bail!("expected the welcome frame, got {}", String::from_utf8_lossy(&welcome));
        }
        let id = wire::string_after(&welcome, br#""connection":""#)
            .map(|id| String::from_utf8_lossy(id).into_owned())
            .ok_or_else(|| anyhow!("no connection id in the welcome {}", String::from_utf8_lossy(&welcome)))?;
        if let Some(ch) = channel {
            let mut f = Vec::new();
            let cmd = ClientOp::subscribe(1, ch.to_string(), None).to_text();
            wire::put_client_frame(&mut f, 1, cmd.as_bytes());
            s.write_all(&f).await?;
            let reply = next_text(&mut s, &mut buf).await?;
            if !contains(&reply, br#""type":"reply""#) || !contains(&reply, br#""ok":true"#) {
                bail!("subscribe to {ch} failed: {}", String::from_utf8_lossy(&reply));
            }
        }
        Ok((s, buf, id))
    };
    tokio::time::timeout(Duration::from_secs(20), work).await.map_err(|_| anyhow!("connect to {target} timed out"))?
}

async fn next_text(s: &mut TcpStream, buf: &mut Vec<u8>) -> Result<Vec<u8>> {
    loop {
        if let Some((op, r, n)) = wire::parse_frame(buf).map_err(|e| anyhow!(e))? {
            let payload = buf[r].to_vec();
            buf.drain(..n);
            match op {
                1 => return Ok(payload),
                8 => bail!("closed by the server: {}", String::from_utf8_lossy(&payload)),
                _ => continue,
            }
        }
        if s.read_buf(buf).await? == 0 {
            bail!("connection ended");
        }
    }
}

/// Per connection: which sequence numbers of the current phase it has seen
/// (a bit per number when every client gets every message; the list of
/// numbers when messages are targeted, a few per client), and the highest
/// channel offset so far.
struct Seen {
    phase: u64,
    bits: Vec<u64>,
    list: Vec<u64>,
    /// One past the highest number in `list`: a larger one cannot be a
    /// duplicate, so the common case needs no search.
    list_end: u64,
    last_offset: u64,
    keys: Keys,
}

/// What a targeted message's `c` must be for this connection.
#[derive(Clone, Copy)]
struct Keys {
    client: u64,
    channel: u64,
}

async fn read_loop(slot: usize, keys: Keys, conn: Rc<Conn>, mut pending: Vec<u8>, state: Shared) {
    let stream = &conn.stream;
    let mut seen = Seen { phase: 0, bits: Vec::new(), list: Vec::new(), list_end: 0, last_offset: 0, keys };
    let mut replies = Vec::new();
    if !pending.is_empty() {
        let now = wire::now_ns();
        let mut st = state.borrow_mut();
        let used = consume(&pending, now, &mut st, &mut seen, &mut replies);
        pending.drain(..used.unwrap_or(pending.len()));
    }
    'conn: loop {
        if stream.readable().await.is_err() {
            break;
        }
        let r = SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            let n = match stream.try_read(&mut scratch) {
                Ok(0) => return Err(()),
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
                Err(_) => return Err(()),
            };
            let now = wire::now_ns();
            let mut st = state.borrow_mut();
            st.bytes += n as u64;
            if pending.is_empty() {
                match consume(&scratch[..n], now, &mut st, &mut seen, &mut replies) {
                    Some(used) => pending.extend_from_slice(&scratch[used..n]),
                    None => return Err(()),
                }
            } else {
                pending.extend_from_slice(&scratch[..n]);
                match consume(&pending, now, &mut st, &mut seen, &mut replies) {
                    Some(used) => {
                        pending.drain(..used);
                    }
                    None => return Err(()),
                }
            }
            Ok(())
        });
        if r.is_err() {
            break 'conn;
        }
        if pending.capacity() > 64 * 1024 && pending.len() < 1024 {
            pending.shrink_to(1024);
        }
        if !replies.is_empty() {
            // Pongs (and the close echo): rare.
            if conn.write_all(&replies).await.is_err() {
                break 'conn;
            }
            replies.clear();
        }
    }
    let mut st = state.borrow_mut();
    st.open[slot] = false;
    st.conns[slot] = None;
    st.closed += 1;
}

/// Account for every complete frame at the start of `buf`; how many bytes
/// were used, or `None` when the connection must end (close frame, bad frame).
fn consume(buf: &[u8], now: u64, st: &mut State, seen: &mut Seen, replies: &mut Vec<u8>) -> Option<usize> {
    let mut off = 0;
    while let Some((op, r, n)) = wire::parse_frame(&buf[off..]).ok()? {
        let payload = &buf[off + r.start..off + r.end];
        match op {
            1 => on_text(payload, now, st, seen),
            8 => {
                wire::put_client_frame(replies, 8, &payload[..payload.len().min(2)]);
                return None;
            }
            9 => wire::put_client_frame(replies, 10, payload),
            _ => {}
        }
        off += n;
    }
    Some(off)
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// A delivery is any text frame carrying the benchmark's `"s"` and `"t"`
/// (welcome and reply frames have neither), whatever the key order, as
/// JSON or (the seed's form) inside a JSON string.
fn on_text(p: &[u8], now: u64, st: &mut State, seen: &mut Seen) {
    if contains(p, br#""type":"reply""#) && !on_reply(p, st) {
        return;
    }
    let (Some(seq), Some(t)) = (wire::field(p, b's'), wire::field(p, b't')) else {
        return;
    };
    st.last_recv_ns = now;
    // Per channel, the hub's offsets must rise on every connection (each
    // connection of the channels workload is on one channel; the hub is
    // not restarted during a run, so the epoch does not change).
    if let Some(offset) = wire::number_after(p, br#""offset":"#) {
        if offset <= seen.last_offset {
            st.out_of_order += 1;
        }
        seen.last_offset = seen.last_offset.max(offset);
    }
    let Phase { id, first, count, expect } = st.phase;
    if seq < first || seq >= first + count {
        st.stray += 1;
        return;
    }
    let i = (seq - first) as usize;
    if expect == Expect::Everyone {
        if seen.phase != id {
            seen.phase = id;
            seen.bits.clear();
            seen.bits.resize(count.div_ceil(64) as usize, 0);
        }
        let (w, b) = (i / 64, 1u64 << (i % 64));
        if seen.bits[w] & b != 0 {
            st.duplicates += 1;
            return;
        }
        seen.bits[w] |= b;
    } else {
        let want = if expect == Expect::Client { seen.keys.client } else { seen.keys.channel };
        if wire::field(p, b'c') != Some(want) {
            st.misdelivered += 1;
            return;
        }
        if seen.phase != id {
            seen.phase = id;
            seen.list.clear();
            if seen.list.capacity() > 1024 {
                seen.list.shrink_to(64);
            }
            seen.list_end = 0;
        }
        if seq >= seen.list_end {
            seen.list_end = seq + 1;
        } else if seen.list.contains(&seq) {
            st.duplicates += 1;
            return;
        }
        seen.list.push(seq);
    }
    st.counts[i] += 1;
    st.unique += 1;
    st.hist.saturating_record(now.saturating_sub(t) / 1000);
}

/// A reply to a load's op (the subscribe replies were read while
/// connecting): counted, and marked accepted by its id (the op's sequence
/// number). True when it goes on to be a delivery: an rpc's echoed data.
fn on_reply(p: &[u8], st: &mut State) -> bool {
    if contains(p, br#""error":"#) {
        st.op_errors += 1;
        if st.first_op_error.is_none() {
            st.first_op_error = Some(String::from_utf8_lossy(&p[..p.len().min(300)]).into_owned());
        }
        return false;
    }
    st.op_ok += 1;
    let Phase { first, count, .. } = st.phase;
    if let Some(id) = wire::number_after(p, br#""id":"#)
        && id >= first
        && id < first + count
    {
        let i = (id - first) as usize;
        st.accepted[i / 64] |= 1 << (i % 64);
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(first: u64, count: u64, expect: Expect) -> State {
        State {
            phase: Phase { id: 1, first, count, expect },
            counts: vec![0; count as usize],
            hist: Histogram::new_with_bounds(1, 120_000_000, 3).unwrap(),
            unique: 0,
            duplicates: 0,
            stray: 0,
            closed: 0,
            last_recv_ns: 0,
            bytes: 0,
            misdelivered: 0,
            out_of_order: 0,
            accepted: vec![0; count.div_ceil(64) as usize],
            op_ok: 0,
            op_errors: 0,
            first_op_error: None,
            conns: vec![None],
            open: vec![true],
            ids: vec!["gw-0:1".to_owned()],
        }
    }

    fn seen(client: u64, channel: u64) -> Seen {
        Seen {
            phase: 0,
            bits: Vec::new(),
            list: Vec::new(),
            list_end: 0,
            last_offset: 0,
            keys: Keys { client, channel },
        }
    }

    fn unicast(seq: u64, c: u64) -> Vec<u8> {
        let mut data = Vec::new();
        wire::targeted_json(seq, 1, c, 64, &mut data);
        format!(r#"{{"type":"message","data":{}}}"#, String::from_utf8(data).unwrap()).into_bytes()
    }

    #[test]
    fn targeted_deliveries_are_checked_for_receiver_and_duplicates() {
        let mut st = state(100, 10, Expect::Client);
        let mut me = seen(7, 0);
        on_text(&unicast(103, 7), 10, &mut st, &mut me);
        on_text(&unicast(101, 7), 10, &mut st, &mut me);
        on_text(&unicast(103, 7), 10, &mut st, &mut me); // again: a duplicate
        on_text(&unicast(104, 8), 10, &mut st, &mut me); // for client 8: misdelivered
        on_text(&unicast(99, 7), 10, &mut st, &mut me); // an earlier phase's
        assert_eq!((st.unique, st.duplicates, st.misdelivered, st.stray), (2, 1, 1, 1));
        assert_eq!(st.counts, [0, 1, 0, 1, 0, 0, 0, 0, 0, 0]);
        // The seed's form: the same data inside a JSON string.
        let text = String::from_utf8(unicast(105, 7)).unwrap();
        let data = &text[text.find(r#""data":"#).unwrap() + 7..text.len() - 1];
        let seed = format!(r#"{{"type":"message","data":{}}}"#, serde_json::to_string(data).unwrap());
        on_text(seed.as_bytes(), 10, &mut st, &mut me);
        assert_eq!((st.unique, st.counts[5]), (3, 1));
    }

    #[test]
    fn load_replies_are_counted_and_an_rpc_echo_is_a_delivery() {
        let mut st = state(10, 70, Expect::Client);
        let mut me = seen(7, 0);
        // A publish accepted (the gateway's keys come sorted), one refused.
        on_text(br#"{"epoch":"e","id":12,"ok":true,"offset":3,"type":"reply"}"#, 10, &mut st, &mut me);
        on_text(
            br#"{"error":{"code":"permission_denied","message":"no"},"id":13,"type":"reply"}"#,
            10,
            &mut st,
            &mut me,
        );
        // An rpc's echo: accepted, and a delivery to its caller.
        let mut data = Vec::new();
        wire::targeted_json(75, 1, 7, 0, &mut data);
        let echo = format!(r#"{{"data":{},"id":75,"ok":true,"type":"reply"}}"#, String::from_utf8(data).unwrap());
        on_text(echo.as_bytes(), 10, &mut st, &mut me);
        assert_eq!((st.op_ok, st.op_errors, st.unique), (2, 1, 1));
        assert!(st.first_op_error.as_deref().unwrap().contains("permission_denied"));
        assert_eq!(st.accepted, [1 << 2, 1 << 1]);
        assert_eq!(st.counts[65], 1);
    }

    #[test]
    fn load_ops_spread_over_publishers_and_channels() {
        let load = Load {
            first: 1,
            count: 4_000,
            per_sec: 1_000.0,
            start_ns: 0,
            kind: LoadOp::Publish,
            publishers: 20,
            stride: 10,
            channels: 20,
            prefix: "bench:".to_owned(),
            size: 0,
        };
        let mut by_publisher = [0u32; 20];
        let mut by_channel = [0u32; 20];
        for seq in 1..=4_000 {
            let g = load.publisher(seq);
            assert_eq!(g % 10, 0, "only every 10th client publishes");
            by_publisher[g / 10] += 1;
            by_channel[load.channel(seq)] += 1;
        }
        // Roughly even: 200 each.
        assert!(by_publisher.iter().all(|n| (120..280).contains(n)), "{by_publisher:?}");
        assert!(by_channel.iter().all(|n| (120..280).contains(n)), "{by_channel:?}");
        assert_eq!(load.due_ns(1_001), 1_000_000_000);
    }

    #[test]
    fn channel_offsets_must_rise() {
        let mut st = state(1, 10, Expect::Channel);
        let mut me = seen(7, 3);
        let frame = |seq: u64, ch: u64, offset: u64| {
            let mut data = Vec::new();
            wire::targeted_json(seq, 1, ch, 0, &mut data);
            format!(
                r#"{{"type":"message","channel":"bench-{ch}","data":{},"epoch":"ab12","offset":{offset}}}"#,
                String::from_utf8(data).unwrap()
            )
            .into_bytes()
        };
        on_text(&frame(1, 3, 5), 10, &mut st, &mut me);
        on_text(&frame(2, 3, 6), 10, &mut st, &mut me);
        on_text(&frame(4, 3, 8), 10, &mut st, &mut me);
        on_text(&frame(3, 3, 7), 10, &mut st, &mut me); // older than the one before
        on_text(&frame(5, 4, 9), 10, &mut st, &mut me); // another channel's
        assert_eq!((st.unique, st.out_of_order, st.misdelivered), (4, 1, 1));
    }
}
