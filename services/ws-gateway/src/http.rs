//! The gateway's HTTP front: one hyper HTTP/1 server on one port answering
//! `/ws` (the WebSocket upgrade, done here so the handshake, the upgrade
//! checks and the socket's buffer sizes are ours), `/healthz`, `/readyz`,
//! `/metrics`, and the demo page (`/`) with the client SDK it runs on
//! (`/pushmesh.js`).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_util::task::TaskTracker;

use pushmesh_common::admin;
use pushmesh_common::health::Health;

use crate::admission::{Admission, Refusal, Slot};
use crate::auth::AuthError;
use crate::connection::{self, Clients};
use crate::links::AttachedCount;
use crate::proxy::ConnectRequest;

type Body = crate::sse::Body;

/// What the HTTP front works with.
pub struct Front {
    pub clients: Arc<Clients>,
    pub admission: Arc<Admission>,
    pub health: Health,
    pub attached: Arc<AttachedCount>,
    pub handshake_timeout: Duration,
    /// Owns every HTTP connection's task and every client connection's.
    pub tasks: TaskTracker,
}

/// The demo page (`GET /`): plain HTML and CSS, on the client SDK.
const DEMO_PAGE: &str = include_str!("../static/index.html");

/// The client SDK's bundle (`GET /pushmesh.js`), as the npm package ships
/// it. Built by npm tools (clients/js, `make sdk-bundle`), which cargo
/// cannot run, so the build output is committed here; the SDK's tests fail
/// when it differs from a fresh build.
const SDK_BUNDLE: &str = include_str!("../static/pushmesh.js");

/// Accept until shutdown; an HTTP connection still open then finishes its
/// request and closes (an upgraded one is the connection task's to close).
pub async fn serve(listener: TcpListener, shared: Arc<Front>) {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(shared.handshake_timeout.max(Duration::from_secs(1)));
    let shutdown = shared.clients.shutdown.clone();
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => return,
        };
        let _ = stream.set_nodelay(true);
        let service = shared.clone();
        let conn = builder
            .serve_connection(
                TokioIo::new(stream),
                service_fn(move |req| {
                    let shared = service.clone();
                    async move { Ok::<_, Infallible>(route(req, shared, peer).await) }
                }),
            )
            .with_upgrades();
        let stop = shutdown.clone();
        shared.tasks.spawn(async move {
            tokio::pin!(conn);
            let ended = tokio::select! {
                r = conn.as_mut() => r,
                _ = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = ended {
                tracing::debug!(error = %e, "http connection ended with an error");
            }
        });
    }
}

async fn route(req: Request<Incoming>, shared: Arc<Front>, peer: std::net::SocketAddr) -> Response<Body> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/ws") => upgrade(req, shared, peer),
        (&Method::GET, "/sse") => sse(req, shared, peer).await,
        (&Method::GET, "/") => {
            let mut r = text(StatusCode::OK, DEMO_PAGE);
            r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
            r
        }
        (&Method::GET, "/pushmesh.js") => {
            let mut r = text(StatusCode::OK, SDK_BUNDLE);
            let h = r.headers_mut();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/javascript; charset=utf-8"));
            // Revalidated on every load: a gateway upgrade brings its own SDK.
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            r
        }
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
        (&Method::GET, "/readyz") => {
            let (code, body) = admin::readyz(&shared.health);
            text(code, body)
        }
        (&Method::GET, "/metrics") => {
            let mut r = text(StatusCode::OK, admin::metrics_text(&shared.clients.metrics.registry));
            r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(admin::METRICS_CONTENT_TYPE));
            r
        }
        (_, "/" | "/pushmesh.js" | "/ws" | "/sse" | "/healthz" | "/readyz" | "/metrics") => {
            error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "only GET is allowed here")
        }
        (_, path) => error(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!(
                "no route {}; the gateway serves / (demo page), /pushmesh.js (client SDK), /ws, /sse (Server-Sent Events), /healthz, /readyz and /metrics",
                pushmesh_common::ids::truncate(path, 100)
            ),
        ),
    }
}

