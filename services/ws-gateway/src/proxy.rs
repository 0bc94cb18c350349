//! Calls from the gateway to the application's backend: connect,
//! subscribe, publish, rpc and the disconnect notice (docs/proxy.md).
//!
//! The backend is untrusted and may be slow, broken or gone, so every call
//! is fenced the same way, per kind of call:
//! - a **timeout** (`timeout_ms`): a client never waits longer for one try;
//! - **bounded concurrency**: a semaphore of `max_in_flight` permits; a call
//!   finding none fails at once (`backend_unavailable`) instead of queueing
//!   behind a stuck backend, so a backend outage cannot pile up memory;
//! - **retries only where safe**: connect, subscribe and rpc are retried
//!   (`retries` times) when the backend could not be reached or answered
//!   502/503/504 — the request never reached a handler, or the handler
//!   said so. Never after a timeout (the backend may be working on it) and
//!   never for publish, which is not idempotent;
//! - a **circuit breaker**: `breaker_failures` consecutive failures open it
//!   for `breaker_open`; calls then fail at once; after that one call
//!   probes (half-open) and its outcome closes or reopens it;
//! - **validation** of the answer like any client input: at most
//!   `max_answer_bytes`, a JSON object `{"result":{…}}` or
//!   `{"error":{"code":N,"message":"…"}}`, each field of the expected type;
//!   anything else is `backend_error`.
//!
//! One code path for both transports: a call is a JSON request body and a
//! JSON answer; the gRPC transport (`pushmesh.v1.Proxy`) converts both
//! ways, so what is validated, counted and answered does not depend on it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};
use tokio::sync::Semaphore;

use pushmesh_common::proto::proxy_client::ProxyClient;
use pushmesh_common::proto::{
    ProxyConnectRequest, ProxyDisconnectRequest, ProxyError as PbError, ProxyPublishRequest, ProxyRpcRequest,
    ProxySubscribeRequest, proxy_connect_response, proxy_publish_response, proxy_rpc_response,
};

use crate::metrics::GatewayMetrics;
use pushmesh_common::namespaces::{Endpoint, ProxyConfig};

/// The kinds of backend call (a metric label each).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Connect,
    Subscribe,
    Publish,
    Rpc,
    Disconnect,
}

impl Kind {
    pub const ALL: [Kind; 5] = [Kind::Connect, Kind::Subscribe, Kind::Publish, Kind::Rpc, Kind::Disconnect];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Connect => "connect",
            Kind::Subscribe => "subscribe",
            Kind::Publish => "publish",
            Kind::Rpc => "rpc",
            Kind::Disconnect => "disconnect",
        }
    }

    /// Whether a failed try may be repeated (see the module comment).
    fn retryable(self) -> bool {
        matches!(self, Kind::Connect | Kind::Subscribe | Kind::Rpc)
    }
}

/// Outcome labels of `pushmesh_gateway_proxy_requests_total`.
pub const OUTCOMES: &[&str] = &["ok", "refused", "timeout", "error", "unavailable", "overloaded", "circuit_open"];

/// Why a backend call gave no usable answer, or the backend's refusal.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ProxyError {
    /// The backend said no (an answer, not a failure).
    #[error("{message}")]
    Refused { code: Option<u16>, message: String },
    #[error("the backend did not answer within {0:?}")]
    Timeout(Duration),
    /// Unreachable, circuit open, or too many calls in flight.
    #[error("the backend is unavailable: {0}")]
    Unavailable(String),
    /// A 4xx/5xx status, or an answer that is not what the protocol says.
    #[error("the backend failed: {0}")]
    Backend(String),
}

impl ProxyError {
    /// The error code a client's reply carries for a failed call (a refusal
    /// gets the caller's own code).
    pub fn client_code(&self) -> &'static str {
        match self {
            ProxyError::Refused { .. } => "permission_denied",
            ProxyError::Timeout(_) => "backend_timeout",
            ProxyError::Unavailable(_) => "backend_unavailable",
            ProxyError::Backend(_) => "backend_error",
        }
    }
}

/// What a transport brought back from one try.
enum Try {
    /// An answer to validate.
    Answer(Value),
    /// The request did not reach a handler, or the handler asked for a
    /// retry (unreachable, 502/503/504, gRPC UNAVAILABLE): safe to retry.
    Unreached(String),
    /// A failure after which a retry is not safe.
    Failed(String),
}

