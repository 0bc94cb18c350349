//! The per-message ceiling: the least a server must do to carry one targeted
//! message from an HTTP request to one WebSocket, measured with the same
//! clients and the same publisher as pushmesh.
//!
//! One process (`msg-ceiling-server`, hidden), two listeners:
//!
//! - **WebSocket clients**: one accept thread does the handshake and sends a
//!   welcome carrying an id (`ceiling:<n>`, as pushmesh's `gw-0:<n>`), then
//!   files the socket (blocking, `TCP_NODELAY`) in slot `n` of a table
//!   sized up front, so looking an id up on the hot path is one atomic load
//!   and no lock on the table.
//! - **HTTP**: one `epoll` loop (mio) per core, all polling the one listening
//!   socket. A loop parses requests with `httparse`, the body with
//!   `serde_json` (borrowing: the data is not copied before the frame is
//!   built), writes one text frame `{"type":"message","data":…}` (the same
//!   bytes a gateway sends) straight into the addressed socket under that
//!   socket's own mutex, and answers `200 {"ok":true}`.
//!
//! No runtime, no queues, no hops between threads: what is left is the
//! system calls one message needs (read the request, write the frame, write
//! the answer) and the parsing. Routes: `POST /send` (`{"connection":…,
//! "data":…}`), `POST /batch` (`send` ops only), and the seed's
//! `GET /?to_worker_id=ceiling&to_connection_id=…&content=…`.

use std::borrow::Cow;
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use mio::{Events, Interest, Poll, Token};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::wire;

/// The gateway id in the welcome (and the seed form's `to_worker_id`).
const GATEWAY: &str = "ceiling";

type Table = Arc<Vec<OnceLock<Mutex<TcpStream>>>>;

pub fn server_main(threads: usize, capacity: usize) -> std::process::ExitCode {
    // Die with the benchmark, even if it is killed outright.
    let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL);
    let (ws, http) = match (listen(), listen()) {
        (Ok(w), Ok(h)) => (w, h),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("msg-ceiling: bind: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let (ws_addr, http_addr) = (ws.local_addr().expect("bound"), http.local_addr().expect("bound"));
    println!(
        "{}",
        serde_json::json!({"service": "msg-ceiling", "listening": {"ws": ws_addr.to_string(), "http": http_addr.to_string()}})
    );
    let _ = std::io::stdout().flush();
    let table: Table = Arc::new((0..capacity).map(|_| OnceLock::new()).collect());
    let accept_table = table.clone();
    std::thread::spawn(move || accept_clients(ws, &accept_table));
    if let Err(e) = http.set_nonblocking(true) {
        eprintln!("msg-ceiling: {e}");
        return std::process::ExitCode::FAILURE;
    }
    let loops: Vec<_> = (0..threads.max(1))
        .map(|_| {
            let listener = http.try_clone().expect("clone the listening socket");
            let table = table.clone();
            std::thread::spawn(move || {
                if let Err(e) = serve_http(listener, &table) {
                    eprintln!("msg-ceiling: HTTP loop: {e}");
                }
            })
        })
        .collect();
    for l in loops {
        let _ = l.join();
    }
    std::process::ExitCode::FAILURE
}

/// A listener on 127.0.0.1, port chosen by the kernel, with a backlog of
/// 4096: the standard library's 128 drops SYNs when the workers connect
/// 256 clients at once, and each costs a 1 s retransmit.
fn listen() -> std::io::Result<TcpListener> {
    use nix::sys::socket::{self, AddressFamily, Backlog, SockFlag, SockType, SockaddrIn};
    use std::os::fd::AsRawFd;
    let fd = socket::socket(AddressFamily::Inet, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
    socket::setsockopt(&fd, socket::sockopt::ReuseAddr, &true)?;
    socket::bind(fd.as_raw_fd(), &SockaddrIn::new(127, 0, 0, 1, 0))?;
    socket::listen(&fd, Backlog::new(4096)?)?;
    Ok(TcpListener::from(fd))
}

fn accept_clients(listener: TcpListener, table: &Table) {
    let mut n = 0usize;
    for s in listener.incoming() {
        let Ok(s) = s else { continue };
        if n >= table.len() {
            eprintln!("msg-ceiling: more than {} clients; refused", table.len());
            continue;
        }
        match handshake(&s, n) {
            Ok(()) => {
                let _ = table[n].set(Mutex::new(s));
                n += 1;
            }
            Err(e) => eprintln!("msg-ceiling: handshake: {e}"),
        }
    }
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
            return Err(ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..k]);
    }
    let text = String::from_utf8_lossy(&buf);
    let key = text
        .lines()
        .find_map(|l| {
            l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("sec-websocket-key")).map(|(_, v)| v.trim())
        })
        .ok_or(ErrorKind::InvalidData)?;
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let mut out = format!(
        "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
    )
    .into_bytes();
    wire::put_server_text(
        &mut out,
        format!(r#"{{"type":"welcome","connection":"{GATEWAY}:{n}","gateway":"{GATEWAY}"}}"#).as_bytes(),
    );
    let mut w = s;
    w.write_all(&out)?;
    s.set_read_timeout(None)
}