fn header_has_token(req: &Request<Incoming>, name: header::HeaderName, token: &str) -> bool {
    req.headers()
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

fn upgrade(mut req: Request<Incoming>, shared: Arc<Front>, peer: std::net::SocketAddr) -> Response<Body> {
    let ip = peer.ip();
    if !header_has_token(&req, header::CONNECTION, "upgrade") || !header_has_token(&req, header::UPGRADE, "websocket") {
        return error(
            StatusCode::UPGRADE_REQUIRED,
            "websocket_required",
            "this endpoint speaks WebSocket: connect with a WebSocket client (e.g. new WebSocket(\"ws://host/ws\"))",
        );
    }
    if req.headers().get(header::SEC_WEBSOCKET_VERSION).map(|v| v.as_bytes()) != Some(b"13") {
        return error(StatusCode::BAD_REQUEST, "bad_handshake", "Sec-WebSocket-Version must be 13");
    }
    let Some(key) = req.headers().get(header::SEC_WEBSOCKET_KEY) else {
        return error(StatusCode::BAD_REQUEST, "bad_handshake", "Sec-WebSocket-Key is missing");
    };
    let accept = derive_accept_key(key.as_bytes());
    let (raw, token) = match ws_params(req.uri().query()) {
        Ok(p) => p,
        Err(msg) => return error(StatusCode::BAD_REQUEST, "bad_request", &msg),
    };
    if let Err(r) = ready(&shared) {
        return r.response();
    }
    let slot = match admit(&req, &shared, ip) {
        Ok(slot) => slot,
        Err(r) => return r.response(),
    };
    // What the connect proxy is told about this client (allow-listed).
    let connect =
        shared.clients.connect_proxy().map(|_| ConnectRequest::from_parts(req.headers(), req.uri().query(), peer));
    let handshake = connection::Handshake::boxed(token, connect);
    let on_upgrade = hyper::upgrade::on(&mut req);
    let clients = shared.clients.clone();
    shared.tasks.spawn(async move {
        // The connection gets the TCP socket itself back from hyper: its
        // read and write halves are then independent, and the fan-out can
        // write frames into it directly (see `queue`).
        match on_upgrade.await.map(|u| u.downcast::<TokioIo<TcpStream>>()) {
            Ok(Ok(parts)) => connection::run(parts.io.into_inner(), parts.read_buf, clients, raw, handshake).await,
            Ok(Err(_)) => tracing::warn!("websocket upgrade: the connection is not a TCP socket"),
            Err(e) => tracing::debug!(error = %e, "websocket upgrade failed"),
        }
        drop(slot);
    });
    let mut resp = Response::new(Full::new(Bytes::new()).boxed_unsync());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::SEC_WEBSOCKET_ACCEPT, HeaderValue::from_str(&accept).expect("base64 is a valid header"));
    resp
}

/// Whether a new client can be served here now.
fn ready(shared: &Front) -> Result<(), Refused> {
    if shared.health.is_draining() {
        return Err(Refused::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "draining",
            "this gateway is shutting down; connect to another",
        ));
    }
    // A client accepted here now would wait for messages that cannot come.
    if shared.attached.current() == 0 {
        return Err(Refused::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "this gateway is not attached to any hub yet; retry, or connect to another gateway",
        ));
    }
    Ok(())
}

/// Admission (origin, caps per gateway and per address), for WebSocket and
/// SSE alike; the slot is held for the connection's life.
fn admit(req: &Request<Incoming>, shared: &Front, ip: std::net::IpAddr) -> Result<Slot, Refused> {
    let origin = req.headers().get(header::ORIGIN).and_then(|v| v.to_str().ok());
    shared.admission.admit(origin, ip).map_err(|refusal| {
        let (code, kind, msg) = match refusal {
            Refusal::Origin(o) => {
                (StatusCode::FORBIDDEN, "origin_not_allowed", format!("origin {o:?} is not allowed to connect"))
            }
            Refusal::GatewayFull(n) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "gateway_full",
                format!("this gateway holds its maximum of {n} connections; connect to another"),
            ),
            Refusal::TooManyFromIp(n) => (
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_connections",
                format!("your address already holds {n} connections here, the limit"),
            ),
        };
        shared.clients.metrics.refused.with_label_values(&[kind]).inc();
        Refused::new(code, kind, msg)
    })
}