enum Transport {
    Http { client: reqwest::Client, base: String },
    Grpc { client: ProxyClient<tonic::transport::Channel> },
}

/// Consecutive failures open the breaker; see the module comment.
struct Breaker {
    failures: AtomicU32,
    /// Milliseconds since `Proxy::start` until which the circuit is open.
    open_until_ms: std::sync::atomic::AtomicU64,
    /// A half-open probe is out.
    probing: AtomicBool,
}

impl Breaker {
    fn new() -> Self {
        Self {
            failures: AtomicU32::new(0),
            open_until_ms: std::sync::atomic::AtomicU64::new(0),
            probing: AtomicBool::new(false),
        }
    }
}

/// The gateway's backend proxy.
pub struct Proxy {
    config: ProxyConfig,
    transport: Transport,
    /// One semaphore and one breaker per kind: a stuck rpc handler must not
    /// stop connects.
    permits: [Semaphore; 5],
    breakers: [Breaker; 5],
    start: Instant,
    metrics: GatewayMetrics,
}

impl Proxy {
    pub fn new(config: ProxyConfig, metrics: GatewayMetrics) -> anyhow::Result<Arc<Self>> {
        let transport = match &config.endpoint {
            Endpoint::Http(base) => Transport::Http {
                client: reqwest::Client::builder()
                    .connect_timeout(config.timeout)
                    .pool_idle_timeout(Duration::from_secs(30))
                    .build()?,
                base: base.clone(),
            },
            Endpoint::Grpc(url) => {
                let channel = tonic::transport::Endpoint::from_shared(url.clone())?
                    .connect_timeout(config.timeout)
                    .tcp_nodelay(true)
                    .connect_lazy();
                Transport::Grpc { client: ProxyClient::new(channel) }
            }
        };
        let n = config.max_in_flight;
        Ok(Arc::new(Self {
            permits: std::array::from_fn(|_| Semaphore::new(n)),
            breakers: std::array::from_fn(|_| Breaker::new()),
            config,
            transport,
            start: Instant::now(),
            metrics,
        }))
    }

    pub fn config(&self) -> &ProxyConfig {
        &self.config
    }

    /// Call the backend: the `result` object of its answer, or why not.
    pub async fn call(&self, kind: Kind, body: Value) -> Result<Map<String, Value>, ProxyError> {
        let started = Instant::now();
        let out = self.guarded(kind, body).await;
        let outcome = match &out {
            Ok(_) => "ok",
            Err(ProxyError::Refused { .. }) => "refused",
            Err(ProxyError::Timeout(_)) => "timeout",
            Err(ProxyError::Backend(_)) => "error",
            Err(ProxyError::Unavailable(why)) if why.starts_with(CIRCUIT_OPEN) => "circuit_open",
            Err(ProxyError::Unavailable(why)) if why.starts_with(OVERLOADED) => "overloaded",
            Err(ProxyError::Unavailable(_)) => "unavailable",
        };
        self.metrics.proxy_requests.with_label_values(&[kind.as_str(), outcome]).inc();
        self.metrics.proxy_duration.with_label_values(&[kind.as_str()]).observe(started.elapsed().as_secs_f64());
        if let Err(e) = &out
            && !matches!(e, ProxyError::Refused { .. })
        {
            tracing::debug!(kind = kind.as_str(), error = %e, "backend call failed");
        }
        out
    }

