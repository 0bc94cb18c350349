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
//! (disconnect), shutdown (1012), or the token's expiry (4002: the reader
//! holds a timer for `exp` that a `refresh` command moves). Frames still
//! queued when it ends are counted as dropped with the reason.
//!
//! Commands that need the application's backend (a connect without a JWT,
//! proxied subscribes and publishes, rpc; see `proxy`) wait for it inside
//! the reader, in order: a slow backend delays that connection's next
//! commands, bounded by the proxy's timeout, and nothing else. A client
//! publish then goes to the channel's hub through `links`; join/leave
//! events and the disconnect notice are sent as the connection changes and
//! ends (best effort).

use std::io::{self, Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use serde_json::json;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig, WebSocketContext};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_util::sync::CancellationToken;

use pushmesh_common::ids::{Channel, ConnectionId, GatewayId, UserId};

use crate::admission::CommandBudget;
use crate::auth::{AuthError, Authenticator, Grant, GrantExtra};
use crate::config::Config;
use crate::links::{HubLinks, HubPublishError};
use crate::metrics::GatewayMetrics;
use crate::protocol::{self, Command, Reply, close};
use crate::proxy::{ConnectRequest, ConnectResult, Kind, Proxy, ProxyError};
use crate::queue::{CloseSignal, Frame, OutQueue, Outbound, SendError};
use crate::recovery::{Recovery, Subscriber};
use crate::registry::{ConnEntry, JoinError, Registry};
use pushmesh_common::namespaces::Namespaces;

/// The limits and timings every client connection runs with.
#[derive(Debug, Clone)]
pub struct Settings {
    pub outbound_queue: usize,
    pub max_message_bytes: usize,
    pub max_channels: usize,
    pub max_connections_per_user: usize,
    pub subscribe_timeout: Duration,
    /// Zero: no heartbeat.
    pub ping_interval: Duration,
    pub auth_timeout: Duration,
    pub commands_per_sec: u32,
    pub commands_burst: u32,
}

impl Settings {
    pub fn from_config(c: &Config) -> Self {
        Self {
            outbound_queue: c.outbound_queue.max(2),
            max_message_bytes: c.max_message_bytes,
            max_channels: c.max_channels_per_connection,
            max_connections_per_user: c.max_connections_per_user,
            subscribe_timeout: Duration::from_millis(c.subscribe_timeout_ms),
            ping_interval: Duration::from_secs(c.ping_interval_secs),
            auth_timeout: Duration::from_secs(c.auth_timeout_secs.max(1)),
            commands_per_sec: c.client_commands_per_sec,
            commands_burst: c.client_commands_burst,
        }
    }
}

/// What every client connection of this gateway works with.
pub struct Clients {
    pub gateway: GatewayId,
    pub settings: Settings,
    pub registry: Arc<Registry>,
    pub recovery: Arc<Recovery>,
    pub metrics: GatewayMetrics,
    /// `None`: anonymous clients (no JWT key configured).
    pub auth: Option<Authenticator>,
    pub ws_config: WebSocketConfig,
    /// Fires at shutdown: every connection closes with 1012.
    pub shutdown: CancellationToken,
    /// Options per channel prefix (defaults everywhere without a file).
    pub namespaces: Arc<Namespaces>,
    /// The application's backend, when `[proxy]` is configured.
    pub proxy: Option<Arc<Proxy>>,
    /// For client publishes (`None`: clients cannot publish here).
    pub links: Option<Arc<HubLinks>>,
    next_seq: AtomicU64,
}

impl Clients {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        gateway: GatewayId,
        settings: Settings,
        registry: Arc<Registry>,
        recovery: Arc<Recovery>,
        metrics: GatewayMetrics,
        auth: Option<Authenticator>,
        shutdown: CancellationToken,
    ) -> Self {
        let ws_config = WebSocketConfig::default()
            .read_buffer_size(256)
            .max_message_size(Some(settings.max_message_bytes))
            .max_frame_size(Some(settings.max_message_bytes));
        Self {
            gateway,
            settings,
            registry,
            recovery,
            metrics,
            auth,
            ws_config,
            shutdown,
            namespaces: Arc::new(Namespaces::default()),
            proxy: None,
            links: None,
            next_seq: AtomicU64::new(1),
        }
    }

    /// Namespaces, the backend proxy, and the hub links client publishes go through.
    pub fn with_backend(
        mut self,
        namespaces: Arc<Namespaces>,
        proxy: Option<Arc<Proxy>>,
        links: Arc<HubLinks>,
    ) -> Self {
        self.namespaces = namespaces;
        self.proxy = proxy;
        self.links = Some(links);
        self
    }

    /// The connect proxy, when on.
    pub fn connect_proxy(&self) -> Option<&Arc<Proxy>> {
        self.proxy.as_ref().filter(|p| p.config().connect)
    }

    /// The per-connection read buffer (it grows for a larger message).
    pub fn with_read_buffer(mut self, bytes: usize) -> Self {
        self.ws_config = self.ws_config.read_buffer_size(bytes.max(256));
        self
    }

    pub(crate) fn next_seq(&self) -> u64 {
        self.next_seq.fetch_add(1, Ordering::Relaxed)
    }
}

/// What the upgrade request said that authentication needs.
#[derive(Debug, Default)]
pub struct Handshake {
    pub token: Option<String>,
    pub connect: Option<ConnectRequest>,
}

