//! One client WebSocket, from authentication and welcome to close.
//!
//! A connection is one task running two halves under `select!` over the
//! kernel's own halves of the TCP socket (no lock between them): the reader
//! (tungstenite's protocol state over the read half: client commands, in
//! order; a subscribe waits for the hubs' confirmation before its reply)
//! and the writer. Frames are written by whoever sends them, straight into
//! the socket when nothing is queued (see `queue`); the writer only drains
//! what the socket did not take at once, runs the heartbeat and writes the
//! close frame.
//!
//! Either side can end the connection: the client (close frame, EOF,
//! protocol error), the fan-out (slow consumer), the server API
//! (disconnect), or shutdown (1012). Frames still queued when it ends are
//! counted as dropped with the reason.

use std::io::{self, Read, Write};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketContext};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use pushmesh_common::ids::{Channel, ConnectionId};

use crate::admission::CommandBudget;
use crate::auth::{AuthError, Grant};
use crate::protocol::{self, Command, Reply, close};
use crate::queue::{OutQueue, SendError};
use crate::registry::{CloseSignal, ConnEntry, Frame, JoinError};
use crate::server::Shared;

/// Serve one upgraded connection: `read_buf` holds what the client sent
/// right behind its upgrade request, if anything.
pub async fn run(stream: TcpStream, read_buf: Bytes, shared: Arc<Shared>, raw: bool, token: Option<String>) {
    let tx = Arc::new(OutQueue::new(stream, shared.config.outbound_queue.max(2)));
    let mut inbound = Inbound::new(read_buf, tx.clone(), &shared);
    // Boxed: cold paths stay out of the connection task's resident state.
    let (grant, auth_reply_id) = match Box::pin(authenticate(&shared, token, &mut inbound)).await {
        Ok(g) => g,
        Err(e) => {
            let (code, label) = match e {
                AuthError::Expired => (close::TOKEN_EXPIRED, "expired"),
                AuthError::Invalid(_) => (close::UNAUTHORIZED, "invalid"),
                AuthError::Missing => (close::UNAUTHORIZED, "missing"),
            };
            shared.metrics.auth_failures.with_label_values(&[label]).inc();
            shared.metrics.disconnects.with_label_values(&["auth"]).inc();
            Box::pin(close_with(&tx, code, &e.to_string())).await;
            return;
        }
    };

    let seq = shared.next_seq();
    let id = ConnectionId::new(shared.gateway.clone(), seq);
    let close = Arc::new(CloseSignal::default());
    // Held in the queue, not written yet: they go first, and the writer
    // writes them once the connection is live (below); anything sent to
    // the connection meanwhile queues behind them.
    if let Some(reply_id) = auth_reply_id {
        tx.hold(protocol::wire_text(protocol::reply_frame(Some(reply_id), &Reply::Ok)));
    }
    tx.hold(protocol::wire_text(protocol::welcome_frame(
        &id.to_string(),
        shared.gateway.as_str(),
        grant.user.as_ref(),
    )));
    let entry = ConnEntry::new(tx.clone(), raw, close.clone(), grant.user.clone());
    let waits = match shared.registry.insert(seq, entry, shared.config.max_connections_per_user) {
        Ok(w) => w,
        Err(e) => {
            shared.metrics.disconnects.with_label_values(&["user_limit"]).inc();
            Box::pin(close_with(&tx, close::TOO_MANY_CONNECTIONS, &e.to_string())).await;
            return;
        }
    };
    shared.metrics.connections.inc();
    shared.metrics.accepted.inc();
    // A user's first connection here subscribes the user's topic; the
    // welcome is written only once that is live, so "welcome" means "sends
    // to this user reach this connection".
    if !waits.is_empty() {
        crate::registry::confirmed(waits, Duration::from_millis(shared.config.subscribe_timeout_ms)).await;
    }
    tracing::debug!(connection = %id, raw, user = ?grant.user, "client connected");

    let conn =
        Conn { raw, seq, shared: shared.clone(), tx: tx.clone(), close: close.clone(), grant, heard: Heard::default() };
    let reason = {
        let reader = conn.read(&mut inbound);
        let writer = write(&tx, &close, &shared, &conn.heard);
        tokio::pin!(reader, writer);
        tokio::select! {
            biased;
            r = &mut writer => r,
            () = &mut reader => {
                if close.get().is_some() {
                    // The reader asked for a close (protocol error): let the
                    // writer say why, briefly.
                    tokio::time::timeout(Duration::from_secs(1), &mut writer).await.unwrap_or("protocol_error")
                } else {
                    "client"
                }
            }
        }
    };
    // Anything still queued will never be written.
    let lost = tx.abandon();
    shared.registry.remove(seq);
    shared.metrics.connections.dec();
    shared.metrics.disconnects.with_label_values(&[reason]).inc();
    count_dropped(&shared, reason, lost);
    tracing::debug!(connection = %id, reason, "client disconnected");
}