    async fn guarded(&self, kind: Kind, body: Value) -> Result<Map<String, Value>, ProxyError> {
        let i = kind as usize;
        let breaker = &self.breakers[i];
        let probe = self.admit(breaker)?;
        let Ok(_permit) = self.permits[i].try_acquire() else {
            if probe {
                breaker.probing.store(false, Ordering::Release);
            }
            return Err(ProxyError::Unavailable(format!(
                "{OVERLOADED} ({} calls of this kind in flight)",
                self.config.max_in_flight
            )));
        };
        let attempts = if kind.retryable() { 1 + self.config.retries } else { 1 };
        let mut result = Err(ProxyError::Unavailable("not called".into()));
        for attempt in 0..attempts {
            let t = match tokio::time::timeout(self.config.timeout, self.send(kind, &body)).await {
                Ok(t) => t,
                Err(_) => {
                    result = Err(ProxyError::Timeout(self.config.timeout));
                    break;
                }
            };
            result = match t {
                Try::Answer(v) => validate(v),
                Try::Failed(why) => Err(ProxyError::Backend(why)),
                Try::Unreached(why) => {
                    if attempt + 1 < attempts {
                        // A short pause, so a restarting backend gets a moment.
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                    Err(ProxyError::Unavailable(why))
                }
            };
            break;
        }
        self.record(breaker, matches!(result, Ok(_) | Err(ProxyError::Refused { .. })));
        if probe {
            breaker.probing.store(false, Ordering::Release);
        }
        result
    }

    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// Whether the breaker lets a call through; `Ok(true)` for the one
    /// half-open probe.
    fn admit(&self, b: &Breaker) -> Result<bool, ProxyError> {
        let until = b.open_until_ms.load(Ordering::Acquire);
        if until == 0 {
            return Ok(false);
        }
        if self.now_ms() < until {
            return Err(ProxyError::Unavailable(format!(
                "{CIRCUIT_OPEN} after {} consecutive failures; retry later",
                self.config.breaker_failures
            )));
        }
        if b.probing.swap(true, Ordering::AcqRel) {
            return Err(ProxyError::Unavailable(format!("{CIRCUIT_OPEN}; a probe call is out")));
        }
        Ok(true)
    }

    fn record(&self, b: &Breaker, ok: bool) {
        if ok {
            b.failures.store(0, Ordering::Release);
            b.open_until_ms.store(0, Ordering::Release);
            return;
        }
        let n = b.failures.fetch_add(1, Ordering::AcqRel) + 1;
        if n >= self.config.breaker_failures {
            let until = self.now_ms() + self.config.breaker_open.as_millis() as u64;
            if b.open_until_ms.swap(until.max(1), Ordering::AcqRel) == 0 {
                tracing::warn!(failures = n, open_for = ?self.config.breaker_open, "backend proxy circuit opened");
            }
        }
    }

    async fn send(&self, kind: Kind, body: &Value) -> Try {
        match &self.transport {
            Transport::Http { client, base } => http_send(client, base, kind, body, self.config.max_answer_bytes).await,
            Transport::Grpc { client } => grpc_send(client.clone(), kind, body).await,
        }
    }
}

const CIRCUIT_OPEN: &str = "circuit open";
const OVERLOADED: &str = "too many backend calls in flight";

async fn http_send(client: &reqwest::Client, base: &str, kind: Kind, body: &Value, max: usize) -> Try {
    let url = format!("{base}/{}", kind.as_str());
    let resp = match client.post(&url).json(body).send().await {
        Ok(r) => r,
        Err(e) if e.is_connect() => return Try::Unreached("cannot connect to the backend".into()),
        Err(e) => return Try::Failed(format!("request failed: {}", without_url(&e))),
    };
    let status = resp.status();
    if matches!(status.as_u16(), 502..=504) {
        return Try::Unreached(format!("the backend answered HTTP {}", status.as_u16()));
    }
    if !status.is_success() {
        return Try::Failed(format!("the backend answered HTTP {}", status.as_u16()));
    }
    if resp.content_length().is_some_and(|n| n > max as u64) {
        return Try::Failed(format!("the answer is larger than {max} bytes"));
    }
    let mut resp = resp;
    let mut buf = Vec::new();
    loop {
        match resp.chunk().await {
            Ok(Some(c)) => {
                if buf.len() + c.len() > max {
                    return Try::Failed(format!("the answer is larger than {max} bytes"));
                }
                buf.extend_from_slice(&c);
            }
            Ok(None) => break,
            Err(e) => return Try::Failed(format!("reading the answer failed: {}", without_url(&e))),
        }
    }
    match serde_json::from_slice::<Value>(&buf) {
        Ok(v) => Try::Answer(v),
        Err(e) => Try::Failed(format!("the answer is not JSON: {e}")),
    }
}

/// reqwest's message without the URL (internal addresses stay in the log).
fn without_url(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    if let Some(u) = e.url() {
        s = s.replace(u.as_str(), "<backend>");
    }
    s
}

/// Validate a backend answer: `{"result":{…}}` (or `{"result":null}`, or
/// `{}`) is the result; `{"error":{"code"?,"message"?}}` a refusal.
fn validate(v: Value) -> Result<Map<String, Value>, ProxyError> {
    let bad = |why: &str| ProxyError::Backend(format!("invalid answer: {why}"));
    let Value::Object(mut obj) = v else {
        return Err(bad("expected a JSON object with \"result\" or \"error\""));
    };
    if let Some(e) = obj.remove("error")
        && !e.is_null()
    {
        let Value::Object(e) = e else { return Err(bad("\"error\" must be an object")) };
        let code = match e.get("code") {
            None | Some(Value::Null) => None,
            Some(c) => Some(
                c.as_u64()
                    .and_then(|c| u16::try_from(c).ok())
                    .ok_or_else(|| bad("\"error.code\" must be a number up to 65535"))?,
            ),
        };
        let message = match e.get("message") {
            None | Some(Value::Null) => "refused by the backend".to_owned(),
            Some(Value::String(m)) => pushmesh_common::ids::truncate(m, 200),
            Some(_) => return Err(bad("\"error.message\" must be a string")),
        };
        return Err(ProxyError::Refused { code, message });
    }
    match obj.remove("result") {
        None | Some(Value::Null) => Ok(Map::new()),
        Some(Value::Object(r)) => Ok(r),
        Some(_) => Err(bad("\"result\" must be an object")),
    }
}

/// The JSON fields of a request, as strings for the gRPC messages.
fn s(body: &Value, key: &str) -> String {
    match body.get(key) {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

fn string_map(body: &Value, key: &str) -> std::collections::HashMap<String, String> {
    body.get(key)
        .and_then(Value::as_object)
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned())).collect())
        .unwrap_or_default()
}