impl Handshake {
    /// `None` when there is nothing to carry.
    pub fn boxed(token: Option<String>, connect: Option<ConnectRequest>) -> Option<Box<Self>> {
        (token.is_some() || connect.is_some()).then(|| Box::new(Self { token, connect }))
    }
}

/// Serve one upgraded connection: `read_buf` holds what the client sent
/// right behind its upgrade request, if anything.
/// `handshake`: the `?token=`, and what the connect proxy is told when it
/// is on (boxed, and `None` when there is neither: the arguments of this
/// function stay in every idle connection's task).
pub async fn run(
    stream: TcpStream,
    read_buf: Bytes,
    shared: Arc<Clients>,
    raw: bool,
    handshake: Option<Box<Handshake>>,
) {
    let tx = Arc::new(OutQueue::new(stream, shared.settings.outbound_queue));
    let mut inbound = Inbound::new(read_buf, tx.clone(), &shared);
    let seq = shared.next_seq();
    // Boxed: cold paths stay out of the connection task's resident state.
    let (grant, auth_reply_id) = match Box::pin(authenticate(&shared, seq, handshake, &mut inbound)).await {
        Ok(g) => g,
        Err(e) => {
            let (code, label) = match e {
                AuthError::Expired => (close::TOKEN_EXPIRED, "expired"),
                AuthError::Invalid(_) => (close::UNAUTHORIZED, "invalid"),
                AuthError::Missing => (close::UNAUTHORIZED, "missing"),
                AuthError::Refused(ref r) => (r.0, "refused"),
                AuthError::Backend(_) => (close::BACKEND_FAILED, "backend"),
            };
            shared.metrics.auth_failures.with_label_values(&[label]).inc();
            shared.metrics.disconnects.with_label_values(&["auth"]).inc();
            Box::pin(close_with(&tx, code, &e.to_string())).await;
            Box::pin(linger(&tx)).await;
            return;
        }
    };

    let id = ConnectionId::new(shared.gateway.clone(), seq);
    let close = Arc::new(CloseSignal::default());
    // Held in the queue, not written yet: they go first, and the writer
    // writes them once the connection is live (below); anything sent to
    // the connection meanwhile queues behind them.
    if let Some(reply_id) = auth_reply_id {
        tx.hold(protocol::wire_text(protocol::reply_frame(Some(reply_id), &Reply::Ok)));
    }
    tx.hold(protocol::wire_text(protocol::welcome_frame(&id, grant.user.as_ref(), raw)));
    let entry = ConnEntry::new(Outbound::Ws(tx.clone()), raw, close.clone(), grant.user.clone());
    let confirmation = match shared.registry.insert(seq, entry, shared.settings.max_connections_per_user) {
        Ok(w) => w,
        Err(e) => {
            shared.metrics.disconnects.with_label_values(&["user_limit"]).inc();
            Box::pin(close_with(&tx, close::TOO_MANY_CONNECTIONS, &e.to_string())).await;
            Box::pin(linger(&tx)).await;
            return;
        }
    };
    shared.metrics.connections.inc();
    shared.metrics.accepted.inc();
    // A user's first connection here subscribes the user's topic; the
    // welcome is written only once that is live, so "welcome" means "sends
    // to this user reach this connection".
    if !confirmation.is_empty() {
        confirmation.confirmed(shared.settings.subscribe_timeout).await;
    }
    if let Some(extra) = grant.extra.as_ref().filter(|e| !e.channels.is_empty()) {
        Box::pin(join_server_side(&shared, seq, grant.user.as_ref(), &tx, &close, extra.clone())).await;
    }
    tracing::debug!(connection = %id, raw, user = ?grant.user, "client connected");

    let conn = Conn {
        raw,
        seq,
        shared: shared.clone(),
        tx: tx.clone(),
        close: close.clone(),
        grant: std::sync::Mutex::new(grant),
        heard: Heard::default(),
    };
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
    let user = conn.grant.lock().expect("grant lock").user.clone();
    drop(conn);
    // Boxed, and taking everything: nothing stays live in this task's
    // state across the end's await.
    Box::pin(end(shared, tx, id, reason, user)).await;
}

/// Subscribe a new connection to the channels its connect answer named,
/// telling it with a `subscribed` frame for each.
async fn join_server_side(
    shared: &Clients,
    seq: u64,
    user: Option<&UserId>,
    tx: &OutQueue,
    close: &CloseSignal,
    extra: Arc<GrantExtra>,
) {
    for ch in &extra.channels {
        match shared.registry.join(seq, ch, shared.settings.max_channels, shared.settings.subscribe_timeout).await {
            Ok(added) => {
                let frame = Frame { text: protocol::membership_frame(true, ch.as_str()), is_delivery: false };
                if let Err(SendError::Full) = tx.try_send(frame) {
                    close.slow_consumer();
                }
                if added {
                    announce(shared, seq, user, ch, "join").await;
                }
            }
            Err(e) => {
                tracing::debug!(channel = ch.as_str(), error = %e, "server-side subscribe from the connect answer failed")
            }
        }
    }
}