/// Frames that will never be written, counted under the reason the
/// connection ended for (a client that left: "client_gone").
fn count_dropped(shared: &Shared, reason: &'static str, lost: u64) {
    if lost > 0 {
        let drop_reason = if reason == "client" { "client_gone" } else { reason };
        shared.metrics.dropped.with_label_values(&[drop_reason]).inc_by(lost);
    }
}

/// The read side: tungstenite's protocol state (frame parsing, size limits,
/// UTF-8 checks, the automatic pong) over the socket, reading only. What
/// it writes (pongs) goes through the outbound queue like every other
/// frame.
struct Inbound {
    ctx: WebSocketContext,
    /// Owns the socket; the reader only reads it.
    out: Arc<OutQueue>,
    /// The connection was closed or failed: nothing more to read.
    ended: bool,
}

impl Inbound {
    fn new(read_buf: Bytes, out: Arc<OutQueue>, shared: &Shared) -> Self {
        let config = Some(shared.ws_config);
        let ctx = if read_buf.is_empty() {
            WebSocketContext::new(Role::Server, config)
        } else {
            WebSocketContext::from_partially_read(read_buf.to_vec(), Role::Server, config)
        };
        Self { ctx, out, ended: false }
    }

    /// The next message; `None` once the connection is closed (as
    /// `tokio_tungstenite::WebSocketStream` would say it).
    async fn next(&mut self) -> Option<Result<Message, WsError>> {
        while !self.ended {
            match self.ctx.read(&mut SocketIo { out: &self.out }) {
                Ok(m) => return Some(Ok(m)),
                // Waits in the socket's reader slot, not its waiter list:
                // that replaces the waker hyper's connection task left
                // there, which would otherwise keep that finished task's
                // memory (1.5 KB) alive for the connection's lifetime.
                Err(WsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                    if std::future::poll_fn(|cx| self.out.socket().poll_read_ready(cx)).await.is_err() {
                        self.ended = true;
                    }
                }
                Err(e) => {
                    self.ended = true;
                    if !matches!(e, WsError::AlreadyClosed | WsError::ConnectionClosed) {
                        return Some(Err(e));
                    }
                }
            }
        }
        None
    }
}

/// tungstenite's view of the socket: non-blocking reads; writes (whole
/// frames: pongs) into the outbound queue.
struct SocketIo<'a> {
    out: &'a OutQueue,
}

impl Read for SocketIo<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.out.socket().try_read(buf)
    }
}