/// A JSON text field of a gRPC answer, parsed back (empty: absent).
fn json_text(text: &str, what: &str) -> Result<Option<Value>, String> {
    if text.is_empty() {
        return Ok(None);
    }
    serde_json::from_str(text).map(Some).map_err(|e| format!("{what} is not JSON text: {e}"))
}

fn refusal(e: PbError) -> Value {
    let code = if e.code == 0 { Value::Null } else { json!(e.code) };
    json!({ "error": { "code": code, "message": e.message } })
}

async fn grpc_send(mut client: ProxyClient<tonic::transport::Channel>, kind: Kind, body: &Value) -> Try {
    let failed = |st: tonic::Status| {
        if st.code() == tonic::Code::Unavailable {
            Try::Unreached(format!("gRPC UNAVAILABLE: {}", pushmesh_common::ids::truncate(st.message(), 100)))
        } else {
            Try::Failed(format!("gRPC {:?}: {}", st.code(), pushmesh_common::ids::truncate(st.message(), 100)))
        }
    };
    let answer: Result<Value, String> = match kind {
        Kind::Connect => {
            let req = ProxyConnectRequest {
                client: s(body, "client"),
                transport: s(body, "transport"),
                remote_addr: s(body, "remote_addr"),
                headers: string_map(body, "headers"),
                query: string_map(body, "query"),
                data: body.get("data").map(Value::to_string).unwrap_or_default(),
            };
            match client.on_connect(req).await {
                Err(st) => return failed(st),
                Ok(r) => match r.into_inner().outcome {
                    Some(proxy_connect_response::Outcome::Error(e)) => Ok(refusal(e)),
                    Some(proxy_connect_response::Outcome::Result(r)) => (|| {
                        let mut m = Map::new();
                        m.insert("user".into(), if r.user.is_empty() { Value::Null } else { json!(r.user) });
                        m.insert("channels".into(), json!(r.channels));
                        if let Some(i) = json_text(&r.info, "info")? {
                            m.insert("info".into(), i);
                        }
                        if let Some(c) = json_text(&r.claims, "claims")? {
                            m.insert("claims".into(), c);
                        }
                        Ok(json!({ "result": m }))
                    })(),
                    None => Err("the answer has neither result nor error".into()),
                },
            }
        }
        Kind::Subscribe => {
            let req = ProxySubscribeRequest {
                client: s(body, "client"),
                user: s(body, "user"),
                channel: s(body, "channel"),
                info: s(body, "info"),
            };
            match client.on_subscribe(req).await {
                Err(st) => return failed(st),
                Ok(r) => Ok(match r.into_inner().error {
                    Some(e) => refusal(e),
                    None => json!({ "result": {} }),
                }),
            }
        }
        Kind::Publish => {
            let req = ProxyPublishRequest {
                client: s(body, "client"),
                user: s(body, "user"),
                channel: s(body, "channel"),
                data: body.get("data").map(Value::to_string).unwrap_or_default(),
                info: s(body, "info"),
            };
            match client.on_publish(req).await {
                Err(st) => return failed(st),
                Ok(r) => match r.into_inner().outcome {
                    Some(proxy_publish_response::Outcome::Error(e)) => Ok(refusal(e)),
                    Some(proxy_publish_response::Outcome::Result(r)) => match r.data {
                        None => Ok(json!({ "result": {} })),
                        Some(d) => json_text(&d, "data").map(|d| json!({ "result": { "data": d } })),
                    },
                    None => Err("the answer has neither result nor error".into()),
                },
            }
        }
        Kind::Rpc => {
            let req = ProxyRpcRequest {
                client: s(body, "client"),
                user: s(body, "user"),
                method: s(body, "method"),
                data: body.get("data").map(Value::to_string).unwrap_or_default(),
                info: s(body, "info"),
            };
            match client.on_rpc(req).await {
                Err(st) => return failed(st),
                Ok(r) => match r.into_inner().outcome {
                    Some(proxy_rpc_response::Outcome::Error(e)) => Ok(refusal(e)),
                    Some(proxy_rpc_response::Outcome::Result(r)) => {
                        json_text(&r.data, "data").map(|d| json!({ "result": { "data": d } }))
                    }
                    None => Err("the answer has neither result nor error".into()),
                },
            }
        }
        Kind::Disconnect => {
            let req =
                ProxyDisconnectRequest { client: s(body, "client"), user: s(body, "user"), reason: s(body, "reason") };
            match client.on_disconnect(req).await {
                Err(st) => return failed(st),
                Ok(_) => Ok(json!({ "result": {} })),
            }
        }
    };
    match answer {
        Ok(v) => Try::Answer(v),
        Err(why) => Try::Failed(format!("invalid answer: {why}")),
    }
}