/// The connection is over: it leaves the registry and the counts at once;
/// then, if this side closed it, the socket lingers (see `linger`).
async fn end(shared: Arc<Clients>, tx: Arc<OutQueue>, id: ConnectionId, reason: &'static str, user: Option<UserId>) {
    // Anything still queued will never be written.
    let lost = tx.abandon();
    let announced: Vec<Channel> = shared
        .registry
        .with_connection(id.seq(), |e| {
            e.channels().iter().filter(|c| shared.namespaces.for_channel(c.as_str()).join_leave).cloned().collect()
        })
        .unwrap_or_default();
    shared.registry.remove(id.seq());
    shared.recovery.forget_connection(id.seq());
    shared.metrics.connections.dec();
    shared.metrics.disconnects.with_label_values(&[reason]).inc();
    count_dropped(&shared, reason, lost);
    tracing::debug!(connection = %id, reason, "client disconnected");
    let notice = async {
        // Best effort, bounded by the proxy's timeout: the backend's
        // presence may miss it (a crashed gateway sends none at all).
        if let Some(p) = shared.proxy.as_ref().filter(|p| p.config().disconnect_notice) {
            let body = serde_json::json!({
                "client": id.to_string(),
                "user": user.as_ref().map(UserId::as_str),
                "reason": reason,
            });
            let _ = p.call(Kind::Disconnect, body).await;
        }
        for ch in &announced {
            announce(&shared, id.seq(), user.as_ref(), ch, "leave").await;
        }
    };
    if reason != "client" {
        tokio::join!(linger(&tx), notice);
    } else {
        notice.await;
    }
}

/// Frames that will never be written, counted under the reason the
/// connection ended for (a client that left: "client_gone").
fn count_dropped(shared: &Clients, reason: &'static str, lost: u64) {
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
    /// The token's deadline: reading ends when it passes (`expired`).
    /// Kept here, checked where the reader waits anyway, rather than in a
    /// `select!` around every read, which would grow every idle
    /// connection's task.
    deadline: Expiry,
    /// Reading ended because the deadline passed.
    expired: bool,
    /// Bytes read since the last complete message (frame headers count):
    /// a message that never ends (empty continuation frames forever) is
    /// cut off at `unfinished_limit` although its payload never grows.
    unfinished: u32,
    unfinished_limit: u32,
    /// Why reading failed, when it was this side's doing.
    refused: Option<Refused>,
}

/// Reading stopped for a reason of ours (not the client's socket).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refused {
    /// The client does not read: not even a pong fits in its queue.
    PongQueueFull,
    /// A message went on past `unfinished_limit` bytes.
    Endless,
}

impl Inbound {
    fn new(read_buf: Bytes, out: Arc<OutQueue>, shared: &Clients) -> Self {
        let config = Some(shared.ws_config);
        let ctx = if read_buf.is_empty() {
            WebSocketContext::new(Role::Server, config)
        } else {
            WebSocketContext::from_partially_read(read_buf.to_vec(), Role::Server, config)
        };
        // A message may take its payload limit plus room for the headers of
        // many fragments.
        let unfinished_limit =
            u32::try_from(shared.settings.max_message_bytes.saturating_add(64 << 10)).unwrap_or(u32::MAX);
        Self { ctx, out, ended: false, deadline: None, expired: false, unfinished: 0, unfinished_limit, refused: None }
    }

    /// Whether the token's deadline has passed (checked before every read,
    /// so a client that never lets the socket go quiet is cut off too).
    fn past_deadline(&mut self) -> bool {
        if self.deadline.as_ref().is_some_and(|d| tokio::time::Instant::now() >= d.deadline()) {
            self.ended = true;
            self.expired = true;
        }
        self.expired
    }