impl Write for SocketIo<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self.out.send_wire(Bytes::copy_from_slice(buf), false, false) {
            Ok(_) => Ok(buf.len()),
            Err(_) => Err(io::ErrorKind::BrokenPipe.into()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// With auth configured: the token from `?token=`, or from a first
/// `{"op":"auth","token":…}` within the auth timeout. Returns the grant and
/// the id of the auth command to reply to.
async fn authenticate(
    shared: &Shared,
    token: Option<String>,
    inbound: &mut Inbound,
) -> Result<(Grant, Option<u64>), AuthError> {
    let Some(auth) = &shared.auth else {
        return Ok((Grant::anonymous(), None));
    };
    if let Some(t) = token {
        return auth.check(&t).map(|g| (g, None));
    }
    let wait = Duration::from_secs(shared.config.auth_timeout_secs.max(1));
    let first = tokio::time::timeout(wait, async {
        loop {
            match inbound.next().await {
                Some(Ok(Message::Text(t))) => return Some(t),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                _ => return None,
            }
        }
    })
    .await
    .ok()
    .flatten()
    .ok_or(AuthError::Missing)?;
    let cmd: Command = serde_json::from_str(first.as_str()).map_err(|_| AuthError::Missing)?;
    match (cmd.op.as_str(), cmd.token) {
        ("auth", Some(t)) => auth.check(&t).map(|g| (g, cmd.id)),
        _ => Err(AuthError::Missing),
    }
}

/// Write a close frame behind whatever frame is half written, dropping
/// what else is queued, and give it a second to go out. Returns the
/// deliveries dropped.
async fn close_with(out: &OutQueue, code: u16, reason: &str) -> u64 {
    let lost = out.close(Some(protocol::wire_close(code, reason)));
    let _ = tokio::time::timeout(Duration::from_secs(1), out.flush()).await;
    lost
}

/// The writer half. Returns the metric reason the connection ended for.
async fn write(out: &OutQueue, close: &CloseSignal, shared: &Shared, heard: &Heard) -> &'static str {
    // Built once, not per loop turn: each fresh `notified()`/`cancelled()`
    // future would register on (and unregister from) a shared waiter list,
    // contended by every connection (measured: ~3% of the gateway's CPU
    // under fan-out load).
    let closed = close.fired();
    let stop = shared.shutdown.cancelled();
    tokio::pin!(closed, stop);
    // Heartbeat: a ping every interval; a peer heard from in none of the
    // last two intervals is gone without a FIN (a dead NAT, a pulled cable)
    // and is dropped, so it stops holding a slot, presence and memory.
    let pings = shared.config.ping_interval_secs > 0;
    let interval = Duration::from_secs(shared.config.ping_interval_secs.max(1));
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            (code, reason, metric) = &mut closed => {
                let lost = Box::pin(close_with(out, *code, reason)).await;
                count_dropped(shared, metric, lost);
                return metric;
            }
            _ = &mut stop => {
                let lost = Box::pin(close_with(out, close::SERVICE_RESTART, "server restarting: reconnect")).await;
                count_dropped(shared, "shutdown", lost);
                return "shutdown";
            }
            // Before the queue: under a steady stream of frames the
            // heartbeat must still run.
            _ = ticks.tick(), if pings => {
                if heard.since() > interval * 2 {
                    let lost = Box::pin(close_with(out, close::IDLE_TIMEOUT, "idle timeout: no answer to pings")).await;
                    count_dropped(shared, "idle", lost);
                    return "idle";
                }
                let _ = out.send_wire(protocol::wire_ping(), false, false);
                continue;
            }
            () = out.queued() => {}
        }
        // Write what the socket did not take at once. A client that stopped
        // reading leaves this stuck on a full socket: a close request (the
        // slow-consumer policy), shutdown or a silent peer then abandons the
        // socket, since not even a close frame could get through.
        let flush = out.flush();
        tokio::pin!(flush);
        let outcome = loop {
            tokio::select! {
                biased;
                r = &mut flush => break r.map_err(|_| "client"),
                (_, _, metric) = &mut closed => break Err(*metric),
                _ = &mut stop => break Err("shutdown"),
                _ = ticks.tick(), if pings => {
                    if heard.since() > interval * 2 {
                        break Err("idle");
                    }
                    // Behind the backlog: a client that keeps reading answers it.
                    let _ = out.send_wire(protocol::wire_ping(), false, false);
                }
            }
        };
        match outcome {
            Ok(written) => shared.metrics.deliveries.inc_by(written),
            Err(metric) => return metric,
        }
    }
}

fn join_error(e: JoinError) -> Reply {
    match e {
        JoinError::TooManyChannels(_) => Reply::error("limit_exceeded", e.to_string()),
        JoinError::Gone => Reply::error("closing", e.to_string()),
        JoinError::Unconfirmed => Reply::error("unavailable", e.to_string()),
    }
}

/// When the reader last heard from the client (any frame, pongs too);
/// read by the writer of the same task, so no allocation is needed.
struct Heard {
    start: std::time::Instant,
    last_ms: std::sync::atomic::AtomicU64,
}

