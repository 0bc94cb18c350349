//! The lean publisher: an open-loop HTTP/1.1 load generator for workloads of
//! one small request per message (tens of thousands per second).
//!
//! Why not reqwest: at 30,000+ single-request sends/s on a 2-core machine, a
//! general-purpose client (hyper's connection pool, a task and a channel per
//! request, header maps, a multi-thread runtime's wake-ups) costs about as
//! much CPU as the system under test, and its 1 ms timer makes a message up
//! to a millisecond late before it is even sent. This generator is one
//! thread and one `epoll` set (mio): a pool of keep-alive connections with at
//! most one request in flight each; at each message's scheduled time it takes
//! a free connection (the most recently freed, so few stay hot), opens
//! another one when none is free (up to a cap), and only at the cap lets the
//! request wait, which is counted. Responses are parsed with `httparse`
//! (status, `Content-Length`) and handed to the workload's [`Script`].
//!
//! The schedule is kept with `clock_nanosleep` to the absolute due time
//! (timer slack set to 1 ns for this thread) instead of `epoll_wait`'s
//! milliseconds, so a request leaves at its time, not at the next
//! millisecond; how late each one left (the lag) is recorded, so a reader
//! can tell the generator's delay from the system's.
//!
//! What a request costs the generator is mostly the kernel's: on loopback
//! the `send` also runs the server's TCP receive and wakes it. The rest is
//! kept to one sleep per scheduled time: the thread sleeps only until the
//! next request is due, never for an answer; when it wakes it collects
//! whatever answers arrived (`epoll_wait` without waiting), then sends what
//! is due. Sleeping on the timer and on the sockets separately cost two
//! wake-ups per request, and a wake-up (about a third of the generator's
//! CPU in `perf` on this VM) costs more than the `send`. An answer is read
//! with one `read` (the server sends nothing unasked, so after a whole
//! answer there is nothing to drain until the next event).
//!
//! The reqwest-based driver ([`run_reqwest`]) runs the same scripts, so the
//! two can be compared in one benchmark (`--publisher reqwest`).

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use hdrhistogram::Histogram;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use nix::sys::time::TimeSpec;
use nix::time::{ClockId, ClockNanosleepFlags, clock_gettime, clock_nanosleep};
use serde::Serialize;

use crate::wire;

/// A request's method: the benchmark sends JSON with POST, and the seed's
/// form as a GET with a query string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
}

/// What a workload sends and how it reads the answers.
pub trait Script: Send {
    /// Request `i`, scheduled at wall-clock `t_ns`: its path (with query)
    /// into `path` and, for a POST, its JSON body into `body`.
    fn request(&mut self, i: u64, t_ns: u64, path: &mut Vec<u8>, body: &mut Vec<u8>) -> Method;
    /// The answer to request `i`: accepted, or what was wrong with it.
    fn response(&mut self, i: u64, status: u16, body: &[u8]) -> Result<(), String>;
}

/// When requests are due.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Arrivals {
    /// Evenly spaced, 1/rate apart: every request finds the system as idle
    /// as the rate allows (the most wake-ups per request).
    #[default]
    Uniform,
    /// A Poisson process of the same rate (exponential gaps, the same seed
    /// every run): independent senders, so requests sometimes bunch up.
    Poisson,
}

impl Arrivals {
    /// Each request's due time, in ns from the start.
    pub fn offsets(self, requests: u64, per_sec: f64) -> Vec<u64> {
        let mean_ns = 1e9 / per_sec.max(0.001);
        match self {
            Arrivals::Uniform => (0..requests).map(|i| (i as f64 * mean_ns) as u64).collect(),
            Arrivals::Poisson => {
                let mut t = 0.0f64;
                (0..requests)
                    .map(|i| {
                        let at = t as u64;
                        // A uniform number in (0, 1] from the request's index.
                        let u = ((wire::spread_bits(i) >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
                        t += -u.ln() * mean_ns;
                        at
                    })
                    .collect()
            }
        }
    }
}

/// How many requests, how fast, over how many connections.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    pub requests: u64,
    pub per_sec: f64,
    pub arrivals: Arrivals,
    /// Most connections open at once.
    pub max_connections: usize,
    /// Connections opened before the first request.
    pub warm_connections: usize,
}

/// What the generator saw.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Outcome {
    pub requests: u64,
    /// Answered with a status and body the script accepted.
    pub ok: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    /// Wall-clock ns of request 0's scheduled time.
    #[serde(skip)]
    pub start_ns: u64,
    /// How late requests left against their schedule (0 when on time).
    pub lag_p50_ms: f64,
    pub lag_p99_ms: f64,
    pub lag_max_ms: f64,
    /// Connections opened in all.
    pub connections: usize,
    /// Requests that found every connection busy at the cap and waited.
    pub waited: u64,
    /// CPU seconds of the generator's own thread (lean generator only).
    pub thread_cpu_s: Option<f64>,
}