/// What the connect proxy decided about a new connection.
#[derive(Debug, Default)]
pub struct ConnectResult {
    pub user: Option<pushmesh_common::ids::UserId>,
    pub channels: Vec<pushmesh_common::ids::Channel>,
    pub info: Option<Value>,
    pub claims: Option<Map<String, Value>>,
}

/// Most channels a connect answer may subscribe a connection to.
const MAX_CONNECT_CHANNELS: usize = 256;

impl ConnectResult {
    /// Read a connect `result`, validating each field.
    pub fn from_result(mut r: Map<String, Value>) -> Result<Self, ProxyError> {
        let bad = |why: String| ProxyError::Backend(format!("invalid connect answer: {why}"));
        let user = match r.remove("user") {
            None | Some(Value::Null) => None,
            Some(Value::String(u)) if u.is_empty() => None,
            Some(Value::String(u)) => {
                Some(pushmesh_common::ids::UserId::new(u).map_err(|e| bad(format!("\"user\": {e}")))?)
            }
            Some(_) => return Err(bad("\"user\" must be a string".into())),
        };
        let channels = match r.remove("channels") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(list)) => {
                if list.len() > MAX_CONNECT_CHANNELS {
                    return Err(bad(format!("more than {MAX_CONNECT_CHANNELS} channels")));
                }
                list.into_iter()
                    .map(|c| match c {
                        Value::String(c) => {
                            pushmesh_common::ids::Channel::new(c).map_err(|e| bad(format!("\"channels\": {e}")))
                        }
                        _ => Err(bad("\"channels\" must hold strings".into())),
                    })
                    .collect::<Result<_, _>>()?
            }
            Some(_) => return Err(bad("\"channels\" must be an array".into())),
        };
        let info = match r.remove("info") {
            None | Some(Value::Null) => None,
            Some(v) => Some(v),
        };
        let claims = match r.remove("claims") {
            None | Some(Value::Null) => None,
            Some(Value::Object(c)) => Some(c),
            Some(_) => return Err(bad("\"claims\" must be an object".into())),
        };
        Ok(Self { user, channels, info, claims })
    }
}

/// What the gateway tells the connect proxy about a new connection: the
/// upgrade request's allow-listed headers, its query and the peer address.
#[derive(Debug, Default)]
pub struct ConnectRequest {
    pub remote_addr: String,
    pub headers: Map<String, Value>,
    pub query: Map<String, Value>,
}

/// Request headers passed to the connect proxy (lower case); nothing else
/// of the upgrade request leaves the gateway.
pub const FORWARDED_HEADERS: &[&str] = &["cookie", "authorization", "user-agent", "origin"];