impl Default for Heard {
    fn default() -> Self {
        Self { start: std::time::Instant::now(), last_ms: std::sync::atomic::AtomicU64::new(0) }
    }
}

impl Heard {
    fn now(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last_ms.store(ms, std::sync::atomic::Ordering::Relaxed);
    }

    fn since(&self) -> std::time::Duration {
        let last = std::time::Duration::from_millis(self.last_ms.load(std::sync::atomic::Ordering::Relaxed));
        self.start.elapsed().saturating_sub(last)
    }
}

struct Conn {
    raw: bool,
    seq: u64,
    shared: Arc<Shared>,
    tx: Arc<OutQueue>,
    close: Arc<CloseSignal>,
    grant: Grant,
    heard: Heard,
}

impl Conn {
    /// The reader half: returns when the client is gone or must be closed
    /// (in which case `close` has been fired).
    async fn read(&self, inbound: &mut Inbound) {
        let cfg = &self.shared.config;
        let mut budget = CommandBudget::new(cfg.client_commands_per_sec, cfg.client_commands_burst);
        while let Some(msg) = inbound.next().await {
            self.heard.now();
            match msg {
                Ok(Message::Text(text)) => {
                    if !budget.take() {
                        self.close.fire(
                            close::POLICY_VIOLATION,
                            format!("rate limit exceeded: at most {} commands per second", cfg.client_commands_per_sec),
                            "rate_limited",
                        );
                        return;
                    }
                    // Boxed: a command's future (a subscribe with recovery
                    // is large) would otherwise sit in every idle
                    // connection's task; commands are rare, the box cheap.
                    Box::pin(self.command(text.as_str())).await
                }
                Ok(Message::Binary(_)) => {
                    self.close.fire(
                        close::UNSUPPORTED_DATA,
                        "binary frames are not supported; send JSON text",
                        "protocol_error",
                    );
                    return;
                }
                Ok(Message::Close(_)) => return,
                Ok(_) => {} // ping/pong: tungstenite answers pings itself
                Err(WsError::Capacity(e)) => {
                    let limit = self.shared.config.max_message_bytes;
                    tracing::debug!(error = %e, "client message over the limit");
                    self.close.fire(
                        close::MESSAGE_TOO_BIG,
                        format!("message too big: the limit is {limit} bytes"),
                        "protocol_error",
                    );
                    return;
                }
                Err(WsError::Utf8(_)) => {
                    self.close.fire(close::INVALID_PAYLOAD, "text frame is not valid UTF-8", "protocol_error");
                    return;
                }
                // The peer vanished without a close frame: just gone.
                Err(WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake)) => return,
                Err(WsError::Protocol(e)) => {
                    self.close.fire(close::PROTOCOL_ERROR, format!("protocol error: {e}"), "protocol_error");
                    return;
                }
                Err(_) => return,
            }
        }
    }

    async fn command(&self, text: &str) {
        let cmd: Command = match serde_json::from_str(text) {
            Ok(c) => c,
            Err(e) => {
                self.count("invalid", "error");
                let msg =
                    format!("invalid command: {e}; expected {{\"id\":1,\"op\":\"subscribe\",\"channel\":\"news\"}}");
                self.reply(protocol::salvage_id(text), Reply::error("bad_request", msg));
                return;
            }
        };
        let (op, reply) = match cmd.op.as_str() {
            "subscribe" => ("subscribe", self.subscribe(&cmd).await),
            "unsubscribe" => ("unsubscribe", self.unsubscribe(&cmd)),
            "ping" => ("ping", Reply::Ok),
            "auth" => ("auth", Reply::error("bad_request", "already authenticated")),
            other => (
                "unknown",
                Reply::error(
                    "unknown_op",
                    format!(
                        "unknown op {:?}; expected subscribe, unsubscribe or ping",
                        pushmesh_common::ids::truncate(other, 40)
                    ),
                ),
            ),
        };
        let ok = matches!(reply, Reply::Ok | Reply::Subscribed { .. } | Reply::AlreadySent);
        self.count(op, if ok { "ok" } else { "error" });
        // Success replies only for commands that asked (with an id).
        if !matches!(reply, Reply::AlreadySent) && (!ok || cmd.id.is_some()) {
            self.reply(cmd.id, reply);
        }
    }

    fn channel(cmd: &Command) -> Result<Channel, Reply> {
        let name = cmd
            .channel
            .as_deref()
            .ok_or_else(|| Reply::error("bad_request", format!("{} needs a \"channel\"", cmd.op)))?;
        Channel::new(name).map_err(|e| Reply::error("invalid_channel", e.to_string()))
    }

    async fn subscribe(&self, cmd: &Command) -> Reply {
        let channel = match Self::channel(cmd) {
            Ok(c) => c,
            Err(r) => return r,
        };
        if !self.grant.may_subscribe(channel.as_str()) {
            return Reply::error(
                "permission_denied",
                format!("your token does not allow channel {:?}", channel.as_str()),
            );
        }
        let timeout = Duration::from_millis(self.shared.config.subscribe_timeout_ms);
        let max = self.shared.config.max_channels_per_connection;
        let topic = channel.topic();
        let Some(since) = &cmd.since else {
            return match self.shared.registry.join(self.seq, &topic, max, timeout).await {
                Ok(_) => Reply::Ok,
                Err(e) => join_error(e),
            };
        };
        // Recovery: subscribe with live deliveries held back, fetch what
        // was missed, then queue reply + missed + held-back in that order.
        if let Err(e) = self.shared.registry.join_recovering(self.seq, &topic, max, timeout).await {
            return join_error(e);
        }
        let hist = self.shared.links.history(channel.as_str(), &since.epoch, since.offset).await;
        let recovered = hist.as_ref().is_some_and(|h| h.recovered && h.epoch == since.epoch);
        let (epoch, top) = hist.as_ref().map_or((None, 0), |h| (Some(h.epoch.clone()), h.top));
        let mut frames = Vec::new();
        if recovered {
            for d in hist.into_iter().flat_map(|h| h.messages) {
                let Ok(data) = std::str::from_utf8(&d.data) else { continue };
                let text =
                    if self.raw { crate::fanout::raw_frame(&d, data) } else { crate::fanout::json_frame(&d, data) };
                frames.push((d.offset, text));
            }
        }
        let reply = protocol::reply_frame(cmd.id, &Reply::Subscribed { recovered, epoch, offset: top });
        let since = recovered.then_some((since.epoch.as_str(), since.offset));
        self.shared.registry.finish_recovery(self.seq, &topic, reply, frames, since);
        Reply::AlreadySent
    }

    fn unsubscribe(&self, cmd: &Command) -> Reply {
        match Self::channel(cmd) {
            Ok(channel) => {
                self.shared.registry.leave(self.seq, &channel.topic());
                Reply::Ok
            }
            Err(r) => r,
        }
    }

    fn reply(&self, id: Option<u64>, reply: Reply) {
        let frame = Frame { text: protocol::reply_frame(id, &reply), is_delivery: false };
        if let Err(SendError::Full) = self.tx.try_send(frame) {
            self.close.fire(close::TRY_AGAIN_LATER, "slow consumer: outbound queue full", "slow_consumer");
        }
    }

    fn count(&self, op: &str, result: &str) {
        self.shared.metrics.commands.with_label_values(&[op, result]).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    async fn shared() -> Arc<Shared> {
        let config = crate::config::Config::ephemeral(vec!["http://127.0.0.1:1".into()]);
        let gw = crate::server::Gateway::bind(config, tokio_util::sync::CancellationToken::new()).await.unwrap();
        gw.shared().clone()
    }

    async fn socket() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        (l.accept().await.unwrap().0, c)
    }

    /// An idle connection's memory is mostly this future (it lives in the
    /// task for the connection's lifetime): the gateway's budget is 4 KiB
    /// per idle connection in all. Measured 1,616 bytes (release; 1,624
    /// debug; rustc 1.95), in a 2,048-byte task allocation; cold paths are
    /// boxed to keep it so.
    #[tokio::test]
    async fn the_connection_task_stays_small() {
        let shared = shared().await;
        let (s, _c) = socket().await;
        let fut = run(s, Bytes::new(), shared, false, None);
        let size = std::mem::size_of_val(&fut);
        assert!(size <= 1792, "connection::run's future grew to {size} bytes");
    }
}