    /// The next message; `None` once the connection is closed (as
    /// `tokio_tungstenite::WebSocketStream` would say it).
    async fn next(&mut self) -> Option<Result<Message, WsError>> {
        while !self.ended && !self.past_deadline() {
            // Scoped: nothing of it may live across the await below (it
            // would sit in every idle connection's task).
            let read = {
                let mut io = SocketIo {
                    out: &self.out,
                    unfinished: &mut self.unfinished,
                    limit: self.unfinished_limit,
                    refused: &mut self.refused,
                };
                self.ctx.read(&mut io)
            };
            match read {
                Ok(m) => {
                    self.unfinished = 0;
                    return Some(Ok(m));
                }
                // Waits in the socket's reader slot, not its waiter list:
                // that replaces the waker hyper's connection task left
                // there, which would otherwise keep that finished task's
                // memory (1.5 KB) alive for the connection's lifetime.
                Err(WsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                    let (out, deadline) = (&self.out, &mut self.deadline);
                    let ready = std::future::poll_fn(|cx| {
                        if let Some(d) = deadline.as_mut() {
                            // Ready: the loop's check ends the reading.
                            if d.as_mut().poll(cx).is_ready() {
                                return std::task::Poll::Ready(Ok(()));
                            }
                        }
                        out.socket().poll_read_ready(cx)
                    });
                    if ready.await.is_err() {
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

/// tungstenite's view of the socket: non-blocking reads (counted, see
/// `Inbound::unfinished`); writes (whole frames: pongs, a close reply)
/// into the outbound queue, bounded like every frame: a client that does
/// not read cannot grow it with pongs.
struct SocketIo<'a> {
    out: &'a OutQueue,
    unfinished: &'a mut u32,
    limit: u32,
    refused: &'a mut Option<Refused>,
}

impl Read for SocketIo<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if *self.unfinished > self.limit {
            *self.refused = Some(Refused::Endless);
            return Err(io::Error::other("a message that never ends"));
        }
        let n = self.out.socket().try_read(buf)?;
        *self.unfinished = self.unfinished.saturating_add(n as u32);
        Ok(n)
    }
}

impl Write for SocketIo<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self.out.send_wire(Bytes::copy_from_slice(buf), false, true) {
            Ok(_) => Ok(buf.len()),
            Err(SendError::Full) => {
                *self.refused = Some(Refused::PongQueueFull);
                Err(io::ErrorKind::BrokenPipe.into())
            }
            Err(SendError::Closed) => Err(io::ErrorKind::BrokenPipe.into()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Whether `grant` (its token's channel patterns, its claims against the
/// namespace's `require_claims`) allows `channel`; else why not. The same
/// rule for a WebSocket's commands and an event stream's channels.
fn channel_allowed(shared: &Clients, grant: &Grant, channel: &Channel) -> Result<(), String> {
    if !grant.may_subscribe(channel.as_str()) {
        return Err(format!("your token does not allow channel {:?}", channel.as_str()));
    }
    let ns = shared.namespaces.for_channel(channel.as_str());
    if !ns.claims_allow(grant.claims()) {
        let names: Vec<&str> = ns.require_claims.keys().map(String::as_str).collect();
        return Err(format!("channel {:?} needs the claims {names:?} with the namespace's values", channel.as_str()));
    }
    Ok(())
}

/// A backend call's body: `fields` plus who is asking (client id, user,
/// the connect answer's `info`).
fn with_caller(mut fields: serde_json::Value, client: &str, grant: &Grant) -> serde_json::Value {
    fields["client"] = json!(client);
    fields["user"] = json!(grant.user.as_ref().map(UserId::as_str));
    if let Some(info) = grant.info() {
        fields["info"] = info.clone();
    }
    fields
}

/// Ask the connect proxy about a new client (`body`: what its request
/// said); its answer is the connection's grant.
async fn connect_via_proxy(proxy: &Proxy, body: serde_json::Value) -> Result<Grant, AuthError> {
    match proxy.call(Kind::Connect, body).await.and_then(ConnectResult::from_result) {
        Ok(r) => {
            let extra = (r.claims.is_some() || r.info.is_some() || !r.channels.is_empty())
                .then(|| Arc::new(GrantExtra { claims: r.claims, info: r.info, channels: r.channels }));
            // The backend decides per subscribe (proxy_subscribe) or the
            // namespaces' claims do; the connect answer grants no channel
            // patterns itself.
            Ok(Grant { user: r.user, channels: None, expires: None, extra })
        }
        Err(ProxyError::Refused { code, message }) => {
            let code = code.filter(|c| (4000..=4999).contains(c)).unwrap_or(close::UNAUTHORIZED);
            Err(AuthError::Refused(Box::new((code, message))))
        }
        Err(e) => Err(AuthError::Backend(format!("cannot authenticate now: {e}; retry later"))),
    }
}

/// Why an event stream may not start.
#[derive(Debug)]
pub enum StreamRefusal {
    Auth(AuthError),
    /// A channel the grant, the namespace's claims or the backend refuse.
    Denied(String),
    /// The backend could not decide (timeout, error, unavailable).
    Backend(ProxyError),
}

/// Authenticate an event stream (`GET /sse`) the way a WebSocket is: a JWT
/// when one is given and keys are configured, else the connect proxy when
/// it is on (an event stream sends no first message, so a proxy that waits
/// for one refuses it), else the JWT rules; then every channel must pass
/// what a WebSocket `subscribe` passes: the grant's channel patterns, the
/// namespace's `require_claims`, and its subscribe proxy.
pub async fn authorize_stream(
    shared: &Clients,
    client: &str,
    token: Option<&str>,
    connect: Option<ConnectRequest>,
    channels: &[Channel],
) -> Result<Grant, StreamRefusal> {
    let use_jwt = shared.auth.is_some() && token.is_some();
    let grant = match (shared.connect_proxy(), connect, use_jwt) {
        (Some(proxy), Some(req), false) => {
            if proxy.config().connect_first_message {
                return Err(StreamRefusal::Auth(AuthError::Invalid(
                    "this gateway's connect proxy reads the client's first message, which an event stream cannot \
                     send: use a WebSocket, or a token"
                        .into(),
                )));
            }
            let mut body = req.body(client);
            body["transport"] = json!("sse");
            connect_via_proxy(proxy, body).await.map_err(StreamRefusal::Auth)?
        }
        _ => match (&shared.auth, token) {
            (None, _) => Grant::anonymous(),
            (Some(auth), Some(t)) => auth.check_fresh(t).await.map_err(StreamRefusal::Auth)?,
            (Some(_), None) => return Err(StreamRefusal::Auth(AuthError::Missing)),
        },
    };
    for channel in channels {
        channel_allowed(shared, &grant, channel).map_err(StreamRefusal::Denied)?;
        let ns = shared.namespaces.for_channel(channel.as_str());
        if ns.proxy_subscribe
            && let Some(proxy) = &shared.proxy
        {
            let body = with_caller(json!({ "channel": channel.as_str() }), client, &grant);
            match proxy.call(Kind::Subscribe, body).await {
                Ok(_) => {}
                Err(ProxyError::Refused { message, .. }) => return Err(StreamRefusal::Denied(message)),
                Err(e) => return Err(StreamRefusal::Backend(e)),
            }
        }
    }
    Ok(grant)
}

/// With auth configured: the token from `?token=`, or from a first
/// `{"op":"auth","token":…}` within the auth timeout. Returns the grant and
/// the id of the auth command to reply to.
///
/// With the connect proxy on, a client without `?token=` (or any client,
/// when no JWT key is configured) is asked about to the backend instead;
/// its answer also names the channels to subscribe the connection to.
async fn authenticate(
    shared: &Clients,
    seq: u64,
    handshake: Option<Box<Handshake>>,
    inbound: &mut Inbound,
) -> Result<(Grant, Option<u64>), AuthError> {
    let Handshake { token, connect } = handshake.map(|h| *h).unwrap_or_default();
    let use_jwt = shared.auth.is_some() && token.is_some();
    if let (Some(proxy), Some(req), false) = (shared.connect_proxy(), connect, use_jwt) {
        let client = ConnectionId::new(shared.gateway.clone(), seq).to_string();
        let mut body = req.body(&client);
        let mut reply_id = None;
        if proxy.config().connect_first_message {
            // The client's first frame: `{"op":"connect","data":…}` for the
            // backend, or (with a JWT key) `{"op":"auth","token":…}`.
            let cmd = first_command(shared, inbound).await;
            match cmd {
                Some(Command { op, token: Some(t), id, .. }) if op == "auth" => {
                    let Some(auth) = &shared.auth else {
                        return Err(AuthError::Invalid("this gateway checks no tokens".into()));
                    };
                    return auth.check_fresh(&t).await.map(|g| (g, id));
                }
                Some(Command { op, data, id, .. }) if op == "connect" => {
                    body["data"] = data.and_then(|d| serde_json::from_str(d.get()).ok()).unwrap_or_default();
                    reply_id = id;
                }
                _ => {
                    return Err(AuthError::Refused(Box::new((
                        close::UNAUTHORIZED,
                        "send {\"op\":\"connect\",\"data\":…} first".to_owned(),
                    ))));
                }
            }
        }
        return connect_via_proxy(proxy, body).await.map(|g| (g, reply_id));
    }
    let Some(auth) = &shared.auth else {
        return Ok((Grant::anonymous(), None));
    };
    if let Some(t) = token {
        return auth.check_fresh(&t).await.map(|g| (g, None));
    }
    let cmd = first_command(shared, inbound).await.ok_or(AuthError::Missing)?;
    match (cmd.op.as_str(), cmd.token) {
        ("auth", Some(t)) => auth.check_fresh(&t).await.map(|g| (g, cmd.id)),
        _ => Err(AuthError::Missing),
    }
}

/// The client's first command, within the auth timeout (`None`: none came,
/// or it was not a command).
async fn first_command(shared: &Clients, inbound: &mut Inbound) -> Option<Command> {
    let first = tokio::time::timeout(shared.settings.auth_timeout, async {
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
    .flatten()?;
    serde_json::from_str(first.as_str()).ok()
}

/// Write a close frame behind whatever frame is half written, dropping
/// what else is queued, and give it a second to go out. Returns the
/// deliveries dropped.
async fn close_with(out: &OutQueue, code: u16, reason: &str) -> u64 {
    let lost = out.close(Some(protocol::wire_close(code, reason)));
    let _ = tokio::time::timeout(Duration::from_secs(1), out.flush()).await;
    lost
}

/// After this side closed: shut down writing and take what the client still
/// sends until it closes too (bounded), so the socket ends with a FIN, not
/// a reset: a reset can make the client's TCP stack drop the close frame it
/// already received. The connection is out of the registry by then.
async fn linger(out: &OutQueue) {
    let _ = tokio::time::timeout(Duration::from_secs(1), out.shutdown_and_drain()).await;
}

/// The writer half. Returns the metric reason the connection ended for.
async fn write(out: &OutQueue, close: &CloseSignal, shared: &Clients, heard: &Heard) -> &'static str {
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
    let pings = !shared.settings.ping_interval.is_zero();
    let interval = shared.settings.ping_interval.max(Duration::from_secs(1));
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

/// Most clients a client's presence answer lists.
const PRESENCE_LIMIT: u32 = 1000;

/// Tell `channel`'s other subscribers that connection `seq` joined or left
/// it, when its namespace has join_leave. Best effort: a hub that cannot
/// take the event costs the others a frame, not this connection anything.
async fn announce(shared: &Clients, seq: u64, user: Option<&UserId>, channel: &Channel, event: &str) {
    if !shared.namespaces.for_channel(channel.as_str()).join_leave {
        return;
    }
    let Some(links) = &shared.links else { return };
    let id = ConnectionId::new(shared.gateway.clone(), seq).to_string();
    let data = json!({ "user": user.map(UserId::as_str), "connection": id }).to_string();
    if let Err(e) = links.publish_event(channel, event, data.into(), vec![id], shared.settings.subscribe_timeout).await
    {
        tracing::debug!(channel = channel.as_str(), event, error = %e, "channel event not sent");
    }
}

/// A failed backend call, as the client's reply.
fn proxy_error(e: &ProxyError) -> Reply {
    Reply::error(e.client_code(), e.to_string())
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
    shared: Arc<Clients>,
    tx: Arc<OutQueue>,
    close: Arc<CloseSignal>,
    /// Replaced by a `refresh`; locked only briefly, never across an await.
    grant: std::sync::Mutex<Grant>,
    heard: Heard,
}

/// The live token's deadline: boxed (a `Sleep` is large, and only
/// connections with a token have one).
type Expiry = Option<std::pin::Pin<Box<tokio::time::Sleep>>>;

impl Conn {
    /// The reader half: returns when the client is gone or must be closed
    /// (in which case `close` has been fired).
    async fn read(&self, inbound: &mut Inbound) {
        let cfg = &self.shared.settings;
        let mut budget = CommandBudget::new(cfg.commands_per_sec, cfg.commands_burst);
        inbound.deadline = self.expiry();
        while let Some(msg) = inbound.next().await {
            self.heard.now();
            match msg {
                Ok(Message::Text(text)) => {
                    if !budget.take() {
                        self.close.fire(
                            close::POLICY_VIOLATION,
                            format!("rate limit exceeded: at most {} commands per second", cfg.commands_per_sec),
                            "rate_limited",
                        );
                        return;
                    }
                    // Boxed: a command's future (a subscribe with recovery
                    // is large) would otherwise sit in every idle
                    // connection's task; commands are rare, the box cheap.
                    if Box::pin(self.command(text.as_str())).await {
                        // A refresh moved the deadline.
                        inbound.deadline = self.expiry();
                    }
                }
                Ok(Message::Binary(_)) => {
                    self.close.fire(
                        close::UNSUPPORTED_DATA,
                        "binary frames are not supported; send JSON text",
                        "protocol_error",
                    );
                    return;
                }
                // Answered here, through the writer (close frame, then a
                // clean shutdown): tungstenite's own reply would be written
                // only on its next read, which never comes.
                Ok(Message::Close(frame)) => {
                    let (code, reason, metric) = match frame.map(|f| f.code) {
                        Some(code) if !code.is_allowed() => (
                            close::PROTOCOL_ERROR,
                            format!("protocol error: close code {} may not be sent", u16::from(code)),
                            "protocol_error",
                        ),
                        Some(code) => (u16::from(code), String::new(), "client"),
                        None => (close::NORMAL, String::new(), "client"),
                    };
                    self.close.fire(code, reason, metric);
                    return;
                }
                // A ping costs a command: a client cannot make the gateway
                // answer an unbounded flood of pongs.
                Ok(Message::Ping(_)) => {
                    if !budget.take() {
                        self.close.fire(
                            close::POLICY_VIOLATION,
                            format!("rate limit exceeded: at most {} commands per second", cfg.commands_per_sec),
                            "rate_limited",
                        );
                        return;
                    }
                }
                Ok(_) => {} // pong, or a frame tungstenite handled itself
                Err(WsError::Capacity(e)) => {
                    let limit = cfg.max_message_bytes;
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
                Err(_) => {
                    match inbound.refused {
                        Some(Refused::PongQueueFull) => self.close.slow_consumer(),
                        Some(Refused::Endless) => self.close.fire(
                            close::MESSAGE_TOO_BIG,
                            format!("message too big: {} bytes of frames without an end", inbound.unfinished_limit),
                            "protocol_error",
                        ),
                        None => {}
                    }
                    return;
                }
            }
        }
        if inbound.expired {
            self.close.fire(
                close::TOKEN_EXPIRED,
                "token expired: send {\"op\":\"refresh\",\"token\":…} with a new one before exp",
                "token_expired",
            );
        }
    }

    /// A timer for the current token's deadline.
    fn expiry(&self) -> Expiry {
        self.grant.lock().expect("grant lock").expires_in().map(|d| Box::pin(tokio::time::sleep(d)))
    }

    /// Handle one command; true when it replaced the grant (a refresh).
    async fn command(&self, text: &str) -> bool {
        let cmd: Command = match serde_json::from_str(text) {
            Ok(c) => c,
            Err(e) => {
                self.count("invalid", "error");
                let msg =
                    format!("invalid command: {e}; expected {{\"id\":1,\"op\":\"subscribe\",\"channel\":\"news\"}}");
                self.reply(protocol::salvage_id(text), Reply::error("bad_request", msg));
                return false;
            }
        };
        let (op, reply) = match cmd.op.as_str() {
            "subscribe" => ("subscribe", self.subscribe_announced(&cmd).await),
            "unsubscribe" => ("unsubscribe", self.unsubscribe_announced(&cmd).await),
            "presence" => ("presence", self.presence(&cmd).await),
            "ping" => ("ping", Reply::Ok),
            "publish" => ("publish", self.publish(&cmd).await),
            "rpc" => ("rpc", self.rpc(&cmd).await),
            "refresh" => ("refresh", self.refresh(&cmd).await),
            "auth" | "connect" => {
                ("auth", Reply::error("bad_request", "already authenticated; to present a new token use refresh"))
            }
            other => (
                "unknown",
                Reply::error(
                    "unknown_op",
                    format!(
                        "unknown op {:?}; expected subscribe, unsubscribe, publish, rpc, presence, ping or refresh",
                        pushmesh_common::ids::truncate(other, 40)
                    ),
                ),
            ),
        };
        let ok = matches!(
            reply,
            Reply::Ok | Reply::Subscribed { .. } | Reply::AlreadySent | Reply::Published { .. } | Reply::Data(_)
        );
        self.count(op, if ok { "ok" } else { "error" });
        // Success replies only for commands that asked (with an id).
        if !matches!(reply, Reply::AlreadySent) && (!ok || cmd.id.is_some()) {
            self.reply(cmd.id, reply);
        }
        ok && op == "refresh"
    }

    fn channel(cmd: &Command) -> Result<Channel, Reply> {
        let name = cmd
            .channel
            .as_deref()
            .ok_or_else(|| Reply::error("bad_request", format!("{} needs a \"channel\"", cmd.op)))?;
        Channel::new(name).map_err(|e| Reply::error("invalid_channel", e.to_string()))
    }

    /// A subscribe, then a `join` event for the channel's other
    /// subscribers when the namespace has join_leave and the connection
    /// was not a member yet.
    async fn subscribe_announced(&self, cmd: &Command) -> Reply {
        let channel = Self::channel(cmd).ok();
        let was_member = channel.as_ref().is_some_and(|ch| self.is_member(ch));
        let reply = self.subscribe(cmd).await;
        if let Some(ch) = channel
            && !was_member
            && matches!(reply, Reply::Ok | Reply::Subscribed { .. } | Reply::AlreadySent)
        {
            let user = self.grant.lock().expect("grant lock").user.clone();
            announce(&self.shared, self.seq, user.as_ref(), &ch, "join").await;
        }
        reply
    }

    async fn unsubscribe_announced(&self, cmd: &Command) -> Reply {
        let channel = Self::channel(cmd).ok();
        let was_member = channel.as_ref().is_some_and(|ch| self.is_member(ch));
        let reply = self.unsubscribe(cmd);
        if let Some(ch) = channel
            && was_member
        {
            let user = self.grant.lock().expect("grant lock").user.clone();
            announce(&self.shared, self.seq, user.as_ref(), &ch, "leave").await;
        }
        reply
    }

    fn is_member(&self, channel: &Channel) -> bool {
        self.shared.registry.with_connection(self.seq, |e| e.channels().contains(channel)).unwrap_or(false)
    }

    /// `{"op":"presence","channel"}` where the namespace allows it: who is
    /// subscribed, on every gateway (as `GET /presence` answers it).
    async fn presence(&self, cmd: &Command) -> Reply {
        let channel = match Self::channel(cmd) {
            Ok(c) => c,
            Err(r) => return r,
        };
        let ns = self.shared.namespaces.for_channel(channel.as_str());
        let Some(links) = self.shared.links.as_ref().filter(|_| ns.presence) else {
            return Reply::error(
                "permission_denied",
                format!(
                    "clients may not ask for the presence of {:?}: its namespace has no presence",
                    channel.as_str()
                ),
            );
        };
        if let Err(r) = self.allowed(&channel) {
            return r;
        }
        match links.presence(channel.as_str(), PRESENCE_LIMIT, self.shared.settings.subscribe_timeout).await {
            Ok((connections, clients, partial)) => {
                let users: std::collections::BTreeSet<&str> =
                    clients.iter().map(|c| c.user.as_str()).filter(|u| !u.is_empty()).collect();
                let list: Vec<serde_json::Value> = clients
                    .iter()
                    .map(|c| {
                        json!({ "connection": c.connection, "user": (!c.user.is_empty()).then_some(c.user.as_str()) })
                    })
                    .collect();
                Reply::Data(json!({
                    "channel": channel.as_str(),
                    "connections": connections,
                    "users": users.len(),
                    "clients": list,
                    "partial": partial,
                }))
            }
            Err(e) => Reply::error("unavailable", e.to_string()),
        }
    }

    async fn subscribe(&self, cmd: &Command) -> Reply {
        let channel = match Self::channel(cmd) {
            Ok(c) => c,
            Err(r) => return r,
        };
        if let Err(r) = self.allowed(&channel) {
            return r;
        }
        let ns = self.shared.namespaces.for_channel(channel.as_str());
        if ns.proxy_subscribe
            && let Some(proxy) = &self.shared.proxy
        {
            let body = self.backend_body(json!({ "channel": channel.as_str() }));
            if let Err(e) = proxy.call(Kind::Subscribe, body).await {
                return proxy_error(&e);
            }
        }
        let timeout = self.shared.settings.subscribe_timeout;
        let max = self.shared.settings.max_channels;
        if !ns.recover && cmd.since.is_some() {
            // Recovery is off in this namespace: the subscription starts
            // now, and the reply says nothing was recovered.
            return match self.shared.registry.join(self.seq, &channel, max, timeout).await {
                Ok(_) => Reply::Subscribed { recovered: false, epoch: None, offset: 0 },
                Err(e) => join_error(e),
            };
        }
        let Some(since) = &cmd.since else {
            return match self.shared.registry.join(self.seq, &channel, max, timeout).await {
                Ok(_) => Reply::Ok,
                Err(e) => join_error(e),
            };
        };
        let out = Outbound::Ws(self.tx.clone());
        let who = Subscriber { seq: self.seq, out: &out, close: &self.close, raw: self.raw };
        let since = (since.epoch.as_str(), since.offset);
        let reply = |r: &Reply| protocol::reply_frame(cmd.id, r);
        match self.shared.recovery.subscribe(who, &channel, since, reply, max, timeout).await {
            Ok(()) => Reply::AlreadySent,
            Err(e) => join_error(e),
        }
    }

    /// Whether this connection's token (channel patterns) and claims allow `channel`.
    fn allowed(&self, channel: &Channel) -> Result<(), Reply> {
        let grant = self.grant.lock().expect("grant lock");
        channel_allowed(&self.shared, &grant, channel).map_err(|why| Reply::error("permission_denied", why))
    }

    /// A backend call's body: `fields` plus who is asking.
    fn backend_body(&self, fields: serde_json::Value) -> serde_json::Value {
        let grant = self.grant.lock().expect("grant lock");
        let client = ConnectionId::new(self.shared.gateway.clone(), self.seq).to_string();
        with_caller(fields, &client, &grant)
    }

    /// `{"op":"publish","channel","data"}`: where the namespace allows it,
    /// asked of the backend (which may change the data) where configured,
    /// then published through the channel's hub like any publish; the
    /// reply carries its stream position. `ok` only once a hub accepted it.
    async fn publish(&self, cmd: &Command) -> Reply {
        let reply = self.publish_inner(cmd).await;
        let result = match &reply {
            Reply::Published { .. } => "ok",
            Reply::Error { code, .. } if code.starts_with("backend") || *code == "unavailable" => "failed",
            _ => "refused",
        };
        self.shared.metrics.client_publishes.with_label_values(&[result]).inc();
        reply
    }

    async fn publish_inner(&self, cmd: &Command) -> Reply {
        let channel = match Self::channel(cmd) {
            Ok(c) => c,
            Err(r) => return r,
        };
        let Some(data) = &cmd.data else {
            return Reply::error("bad_request", "publish needs \"data\": any JSON value");
        };
        let ns = self.shared.namespaces.for_channel(channel.as_str());
        let Some(links) = self.shared.links.as_ref().filter(|_| ns.client_publish) else {
            return Reply::error(
                "permission_denied",
                format!("clients may not publish to {:?}: its namespace has no client_publish", channel.as_str()),
            );
        };
        if let Err(r) = self.allowed(&channel) {
            return r;
        }
        let mut data = bytes::Bytes::copy_from_slice(data.get().as_bytes());
        if ns.proxy_publish
            && let Some(proxy) = &self.shared.proxy
        {
            let value: serde_json::Value = serde_json::from_slice(&data).unwrap_or_default();
            let body = self.backend_body(json!({ "channel": channel.as_str(), "data": value }));
            match proxy.call(Kind::Publish, body).await {
                Ok(mut r) => {
                    if let Some(changed) = r.remove("data") {
                        data = changed.to_string().into();
                    }
                }
                Err(e) => return proxy_error(&e),
            }
        }
        match links.publish(&channel, data, self.shared.settings.subscribe_timeout).await {
            Ok(resp) => Reply::Published { epoch: resp.epoch, offset: resp.offset },
            Err(e @ HubPublishError::Rejected(_)) => Reply::error("bad_request", e.to_string()),
            Err(e @ HubPublishError::Unavailable(_)) => Reply::error("unavailable", e.to_string()),
        }
    }

    /// `{"op":"rpc","method","data"}`: the backend's answer, by request id.
    async fn rpc(&self, cmd: &Command) -> Reply {
        let Some(proxy) = self.shared.proxy.as_ref().filter(|p| p.config().rpc) else {
            return Reply::error("not_available", "rpc is not enabled on this gateway (no [proxy] with rpc = true)");
        };
        let method = cmd.method.as_deref().unwrap_or_default();
        if method.is_empty() || method.len() > 255 || method.chars().any(char::is_control) {
            return Reply::error("bad_request", "rpc needs a \"method\": 1 to 255 bytes, no control characters");
        }
        let data: serde_json::Value =
            cmd.data.as_ref().and_then(|d| serde_json::from_str(d.get()).ok()).unwrap_or_default();
        let body = self.backend_body(json!({ "method": method, "data": data }));
        match proxy.call(Kind::Rpc, body).await {
            Ok(mut r) => Reply::Data(r.remove("data").unwrap_or_default()),
            Err(ProxyError::Refused { message, .. }) => Reply::error("rpc_error", message),
            Err(e) => proxy_error(&e),
        }
    }

    /// A new token for the live connection: checked like one at connect,
    /// for the same user; it replaces the grant (its `channels` govern
    /// later subscribes; channels already joined stay) and its `exp` the
    /// deadline. A refused one changes nothing.
    async fn refresh(&self, cmd: &Command) -> Reply {
        let Some(auth) = &self.shared.auth else {
            return Reply::error(
                "bad_request",
                "this gateway checks no tokens (no JWT key configured): there is nothing to refresh",
            );
        };
        let Some(token) = cmd.token.as_deref() else {
            return Reply::error("bad_request", "refresh needs a \"token\": the new JWT");
        };
        let new = match auth.check_fresh(token).await {
            Ok(g) => g,
            Err(AuthError::Expired) => {
                return Reply::error("token_expired", "the new token has expired already; the current token stays");
            }
            Err(e) => return Reply::error("invalid_token", format!("{e}; the current token stays")),
        };
        let mut grant = self.grant.lock().expect("grant lock");
        if new.user != grant.user {
            return Reply::error(
                "permission_denied",
                "the new token is for another user (sub): a refresh must keep the connection's user; the current token stays",
            );
        }
        *grant = new;
        Reply::Ok
    }

    fn unsubscribe(&self, cmd: &Command) -> Reply {
        match Self::channel(cmd) {
            Ok(channel) => {
                self.shared.registry.leave(self.seq, &channel);
                self.shared.recovery.forget(self.seq, &channel);
                Reply::Ok
            }
            Err(r) => r,
        }
    }

    fn reply(&self, id: Option<u64>, reply: Reply) {
        let frame = Frame { text: protocol::reply_frame(id, &reply), is_delivery: false };
        if let Err(SendError::Full) = self.tx.try_send(frame) {
            self.close.slow_consumer();
        }
    }

    fn count(&self, op: &str, result: &str) {
        self.shared.metrics.commands.with_label_values(&[op, result]).inc();
    }
}
