//! The machine's own ceiling: a minimal program that accepts WebSocket
//! clients and writes pre-built frames to them, nothing else: no hub, no
//! routing, no queues, no async runtime; blocking `write`s from one thread
//! per share of the sockets. It runs as G processes, like the gateways, with
//! as many threads in total as the machine has cores, and is read by the same
//! client workers as pushmesh.
//!
//! Two modes: one frame per `write` (each message to every socket in turn),
//! and several frames per `write` (every message already due, up to
//! `batch`, packed into one buffer, which is what a gateway that flushes a
//! queue does when it falls behind).

use std::io::{BufRead, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use crate::wire;

#[derive(Debug, Serialize, Deserialize)]
struct Run {
    first: u64,
    count: u64,
    per_sec: f64,
    start_ns: u64,
    batch: usize,
    pad: usize,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Done {
    sockets: usize,
    dead: usize,
}

// ---- the server process ----------------------------------------------------

pub fn server_main(threads: usize) -> std::process::ExitCode {
    let listener = match TcpListener::bind("127.0.0.1:0") {
        Ok(l) => l,
        Err(e) => {
            eprintln!("ceiling: bind: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let addr = listener.local_addr().expect("bound");
    println!("{}", serde_json::json!({"service": "ceiling", "listening": {"http": addr.to_string()}}));
    let _ = std::io::stdout().flush();
    let shards: Arc<Vec<Mutex<Vec<TcpStream>>>> = Arc::new((0..threads.max(1)).map(|_| Mutex::default()).collect());
    let accept_shards = shards.clone();
    std::thread::spawn(move || {
        let mut next = 0usize;
        for (n, s) in listener.incoming().enumerate() {
            let Ok(s) = s else { continue };
            if handshake(&s, n).is_ok() {
                accept_shards[next % accept_shards.len()].lock().expect("shard").push(s);
                next += 1;
            }
        }
    });
    // Commands on stdin; EOF (the parent went away) ends the process.
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let Ok(run) = serde_json::from_str::<Run>(&line) else {
            eprintln!("ceiling: bad command {line:?}");
            continue;
        };
        let done = std::thread::scope(|scope| {
            let handles: Vec<_> = shards.iter().map(|shard| scope.spawn(|| write_schedule(shard, &run))).collect();
            handles.into_iter().fold(Done::default(), |mut acc, h| {
                let d = h.join().expect("shard thread");
                acc.sockets += d.sockets;
                acc.dead += d.dead;
                acc
            })
        });
        println!("{}", serde_json::to_string(&done).expect("json"));
        let _ = std::io::stdout().flush();
    }
    std::process::ExitCode::SUCCESS
}

fn handshake(s: &TcpStream, n: usize) -> std::io::Result<()> {
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    let mut r = s;
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let k = r.read(&mut chunk)?;
        if k == 0 || buf.len() > 16 * 1024 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..k]);
    }
    let text = String::from_utf8_lossy(&buf);
    let key = text
        .lines()
        .find_map(|l| {
            l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("sec-websocket-key")).map(|(_, v)| v.trim())
        })
        .ok_or(std::io::ErrorKind::InvalidData)?;
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let mut out = format!(
        "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
    )
    .into_bytes();
    wire::put_server_text(
        &mut out,
        format!(r#"{{"type":"welcome","connection":"ceiling:{n}","gateway":"ceiling"}}"#).as_bytes(),
    );
    let mut w = s;
    w.write_all(&out)
}

fn write_schedule(shard: &Mutex<Vec<TcpStream>>, run: &Run) -> Done {
    let mut socks = shard.lock().expect("shard");
    let gap_ns = 1e9 / run.per_sec.max(0.001);
    let batch = run.batch.max(1);
    let mut dead = vec![false; socks.len()];
    let mut buf = Vec::with_capacity(256 * batch);
    let mut i = 0u64;
    while i < run.count {
        let due = |k: u64| run.start_ns + (k as f64 * gap_ns) as u64;
        let now = wire::now_ns();
        if now < due(i) {
            let wait = due(i) - now;
            if wait > 200_000 {
                std::thread::sleep(Duration::from_nanos(wait - 100_000));
            } else {
                std::hint::spin_loop();
            }
            continue;
        }
        // Everything due now, up to `batch` frames, goes in one write.
        buf.clear();
        let mut k = 0;
        while k < batch as u64 && i + k < run.count && (k == 0 || due(i + k) <= now) {
            wire::put_server_text(&mut buf, wire::message_json(run.first + i + k, due(i + k), run.pad).as_bytes());
            k += 1;
        }
        for (j, s) in socks.iter_mut().enumerate() {
            if !dead[j] && s.write_all(&buf).is_err() {
                dead[j] = true;
            }
        }
        i += k;
    }
    let d = dead.iter().filter(|d| **d).count();
    // Drop dead sockets so later runs do not count them again.
    let mut j = 0;
    socks.retain(|_| {
        j += 1;
        !dead[j - 1]
    });
    Done { sockets: socks.len(), dead: d }
}

// ---- the parent's side ---------------------------------------------------------

pub struct CeilingProc {
    child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
    pub addr: SocketAddr,
}

pub struct Ceiling {
    pub procs: Vec<CeilingProc>,
}

impl Ceiling {
    /// `procs` processes with `threads` writer threads each.
    pub async fn start(procs: usize, threads: usize, logs: &Path) -> Result<Ceiling> {
        std::fs::create_dir_all(logs)?;
        let exe = std::env::current_exe()?;
        let mut out = Vec::new();
        for i in 0..procs {
            let log = std::fs::File::create(logs.join(format!("ceiling-{i}.log")))?;
            let mut child = Command::new(&exe)
                .args(["ceiling-server", "--threads", &threads.to_string()])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::from(log))
                .kill_on_drop(true)
                .spawn()
                .context("spawn the ceiling server")?;
            let stdin = child.stdin.take().expect("piped");
            let mut stdout = BufReader::new(child.stdout.take().expect("piped")).lines();
            let line = tokio::time::timeout(Duration::from_secs(10), stdout.next_line())
                .await
                .map_err(|_| anyhow!("ceiling server did not start"))??
                .ok_or_else(|| anyhow!("ceiling server exited"))?;
            let v: serde_json::Value = serde_json::from_str(&line)?;
            let addr = v["listening"]["http"].as_str().unwrap_or_default().parse()?;
            out.push(CeilingProc { child, stdin, stdout, addr });
        }
        Ok(Ceiling { procs: out })
    }

    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.procs.iter().map(|p| p.addr).collect()
    }

    pub fn pids(&self) -> Vec<u32> {
        self.procs.iter().filter_map(|p| p.child.id()).collect()
    }

    /// Write messages `first..first+count` at `per_sec` to every socket;
    /// returns once every process is done: (sockets that failed, the
    /// schedule's start in wall-clock ns).
    pub async fn run(
        &mut self,
        first: u64,
        count: u64,
        per_sec: f64,
        batch: usize,
        pad: usize,
    ) -> Result<(usize, u64)> {
        let start_ns = wire::now_ns() + 20_000_000;
        let line = serde_json::to_string(&Run { first, count, per_sec, start_ns, batch, pad })? + "\n";
        for p in &mut self.procs {
            p.stdin.write_all(line.as_bytes()).await?;
            p.stdin.flush().await?;
        }
        let limit = Duration::from_secs_f64(count as f64 / per_sec.max(0.001) + 120.0);
        let mut dead = 0;
        for p in &mut self.procs {
            let l = tokio::time::timeout(limit, p.stdout.next_line())
                .await
                .map_err(|_| anyhow!("ceiling run did not finish"))??
                .ok_or_else(|| anyhow!("ceiling server exited"))?;
            let d: Done = serde_json::from_str(&l)?;
            dead += d.dead;
        }
        Ok((dead, start_ns))
    }
}