struct HttpConn {
    stream: mio::net::TcpStream,
    input: Vec<u8>,
    output: Vec<u8>,
    written: usize,
}

const LISTENER: Token = Token(usize::MAX);

fn serve_http(listener: TcpListener, table: &Table) -> std::io::Result<()> {
    let mut listener = mio::net::TcpListener::from_std(listener);
    let mut poll = Poll::new()?;
    poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
    let mut events = Events::with_capacity(256);
    let mut conns: Vec<Option<HttpConn>> = Vec::new();
    let mut scratch = vec![0u8; 64 * 1024];
    let mut work = Work { frame: Vec::with_capacity(512), payload: Vec::with_capacity(512) };
    loop {
        match poll.poll(&mut events, None) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        for ev in events.iter() {
            if ev.token() == LISTENER {
                // Every loop polls the listener; whoever is first takes it.
                loop {
                    match listener.accept() {
                        Ok((mut stream, _)) => {
                            stream.set_nodelay(true)?;
                            let c = conns.iter().position(Option::is_none).unwrap_or_else(|| {
                                conns.push(None);
                                conns.len() - 1
                            });
                            poll.registry().register(&mut stream, Token(c), Interest::READABLE | Interest::WRITABLE)?;
                            conns[c] = Some(HttpConn { stream, input: Vec::new(), output: Vec::new(), written: 0 });
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(_) => break,
                    }
                }
                continue;
            }
            let c = ev.token().0;
            let Some(conn) = conns.get_mut(c).and_then(Option::as_mut) else { continue };
            if !serve_conn(conn, &mut scratch, &mut work, table)
                && let Some(mut conn) = conns[c].take()
            {
                let _ = poll.registry().deregister(&mut conn.stream);
            }
        }
    }
}

/// Read, answer and write what one connection has; false when it is done.
fn serve_conn(conn: &mut HttpConn, scratch: &mut [u8], work: &mut Work, table: &Table) -> bool {
    loop {
        match conn.stream.read(scratch) {
            Ok(0) => return false,
            Ok(n) => {
                conn.input.extend_from_slice(&scratch[..n]);
                match handle_requests(conn, work, table) {
                    Some(used) => {
                        conn.input.drain(..used);
                    }
                    None => return false,
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
    while conn.written < conn.output.len() {
        match conn.stream.write(&conn.output[conn.written..]) {
            Ok(n) => conn.written += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
    conn.output.clear();
    conn.written = 0;
    true
}

/// Buffers reused for every message of a loop.
struct Work {
    frame: Vec<u8>,
    payload: Vec<u8>,
}

/// Answer every complete request at the start of the input; the bytes used,
/// or `None` for a request that cannot be read (the connection is closed).
fn handle_requests(conn: &mut HttpConn, work: &mut Work, table: &Table) -> Option<usize> {
    let mut used = 0;
    loop {
        let input = &conn.input[used..];
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        let head = match req.parse(input) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return Some(used),
            Err(_) => return None,
        };
        let length = req
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("content-length"))
            .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse::<usize>().ok())
            .unwrap_or(0);
        if input.len() < head + length {
            return Some(used);
        }
        let body = &input[head..head + length];
        let out = &mut conn.output;
        match (req.method.unwrap_or(""), req.path.unwrap_or("")) {
            ("POST", "/send") => match serde_json::from_slice::<Send>(body) {
                Ok(s) => match deliver(table, &s.connection, s.data.get().as_bytes(), work) {
                    Ok(()) => reply(out, "200 OK", "application/json", br#"{"ok":true}"#),
                    Err(e) => reply_error(out, "404 Not Found", "unknown_connection", &e),
                },
                Err(e) => reply_error(out, "400 Bad Request", "malformed_json", &e.to_string()),
            },
            ("POST", "/batch") => match serde_json::from_slice::<Vec<Op>>(body) {
                Ok(ops) => {
                    let mut results = Vec::with_capacity(16 * ops.len() + 16);
                    results.extend_from_slice(br#"{"results":["#);
                    for (k, op) in ops.iter().enumerate() {
                        if k > 0 {
                            results.push(b',');
                        }
                        let r = match (op.op.as_ref(), &op.connection, op.data) {
                            ("send", Some(c), Some(d)) => deliver(table, c, d.get().as_bytes(), work),
                            _ => Err("only send ops with a connection and data".to_owned()),
                        };
                        match r {
                            Ok(()) => results.extend_from_slice(br#"{"ok":true}"#),
                            Err(e) => results.extend_from_slice(
                                serde_json::json!({"error": {"code": "unknown_connection", "message": e}})
                                    .to_string()
                                    .as_bytes(),
                            ),
                        }
                    }
                    results.extend_from_slice(b"]}");
                    reply(out, "200 OK", "application/json", &results);
                }
                Err(e) => reply_error(out, "400 Bad Request", "malformed_json", &e.to_string()),
            },
            ("GET", path) if path.starts_with("/?") => match seed_query(&path[2..]) {
                Some((connection, content)) => {
                    let data = serde_json::to_string(&content).unwrap_or_default();
                    match deliver(table, &connection, data.as_bytes(), work) {
                        Ok(()) => reply(out, "200 OK", "text/plain", b"ok"),
                        Err(e) => reply_error(out, "404 Not Found", "unknown_connection", &e),
                    }
                }
                None => reply_error(
                    out,
                    "400 Bad Request",
                    "invalid_request",
                    "expected to_worker_id=ceiling&to_connection_id=…&content=…",
                ),
            },
            _ => reply_error(out, "404 Not Found", "not_found", "routes: POST /send, POST /batch, GET /?…"),
        }
        used += head + length;
    }
}

#[derive(Deserialize)]
struct Send<'a> {
    #[serde(borrow)]
    connection: Cow<'a, str>,
    #[serde(borrow)]
    data: &'a RawValue,
}

#[derive(Deserialize)]
struct Op<'a> {
    #[serde(borrow)]
    op: Cow<'a, str>,
    #[serde(borrow)]
    connection: Option<Cow<'a, str>>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
}

/// One text frame with `data` to the socket `connection` names.
fn deliver(table: &Table, connection: &str, data: &[u8], work: &mut Work) -> Result<(), String> {
    let slot = connection
        .strip_prefix(GATEWAY)
        .and_then(|r| r.strip_prefix(':'))
        .and_then(|n| n.parse::<usize>().ok())
        .ok_or_else(|| format!("{connection:?} is not a connection id of this server ({GATEWAY}:<n>)"))?;
    let sock = table.get(slot).and_then(OnceLock::get).ok_or_else(|| format!("{connection} is not connected"))?;
    work.payload.clear();
    work.payload.extend_from_slice(br#"{"type":"message","data":"#);
    work.payload.extend_from_slice(data);
    work.payload.push(b'}');
    work.frame.clear();
    wire::put_server_text(&mut work.frame, &work.payload);
    let s = sock.lock().map_err(|_| "socket lock poisoned".to_owned())?;
    (&*s).write_all(&work.frame).map_err(|e| format!("{connection}: {e}"))
}

/// `to_worker_id=ceiling&to_connection_id=C&content=X` → (C, X).
fn seed_query(q: &str) -> Option<(String, String)> {
    let (mut worker, mut conn, mut content) = (None, None, None);
    for pair in q.split('&') {
        let (k, v) = pair.split_once('=')?;
        let v = String::from_utf8(wire::percent_decode(v.as_bytes())?).ok()?;
        match k {
            "to_worker_id" => worker = Some(v),
            "to_connection_id" => conn = Some(v),
            "content" => content = Some(v),
            _ => {}
        }
    }
    if worker.as_deref() != Some(GATEWAY) {
        return None;
    }
    let conn = conn?;
    let conn = if conn.contains(':') { conn } else { format!("{GATEWAY}:{conn}") };
    Some((conn, content?))
}

fn reply(out: &mut Vec<u8>, status: &str, content_type: &str, body: &[u8]) {
    let _ = write!(out, "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n", body.len());
    out.extend_from_slice(body);
}

fn reply_error(out: &mut Vec<u8>, status: &str, code: &str, message: &str) {
    let body = serde_json::json!({"error": {"code": code, "message": message}}).to_string();
    reply(out, status, "application/json", body.as_bytes());
}

// ---- the parent's side ---------------------------------------------------------

/// The running ceiling process (killed when dropped).
pub struct MsgCeiling {
    pub proc: crate::cluster::Proc,
}

impl MsgCeiling {
    pub async fn start(logs: &std::path::Path, threads: usize, capacity: usize) -> anyhow::Result<MsgCeiling> {
        let exe = std::env::current_exe()?;
        let args = ["msg-ceiling-server", "--threads", &threads.to_string(), "--capacity", &capacity.to_string()]
            .map(String::from);
        let proc = crate::cluster::start(&exe, "msg-ceiling", &args, logs).await?;
        Ok(MsgCeiling { proc })
    }

    pub fn ws_addr(&self) -> std::net::SocketAddr {
        self.proc.addr("ws")
    }

    pub fn http_addr(&self) -> std::net::SocketAddr {
        self.proc.addr("http")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_queries_are_read() {
        assert_eq!(
            seed_query("to_worker_id=ceiling&to_connection_id=ceiling%3A7&content=%7B%22s%22%3A1%7D"),
            Some(("ceiling:7".to_owned(), r#"{"s":1}"#.to_owned()))
        );
        assert_eq!(seed_query("to_worker_id=ceiling&to_connection_id=7&content=x").unwrap().0, "ceiling:7");
        assert_eq!(seed_query("to_worker_id=gw-0&to_connection_id=7&content=x"), None);
        assert_eq!(seed_query("to_worker_id=ceiling&content=x"), None);
    }
}