pub(crate) fn mono_ns() -> u64 {
    clock_gettime(ClockId::CLOCK_MONOTONIC).map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64).unwrap_or(0)
}

pub(crate) fn thread_cpu_s() -> f64 {
    clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID).map(|t| t.tv_sec() as f64 + t.tv_nsec() as f64 / 1e9).unwrap_or(0.0)
}

pub(crate) fn lag_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("histogram bounds")
}

pub(crate) fn lag_figures(out: &mut Outcome, h: &Histogram<u64>) {
    out.lag_p50_ms = h.value_at_quantile(0.5) as f64 / 1000.0;
    out.lag_p99_ms = h.value_at_quantile(0.99) as f64 / 1000.0;
    out.lag_max_ms = h.max() as f64 / 1000.0;
}

/// After the last scheduled request, answers still missing this long are errors.
const ANSWER_WITHIN: Duration = Duration::from_secs(30);

struct Conn {
    stream: TcpStream,
    connected: bool,
    /// The request being written, and how much of it is written.
    out: Vec<u8>,
    written: usize,
    /// Bytes of the answer read so far.
    input: Vec<u8>,
    /// The request in flight.
    current: Option<u64>,
}

struct Gen<'a, S: Script> {
    script: &'a mut S,
    addr: SocketAddr,
    host: String,
    poll: Poll,
    conns: Vec<Option<Conn>>,
    open: usize,
    max_connections: usize,
    /// Idle connections, most recently freed last.
    free: Vec<usize>,
    /// Requests due while every connection was busy at the cap.
    backlog: VecDeque<u64>,
    in_flight: usize,
    start_mono: u64,
    start_wall: u64,
    /// Each request's due time from the start, ns.
    offsets: Vec<u64>,
    lag: Histogram<u64>,
    out: Outcome,
    path: Vec<u8>,
    body: Vec<u8>,
    scratch: Vec<u8>,
}

/// Sleep until `due_ns` on the monotonic clock.
pub(crate) fn sleep_until(due_ns: u64) {
    let t = TimeSpec::new((due_ns / 1_000_000_000) as _, (due_ns % 1_000_000_000) as _);
    while let Err(nix::errno::Errno::EINTR) =
        clock_nanosleep(ClockId::CLOCK_MONOTONIC, ClockNanosleepFlags::TIMER_ABSTIME, &t)
    {}
}

/// Run `plan` against `addr` with `script` on a thread of its own, and
/// hand the script back with the outcome.
pub async fn run_on_thread<S: Script + 'static>(addr: SocketAddr, plan: Plan, mut script: S) -> Result<(Outcome, S)> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("publisher".to_owned())
        .spawn(move || {
            let r = run(addr, &plan, &mut script);
            let _ = tx.send(r.map(|o| (o, script)));
        })
        .context("start the publisher thread")?;
    rx.await.context("the publisher thread ended without an answer")?
}