impl ConnectRequest {
    pub fn from_parts(headers: &http::HeaderMap, query: Option<&str>, remote: std::net::SocketAddr) -> Self {
        let mut h = Map::new();
        for (name, value) in headers {
            let n = name.as_str();
            if !(FORWARDED_HEADERS.contains(&n) || n.starts_with("x-forwarded-")) {
                continue;
            }
            let Ok(v) = value.to_str() else { continue };
            let sep = if n == "cookie" { "; " } else { ", " };
            match h.get_mut(n) {
                Some(Value::String(old)) => {
                    old.push_str(sep);
                    old.push_str(v);
                }
                _ => {
                    h.insert(n.to_owned(), json!(v));
                }
            }
        }
        let mut q = Map::new();
        for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            // The token is the gateway's business, not the backend's.
            if k != "token" {
                q.insert(k.into_owned(), json!(v));
            }
        }
        Self { remote_addr: remote.to_string(), headers: h, query: q }
    }

    pub fn body(&self, client: &str) -> Value {
        json!({
            "client": client,
            "transport": "websocket",
            "remote_addr": self.remote_addr,
            "headers": self.headers,
            "query": self.query,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A backend nobody listens on: every call fails (unreachable).
    fn dead(failures: u32, open: Duration) -> Arc<Proxy> {
        let config = ProxyConfig {
            endpoint: Endpoint::Http("http://127.0.0.1:1/pushmesh".into()),
            timeout: Duration::from_secs(2),
            max_in_flight: 4,
            connect: true,
            rpc: true,
            disconnect_notice: false,
            connect_first_message: false,
            retries: 0,
            breaker_failures: failures,
            breaker_open: open,
            max_answer_bytes: 1024,
        };
        Proxy::new(config, GatewayMetrics::new()).unwrap()
    }

    fn is_circuit_open(r: &Result<Map<String, Value>, ProxyError>) -> bool {
        matches!(r, Err(ProxyError::Unavailable(why)) if why.starts_with(CIRCUIT_OPEN))
    }

    #[tokio::test]
    async fn the_breaker_opens_per_kind_then_lets_one_probe_through() {
        let p = dead(2, Duration::from_millis(200));
        for _ in 0..2 {
            let r = p.call(Kind::Rpc, json!({})).await;
            assert!(matches!(r, Err(ProxyError::Unavailable(ref why)) if why.contains("cannot connect")), "{r:?}");
        }
        assert!(is_circuit_open(&p.call(Kind::Rpc, json!({})).await));
        // Another kind has its own breaker.
        assert!(!is_circuit_open(&p.call(Kind::Subscribe, json!({})).await));
        // Once the open time is over, a call reaches the backend again (the
        // probe); it fails, so the circuit opens again at once.
        let until = Instant::now() + Duration::from_secs(5);
        let probe = loop {
            let r = p.call(Kind::Rpc, json!({})).await;
            if !is_circuit_open(&r) || Instant::now() > until {
                break r;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert!(matches!(probe, Err(ProxyError::Unavailable(ref why)) if why.contains("cannot connect")), "{probe:?}");
        assert!(is_circuit_open(&p.call(Kind::Rpc, json!({})).await));
        let m = prometheus::TextEncoder::new().encode_to_string(&p.metrics.registry.gather()).unwrap();
        assert!(m.contains(r#"pushmesh_gateway_proxy_requests_total{kind="rpc",outcome="circuit_open"}"#), "{m}");
    }

    #[test]
    fn answers_are_validated() {
        assert_eq!(validate(json!({"result": {"a": 1}})).unwrap()["a"], json!(1));
        assert!(validate(json!({})).unwrap().is_empty());
        assert_eq!(
            validate(json!({"error": {"code": 4403, "message": "no"}})),
            Err(ProxyError::Refused { code: Some(4403), message: "no".into() })
        );
        assert!(matches!(validate(json!([1])), Err(ProxyError::Backend(_))));
        assert!(matches!(validate(json!({"result": 3})), Err(ProxyError::Backend(_))));
        assert!(matches!(validate(json!({"error": {"code": "x"}})), Err(ProxyError::Backend(_))));
        let r = ConnectResult::from_result(
            json!({"user": "u1", "channels": ["a", "b"], "info": {"n": 1}}).as_object().unwrap().clone(),
        )
        .unwrap();
        assert_eq!(r.user.unwrap().as_str(), "u1");
        assert_eq!(r.channels.len(), 2);
        assert!(ConnectResult::from_result(json!({"channels": ["bad channel"]}).as_object().unwrap().clone()).is_err());
        assert!(ConnectResult::from_result(json!({"user": 5}).as_object().unwrap().clone()).is_err());
    }
}