/// `GET /sse?channel=…`: an event stream (see `sse`), authenticated and
/// authorized like a WebSocket and its subscribes (`authorize_stream`).
async fn sse(req: Request<Incoming>, shared: Arc<Front>, peer: std::net::SocketAddr) -> Response<Body> {
    let clients = &shared.clients;
    let mut r = match crate::sse::parse(&req, clients.settings.max_channels) {
        Ok(r) => r,
        Err((status, code, message)) => return error(status, code, &message),
    };
    // Without a connect proxy the named channels are all there will be.
    let proxied = clients.connect_proxy().is_some();
    if !proxied && let Err((status, code, message)) = r.complete(&[], clients.settings.max_channels) {
        return error(status, code, &message);
    }
    if let Err(e) = ready(&shared) {
        return e.response();
    }
    let slot = match admit(&req, &shared, peer.ip()) {
        Ok(slot) => slot,
        Err(e) => return e.response(),
    };
    let connect = clients.connect_proxy().map(|_| ConnectRequest::from_parts(req.headers(), req.uri().query(), peer));
    let seq = clients.next_seq();
    let client = pushmesh_common::ids::ConnectionId::new(clients.gateway.clone(), seq).to_string();
    let grant = match connection::authorize_stream(clients, &client, r.token(), connect, r.channels()).await {
        Ok(grant) => grant,
        Err(refusal) => return stream_refused(clients, refusal),
    };
    // With one, the channels its answer subscribes the client to join the
    // stream, as a WebSocket gets them.
    if proxied {
        let server_channels = grant.extra.as_ref().map(|e| e.channels.as_slice()).unwrap_or_default();
        if let Err((status, code, message)) = r.complete(server_channels, clients.settings.max_channels) {
            return error(status, code, &message);
        }
    }
    let (resp, task) = crate::sse::start(clients.clone(), r, grant, seq, slot);
    shared.tasks.spawn(task);
    resp
}

/// An event stream refused: 401 for authentication, 403 for a channel,
/// 503 when the backend could not decide; counted like a WebSocket's.
fn stream_refused(clients: &crate::connection::Clients, refusal: connection::StreamRefusal) -> Response<Body> {
    use connection::StreamRefusal;
    match refusal {
        StreamRefusal::Auth(AuthError::Backend(message)) => {
            clients.metrics.auth_failures.with_label_values(&["backend"]).inc();
            error(StatusCode::SERVICE_UNAVAILABLE, "backend_unavailable", &message)
        }
        StreamRefusal::Auth(e) => {
            let label = match &e {
                AuthError::Expired => "expired",
                AuthError::Missing => "missing",
                AuthError::Refused(_) => "refused",
                _ => "invalid",
            };
            clients.metrics.auth_failures.with_label_values(&[label]).inc();
            let message = match &e {
                AuthError::Missing => {
                    "authentication required: pass ?token=JWT or the header Authorization: Bearer JWT".to_owned()
                }
                e => e.to_string(),
            };
            error(StatusCode::UNAUTHORIZED, "unauthorized", &message)
        }
        StreamRefusal::Denied(message) => error(StatusCode::FORBIDDEN, "permission_denied", &message),
        StreamRefusal::Backend(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.client_code(), &e.to_string()),
    }
}

/// The query parameters `/ws` understands: `format=raw|json` (default
/// json) and `token=JWT`. Unknown parameters are ignored so clients can add
/// their own (cache busters).
fn ws_params(query: Option<&str>) -> Result<(bool, Option<String>), String> {
    let mut raw = false;
    let mut token = None;
    for (k, v) in url_pairs(query.unwrap_or("")) {
        match k.as_str() {
            "format" => {
                raw = match v.as_str() {
                    "raw" => true,
                    "json" => false,
                    other => {
                        return Err(format!(
                            "unknown format {:?}; expected \"json\" (default) or \"raw\"",
                            pushmesh_common::ids::truncate(other, 40)
                        ));
                    }
                }
            }
            "token" => token = Some(v),
            _ => {}
        }
    }
    Ok((raw, token))
}

fn url_pairs(query: &str) -> impl Iterator<Item = (String, String)> + '_ {
    form_urlencoded::parse(query.as_bytes()).map(|(k, v)| (k.into_owned(), v.into_owned()))
}

fn text(code: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()).boxed_unsync());
    *r.status_mut() = code;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

/// A request refused before anything was set up for it.
pub struct Refused {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl Refused {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into() }
    }

    fn response(&self) -> Response<Body> {
        error(self.status, self.code, &self.message)
    }
}

fn error(code: StatusCode, kind: &str, message: &str) -> Response<Body> {
    let body = serde_json::json!({ "error": { "code": kind, "message": message } }).to_string();
    let mut r = Response::new(Full::new(Bytes::from(body)).boxed_unsync());
    *r.status_mut() = code;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}