/// Run `plan` against `addr` with `script`, blocking this thread until every
/// request is answered (or given up on).
pub fn run<S: Script>(addr: SocketAddr, plan: &Plan, script: &mut S) -> Result<Outcome> {
    // Wake at the due time, not up to 50 µs (the default slack) after it.
    let _ = nix::sys::prctl::set_timerslack(1);
    let cpu0 = thread_cpu_s();
    let poll = Poll::new().context("epoll")?;
    let mut g = Gen {
        script,
        addr,
        host: addr.to_string(),
        poll,
        conns: Vec::new(),
        open: 0,
        max_connections: plan.max_connections.max(1),
        free: Vec::new(),
        backlog: VecDeque::new(),
        in_flight: 0,
        start_mono: 0,
        start_wall: 0,
        offsets: plan.arrivals.offsets(plan.requests, plan.per_sec),
        lag: lag_histogram(),
        out: Outcome { requests: plan.requests, ..Default::default() },
        path: Vec::with_capacity(256),
        body: Vec::with_capacity(1024),
        scratch: vec![0; 64 * 1024],
    };
    let mut events = Events::with_capacity(1024);
    g.warm_up(plan.warm_connections.min(g.max_connections), &mut events)?;

    let (m0, w0) = (mono_ns(), wire::now_ns());
    g.start_mono = m0 + 5_000_000;
    g.start_wall = w0 + 5_000_000;
    g.out.start_ns = g.start_wall;
    let n = plan.requests;
    let mut next = 0u64;
    let mut give_up_at = None;
    loop {
        // Answers (and connects) that arrived meanwhile, without waiting.
        g.poll_once(&mut events, Some(Duration::ZERO))?;
        g.drain_backlog();
        let now = mono_ns();
        while next < n && g.due(next) <= now {
            g.dispatch(next);
            next += 1;
        }
        if next >= n && g.in_flight == 0 && g.backlog.is_empty() {
            break;
        }
        if next < n {
            let due = g.due(next);
            if due > mono_ns() {
                sleep_until(due);
            }
        } else {
            // Everything is sent: now wait on the sockets for the answers.
            let deadline = *give_up_at.get_or_insert(now + ANSWER_WITHIN.as_nanos() as u64);
            if now >= deadline {
                g.give_up();
                break;
            }
            g.poll_once(&mut events, Some(Duration::from_nanos(deadline - now).min(Duration::from_secs(1))))?;
        }
    }
    let mut out = std::mem::take(&mut g.out);
    lag_figures(&mut out, &g.lag);
    out.thread_cpu_s = Some(thread_cpu_s() - cpu0);
    Ok(out)
}

impl<S: Script> Gen<'_, S> {
    fn due(&self, i: u64) -> u64 {
        self.start_mono + self.offsets[i as usize]
    }

    fn poll_once(&mut self, events: &mut Events, timeout: Option<Duration>) -> Result<()> {
        match self.poll.poll(events, timeout) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => return Ok(()),
            Err(e) => return Err(e).context("epoll_wait"),
        }
        for ev in events.iter() {
            self.ready(ev.token().0, ev.is_read_closed() || ev.is_error());
        }
        Ok(())
    }

    /// Open `n` connections and wait (at most 5 s) until they are connected.
    fn warm_up(&mut self, n: usize, events: &mut Events) -> Result<()> {
        for _ in 0..n {
            let c = self.connect()?;
            self.free.push(c);
        }
        let deadline = mono_ns() + 5_000_000_000;
        while self.conns.iter().flatten().any(|c| !c.connected) {
            if mono_ns() > deadline {
                bail!("could not connect to {} within 5 s", self.addr);
            }
            self.poll_once(events, Some(Duration::from_millis(100)))?;
            if self.open < n {
                bail!("connecting to {} failed: {}", self.addr, self.out.first_error.take().unwrap_or_default());
            }
        }
        Ok(())
    }

    fn connect(&mut self) -> Result<usize> {
        let mut stream = TcpStream::connect(self.addr).with_context(|| format!("connect to {}", self.addr))?;
        stream.set_nodelay(true)?;
        let c = match self.conns.iter().position(Option::is_none) {
            Some(c) => c,
            None => {
                self.conns.push(None);
                self.conns.len() - 1
            }
        };
        self.poll.registry().register(&mut stream, Token(c), Interest::READABLE | Interest::WRITABLE)?;
        self.conns[c] = Some(Conn {
            stream,
            connected: false,
            out: Vec::with_capacity(512),
            written: 0,
            input: Vec::with_capacity(1024),
            current: None,
        });
        self.open += 1;
        self.out.connections += 1;
        Ok(c)
    }

    /// Request `i` is due: a free connection, else a new one, else wait.
    fn dispatch(&mut self, i: u64) {
        if let Some(c) = self.free.pop() {
            self.assign(c, i);
        } else if self.open < self.max_connections {
            match self.connect() {
                Ok(c) => self.assign(c, i),
                Err(e) => {
                    self.in_flight += 1;
                    self.error(format!("{e:#}"));
                }
            }
        } else {
            self.backlog.push_back(i);
            self.out.waited += 1;
        }
    }

    /// Waiting requests take the connections that closed: a waiting request
    /// is otherwise only picked up when an answer frees a connection, and
    /// a connection the server closed (`Connection: close`) frees none.
    fn drain_backlog(&mut self) {
        while !self.backlog.is_empty() && self.free.is_empty() && self.open < self.max_connections {
            let Some(i) = self.backlog.pop_front() else { break };
            match self.connect() {
                Ok(c) => self.assign(c, i),
                Err(e) => {
                    self.in_flight += 1;
                    self.error(format!("{e:#}"));
                }
            }
        }
    }

    fn assign(&mut self, c: usize, i: u64) {
        let t_ns = self.start_wall + self.offsets[i as usize];
        self.path.clear();
        self.body.clear();
        let method = self.script.request(i, t_ns, &mut self.path, &mut self.body);
        let Some(conn) = self.conns[c].as_mut() else { return };
        conn.out.clear();
        conn.written = 0;
        let head = match method {
            Method::Get => "GET ",
            Method::Post => "POST ",
        };
        conn.out.extend_from_slice(head.as_bytes());
        conn.out.extend_from_slice(&self.path);
        conn.out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
        conn.out.extend_from_slice(self.host.as_bytes());
        if method == Method::Post {
            conn.out.extend_from_slice(b"\r\nContent-Type: application/json\r\nContent-Length: ");
            conn.out.extend_from_slice(self.body.len().to_string().as_bytes());
        }
        conn.out.extend_from_slice(b"\r\n\r\n");
        conn.out.extend_from_slice(&self.body);
        conn.current = Some(i);
        self.in_flight += 1;
        if conn.connected {
            self.started(i);
            self.flush(c);
        }
    }

    /// Request `i` starts leaving now: record how late that is.
    fn started(&mut self, i: u64) {
        let late = mono_ns().saturating_sub(self.due(i));
        self.lag.saturating_record(late / 1000);
    }

    fn flush(&mut self, c: usize) {
        let Some(conn) = self.conns[c].as_mut() else { return };
        while conn.written < conn.out.len() {
            match conn.stream.write(&conn.out[conn.written..]) {
                Ok(0) => return self.fail(c, "the connection took no bytes".to_owned()),
                Ok(n) => conn.written += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return self.fail(c, format!("write: {e}")),
            }
        }
    }

    /// An event on connection `c`: connected, writable, or answers to read
    /// (`closing`: the event says the peer closed or the socket failed).
    fn ready(&mut self, c: usize, closing: bool) {
        let Some(conn) = self.conns.get_mut(c).and_then(Option::as_mut) else { return };
        if !conn.connected {
            match conn.stream.take_error() {
                Ok(None) => {}
                Ok(Some(e)) | Err(e) => return self.fail(c, format!("connect to {}: {e}", self.addr)),
            }
            match conn.stream.peer_addr() {
                Ok(_) => conn.connected = true,
                Err(e) if e.kind() == ErrorKind::NotConnected => return,
                Err(e) => return self.fail(c, format!("connect to {}: {e}", self.addr)),
            }
            if let Some(i) = conn.current {
                self.started(i);
            }
        }
        self.flush(c);
        // Read until the socket is empty (mio's readiness is edge-triggered).
        loop {
            let Some(conn) = self.conns[c].as_mut() else { return };
            match conn.stream.read(&mut self.scratch) {
                Ok(0) => return self.fail(c, "the server closed the connection before answering".to_owned()),
                Ok(n) => {
                    conn.input.extend_from_slice(&self.scratch[..n]);
                    if !self.answers(c) {
                        return;
                    }
                    // A whole answer and nothing after it: the server sends
                    // nothing unasked, so the socket is empty (a close that
                    // comes later is a new event). Saves a `read` per request.
                    if !closing && self.conns[c].as_ref().is_some_and(|conn| conn.input.is_empty()) {
                        return;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return self.fail(c, format!("read: {e}")),
            }
        }
    }

    /// Take every complete answer from `c`'s input; false when `c` is gone.
    fn answers(&mut self, c: usize) -> bool {
        loop {
            let Some(conn) = self.conns[c].as_mut() else { return false };
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut resp = httparse::Response::new(&mut headers);
            let head = match resp.parse(&conn.input) {
                Ok(httparse::Status::Complete(n)) => n,
                Ok(httparse::Status::Partial) => return true,
                Err(e) => {
                    self.fail(c, format!("unreadable HTTP answer: {e}"));
                    return false;
                }
            };
            let status = resp.code.unwrap_or(0);
            let (mut length, mut close, mut chunked) = (None, false, false);
            for h in resp.headers.iter() {
                if h.name.eq_ignore_ascii_case("content-length") {
                    length = std::str::from_utf8(h.value).ok().and_then(|v| v.trim().parse::<usize>().ok());
                } else if h.name.eq_ignore_ascii_case("connection") {
                    close = h.value.eq_ignore_ascii_case(b"close");
                } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                    chunked = true;
                }
            }
            let length = match length {
                Some(l) if !chunked => l,
                None if status == 204 || status == 304 => 0,
                _ => {
                    self.fail(c, format!("HTTP {status} answer without Content-Length (chunked bodies are not read)"));
                    return false;
                }
            };
            if conn.input.len() < head + length {
                return true;
            }
            let Some(i) = conn.current.take() else {
                self.fail(c, format!("an HTTP {status} answer to no request"));
                return false;
            };
            self.in_flight -= 1;
            match self.script.response(i, status, &conn.input[head..head + length]) {
                Ok(()) => self.out.ok += 1,
                Err(e) => {
                    self.out.errors += 1;
                    self.out.first_error.get_or_insert(e);
                }
            }
            conn.input.drain(..head + length);
            if close {
                self.drop_conn(c);
                return false;
            }
            match self.backlog.pop_front() {
                Some(j) => self.assign(c, j),
                None => self.free.push(c),
            }
        }
    }

    fn error(&mut self, why: String) {
        self.in_flight -= 1;
        self.out.errors += 1;
        self.out.first_error.get_or_insert(why);
    }

    /// Connection `c` broke: its request (if any) failed.
    fn fail(&mut self, c: usize, why: String) {
        if let Some(i) = self.conns[c].as_mut().and_then(|conn| conn.current.take()) {
            self.error(format!("request {i}: {why}"));
        }
        self.drop_conn(c);
    }

    fn drop_conn(&mut self, c: usize) {
        if let Some(mut conn) = self.conns[c].take() {
            let _ = self.poll.registry().deregister(&mut conn.stream);
            self.open -= 1;
            self.free.retain(|f| *f != c);
        }
    }

    /// The deadline passed: whatever is unanswered failed.
    fn give_up(&mut self) {
        let stuck: Vec<usize> = (0..self.conns.len()).filter(|c| self.conns[*c].is_some()).collect();
        for c in stuck {
            let Some(conn) = self.conns[c].as_mut() else { continue };
            if let Some(i) = conn.current.take() {
                self.error(format!("request {i}: no answer within {ANSWER_WITHIN:?}"));
            }
        }
        while self.backlog.pop_front().is_some() {
            self.in_flight += 1;
            self.error(format!("no connection became free within {ANSWER_WITHIN:?}"));
        }
    }
}

/// The same schedule and scripts through reqwest (one spawned task per
/// request, at most `max_connections` in flight), to measure what a
/// general-purpose client costs next to the lean generator.
pub async fn run_reqwest<S: Script>(
    http: &reqwest::Client,
    addr: SocketAddr,
    plan: &Plan,
    script: &mut S,
) -> Result<Outcome> {
    use std::sync::Arc;
    use tokio::sync::Semaphore;
    use tokio::time::Instant;
    let offsets = plan.arrivals.offsets(plan.requests, plan.per_sec);
    let sem = Arc::new(Semaphore::new(plan.max_connections.max(1)));
    let start = Instant::now() + Duration::from_millis(20);
    let start_ns = wire::now_ns() + 20_000_000;
    let mut out = Outcome { requests: plan.requests, start_ns, ..Default::default() };
    let mut lag = lag_histogram();
    let mut handles = Vec::with_capacity(plan.requests as usize);
    let (mut path, mut body) = (Vec::new(), Vec::new());
    for i in 0..plan.requests {
        let offset = Duration::from_nanos(offsets[i as usize]);
        tokio::time::sleep_until(start + offset).await;
        if sem.available_permits() == 0 {
            out.waited += 1;
        }
        let permit = sem.clone().acquire_owned().await.expect("semaphore open");
        lag.saturating_record(Instant::now().saturating_duration_since(start + offset).as_micros() as u64);
        path.clear();
        body.clear();
        let method = script.request(i, start_ns + offset.as_nanos() as u64, &mut path, &mut body);
        let url = format!("http://{addr}{}", String::from_utf8_lossy(&path));
        let req = match method {
            Method::Get => http.get(url),
            Method::Post => http.post(url).header("content-type", "application/json").body(body.clone()),
        };
        handles.push(tokio::spawn(async move {
            let r = req.send().await;
            let r = match r {
                Ok(r) => {
                    let status = r.status().as_u16();
                    r.bytes().await.map(|b| (status, b)).map_err(|e| e.to_string())
                }
                Err(e) => Err(e.to_string()),
            };
            drop(permit);
            r
        }));
    }
    for (i, h) in handles.into_iter().enumerate() {
        match h.await? {
            Ok((status, b)) => match script.response(i as u64, status, &b) {
                Ok(()) => out.ok += 1,
                Err(e) => {
                    out.errors += 1;
                    out.first_error.get_or_insert(e);
                }
            },
            Err(e) => {
                out.errors += 1;
                out.first_error.get_or_insert(e);
            }
        }
    }
    lag_figures(&mut out, &lag);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream as StdStream};

    /// A real HTTP/1.1 server on a real socket, a thread per connection:
    /// answers each request with its body echoed back (status 500 when the
    /// body says "fail"), and closes the connection after every
    /// `close_every`th answer on it (with `Connection: close`).
    fn echo_server(close_every: usize) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for s in listener.incoming() {
                let Ok(s) = s else { continue };
                std::thread::spawn(move || serve(s, close_every));
            }
        });
        addr
    }

    fn serve(mut s: StdStream, close_every: usize) {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let mut answered = 0;
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 16];
            let mut req = httparse::Request::new(&mut headers);
            if let Ok(httparse::Status::Complete(head)) = req.parse(&buf) {
                let len = req
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .map_or(0, |h| std::str::from_utf8(h.value).unwrap().parse::<usize>().unwrap());
                if buf.len() >= head + len {
                    let body = buf[head..head + len].to_vec();
                    buf.drain(..head + len);
                    answered += 1;
                    let close = close_every > 0 && answered % close_every == 0;
                    let status = if body == b"fail" { "500 Internal Server Error" } else { "200 OK" };
                    let conn = if close { "Connection: close\r\n" } else { "" };
                    let mut out =
                        format!("HTTP/1.1 {status}\r\n{conn}Content-Length: {}\r\n\r\n", body.len()).into_bytes();
                    out.extend_from_slice(&body);
                    if s.write_all(&out).is_err() || close {
                        return;
                    }
                    continue;
                }
            }
            match s.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Request i's body is its number ("fail" for the numbers in `fail`);
    /// an answer must echo the body of the request it answers.
    struct Numbers {
        answered: Vec<u32>,
        fail: Vec<u64>,
    }

    impl Script for Numbers {
        fn request(&mut self, i: u64, _t_ns: u64, path: &mut Vec<u8>, body: &mut Vec<u8>) -> Method {
            path.extend_from_slice(b"/n");
            if self.fail.contains(&i) {
                body.extend_from_slice(b"fail");
            } else {
                body.extend_from_slice(i.to_string().as_bytes());
            }
            Method::Post
        }

        fn response(&mut self, i: u64, status: u16, body: &[u8]) -> Result<(), String> {
            self.answered[i as usize] += 1;
            if status != 200 {
                return Err(format!("HTTP {status} for {i}"));
            }
            if body != i.to_string().as_bytes() {
                return Err(format!("request {i} got the answer {:?}", String::from_utf8_lossy(body)));
            }
            Ok(())
        }
    }

    fn plan(requests: u64, per_sec: f64, max_connections: usize) -> Plan {
        Plan { requests, per_sec, arrivals: Arrivals::Uniform, max_connections, warm_connections: 2 }
    }

    #[test]
    fn every_request_gets_its_own_answer_over_kept_alive_connections() {
        let addr = echo_server(0);
        let mut s = Numbers { answered: vec![0; 3000], fail: Vec::new() };
        let o = run(addr, &plan(3000, 30_000.0, 64), &mut s).unwrap();
        assert_eq!((o.ok, o.errors), (3000, 0), "{:?}", o.first_error);
        assert!(s.answered.iter().all(|n| *n == 1));
        // One request in flight per connection, and connections are reused.
        assert!(o.connections <= 64, "{} connections", o.connections);
        assert!(o.thread_cpu_s.unwrap() > 0.0);
    }

    #[test]
    fn closed_connections_are_replaced_and_errors_counted() {
        let addr = echo_server(3);
        let mut s = Numbers { answered: vec![0; 600], fail: vec![10, 20] };
        let o = run(addr, &plan(600, 5_000.0, 8), &mut s).unwrap();
        assert_eq!((o.ok, o.errors), (598, 2), "{:?}", o.first_error);
        assert_eq!(o.first_error.as_deref(), Some("HTTP 500 for 10"));
        assert!(s.answered.iter().all(|n| *n == 1));
        // Every third answer closed its connection.
        assert!(o.connections >= 200, "{} connections", o.connections);
    }

    #[test]
    fn at_the_cap_requests_wait_for_a_free_connection() {
        let addr = echo_server(0);
        let mut s = Numbers { answered: vec![0; 2000], fail: Vec::new() };
        // One connection for a burst: most requests find it busy and wait.
        let burst =
            Plan { requests: 2000, per_sec: 1e9, arrivals: Arrivals::Uniform, max_connections: 1, warm_connections: 1 };
        let o = run(addr, &burst, &mut s).unwrap();
        assert_eq!((o.ok, o.errors, o.connections), (2000, 0, 1), "{:?}", o.first_error);
        assert!(o.waited > 1000, "{} waited", o.waited);
        assert!(o.lag_max_ms > 0.0);
    }

    #[test]
    fn poisson_arrivals_keep_the_rate_and_bunch_up() {
        let u = Arrivals::Uniform.offsets(100_000, 10_000.0);
        let p = Arrivals::Poisson.offsets(100_000, 10_000.0);
        assert_eq!(u[1], 100_000);
        // 10 s at 10,000/s either way (within 2% for the Poisson process).
        let end = *p.last().unwrap() as f64 / 1e9;
        assert!((9.8..10.2).contains(&end), "{end} s");
        assert!(p.windows(2).all(|w| w[0] <= w[1]));
        // Exponential gaps: about 1 − e^−0.5 ≈ 39% are under half the mean.
        let short = p.windows(2).filter(|w| w[1] - w[0] < 50_000).count() as f64 / 1e5;
        assert!((0.37..0.42).contains(&short), "{short}");
    }

    #[test]
    fn a_refused_connection_is_an_error_not_a_hang() {
        let addr = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let mut s = Numbers { answered: vec![0; 10], fail: Vec::new() };
        let e = run(addr, &plan(10, 1000.0, 4), &mut s).unwrap_err();
        assert!(format!("{e:#}").contains("connect"), "{e:#}");
    }
}
