//! An application backend for the proxy tests (docs/proxy.md): a real
//! HTTP server (warp, on a port the kernel picked) answering the gateway's
//! `POST {base}/{connect|subscribe|publish|rpc|disconnect}` like a small
//! chat application would, plus ways to misbehave on request:
//!
//! - connect: `Cookie: session=<user>` (or a first message's
//!   `data.session`) → that user, subscribed server-side
//!   to `user:<user>:inbox`, with `info` `{"name": <user>}`; `session=banned`
//!   → refused with 4403; no session → refused with 4001.
//! - subscribe: `*secret*` channels are refused; channels such as
//!   `chat:slow:1`, `chat:fail:1`, `chat:garbage:1` or `chat:huge:1`
//!   misbehave (see rpc).
//! - publish: `{"text": T}` becomes `{"text": T, "by": <user>}`; `"spam"`
//!   is refused.
//! - rpc: `getUser` answers who is asking and echoes `data`; `slow` sleeps
//!   past any test timeout, `fail` answers 500, `garbage` answers text
//!   that is not JSON, `huge` answers 100 KiB, `flaky` answers 503 every
//!   other call.
//! - disconnect: recorded.
//!
//! Every request is recorded (kind, body), in arrival order.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::Notify;
use warp::Filter;
use warp::http::StatusCode;
use warp::reply::Reply;

#[derive(Default)]
struct State {
    requests: Mutex<Vec<(String, Value)>>,
    arrived: Notify,
    flaky: AtomicU64,
}

/// A running backend; it stops when dropped.
pub struct Backend {
    pub addr: SocketAddr,
    state: Arc<State>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Backend {
    pub async fn start() -> anyhow::Result<Backend> {
        let state = Arc::new(State::default());
        let s = state.clone();
        let routes = warp::post().and(warp::path!("pushmesh" / String)).and(warp::body::json()).then(
            move |kind: String, body: Value| {
                let s = s.clone();
                async move {
                    s.requests.lock().expect("requests").push((kind.clone(), body.clone()));
                    s.arrived.notify_waiters();
                    answer(&s, &kind, &body).await
                }
            },
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(
            warp::serve(routes)
                .incoming(listener)
                .graceful(async move {
                    let _ = stopped.await;
                })
                .run(),
        );
        Ok(Backend { addr, state, stop: Some(stop) })
    }

    /// The endpoint for a namespaces file.
    pub fn endpoint(&self) -> String {
        format!("http://{}/pushmesh", self.addr)
    }

    /// Every request so far of `kind`, in arrival order.
    pub fn requests(&self, kind: &str) -> Vec<Value> {
        self.state
            .requests
            .lock()
            .expect("requests")
            .iter()
            .filter(|(k, _)| k == kind)
            .map(|(_, b)| b.clone())
            .collect()
    }

    /// Wait (up to `WAIT`) for a request of `kind` matching `pred`.
    pub async fn wait_for(&self, kind: &str, pred: impl Fn(&Value) -> bool) -> anyhow::Result<Value> {
        let deadline = tokio::time::Instant::now() + crate::WAIT;
        loop {
            let arrived = self.state.arrived.notified();
            if let Some(v) = self.requests(kind).into_iter().find(|v| pred(v)) {
                return Ok(v);
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                anyhow::bail!("no {kind} request as expected reached the backend within {:?}", crate::WAIT);
            }
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

fn json_reply(v: Value) -> warp::reply::Response {
    warp::reply::json(&v).into_response()
}

fn status(code: StatusCode, body: &'static str) -> warp::reply::Response {
    warp::reply::with_status(body, code).into_response()
}

/// A misbehaviour named by a channel prefix or rpc method, if any.
async fn misbehave(s: &State, name: &str) -> Option<warp::reply::Response> {
    let what = name.split(':').next().unwrap_or(name);
    match what {
        "slow" => {
            tokio::time::sleep(Duration::from_secs(30)).await;
            Some(json_reply(json!({ "result": {} })))
        }
        "fail" => Some(status(StatusCode::INTERNAL_SERVER_ERROR, "boom")),
        "garbage" => Some(status(StatusCode::OK, "this is not JSON")),
        "huge" => Some(json_reply(json!({ "result": { "data": "x".repeat(100 << 10) } }))),
        "flaky" => {
            if s.flaky.fetch_add(1, Ordering::Relaxed).is_multiple_of(2) {
                Some(status(StatusCode::SERVICE_UNAVAILABLE, "try again"))
            } else {
                None
            }
        }
        _ => None,
    }
}

async fn answer(s: &State, kind: &str, body: &Value) -> warp::reply::Response {
    let user = body["user"].clone();
    match kind {
        "connect" => {
            let cookie = body["headers"]["cookie"].as_str().unwrap_or_default();
            let session = cookie
                .split(';')
                .map(str::trim)
                .find_map(|c| c.strip_prefix("session="))
                .or_else(|| body["data"]["session"].as_str());
            match session {
                Some("banned") => json_reply(json!({ "error": { "code": 4403, "message": "you are banned" } })),
                Some(u) => json_reply(json!({
                    "result": { "user": u, "channels": [format!("user:{u}:inbox")], "info": { "name": u } }
                })),
                None => json_reply(json!({ "error": { "code": 4001, "message": "no session cookie" } })),
            }
        }
        "subscribe" => {
            let channel = body["channel"].as_str().unwrap_or_default();
            // `chat:fail:1` misbehaves like the rpc method `fail`.
            let name = channel.split_once(':').map_or(channel, |(_, rest)| rest);
            if let Some(r) = misbehave(s, name).await {
                return r;
            }
            if channel.contains("secret") {
                json_reply(json!({ "error": { "code": 403, "message": format!("not a member of {channel}") } }))
            } else {
                json_reply(json!({ "result": {} }))
            }
        }
        "publish" => {
            let text = body["data"]["text"].clone();
            if text == "spam" {
                return json_reply(json!({ "error": { "message": "no spam here" } }));
            }
            json_reply(json!({ "result": { "data": { "text": text, "by": user } } }))
        }
        "rpc" => {
            let method = body["method"].as_str().unwrap_or_default();
            if let Some(r) = misbehave(s, method).await {
                return r;
            }
            match method {
                "getUser" | "flaky" => json_reply(json!({
                    "result": { "data": { "user": user, "info": body["info"], "echo": body["data"] } }
                })),
                _ => json_reply(json!({ "error": { "code": 404, "message": format!("no method {method}") } })),
            }
        }
        _ => json_reply(json!({ "result": {} })),
    }
}

/// The same application as `Backend`, as a `pushmesh.v1.Proxy` gRPC
/// service (tonic, on a port the kernel picked).
pub struct GrpcBackend {
    pub addr: SocketAddr,
    state: Arc<State>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

mod grpc {
    use std::sync::Arc;

    use pushmesh_common::proto::proxy_server::Proxy;
    use pushmesh_common::proto::*;
    use serde_json::{Value, json};
    use tonic::{Request, Response, Status};

    use super::State;

    pub struct Service(pub Arc<State>);

    impl Service {
        fn record(&self, kind: &str, body: Value) {
            self.0.requests.lock().expect("requests").push((kind.to_owned(), body));
            self.0.arrived.notify_waiters();
        }
    }

    fn refuse(code: u32, message: impl Into<String>) -> ProxyError {
        ProxyError { code, message: message.into() }
    }

    #[tonic::async_trait]
    impl Proxy for Service {
        async fn on_connect(
            &self,
            req: Request<ProxyConnectRequest>,
        ) -> Result<Response<ProxyConnectResponse>, Status> {
            let r = req.into_inner();
            self.record("connect", json!({ "client": r.client, "headers": r.headers, "query": r.query }));
            let cookie = r.headers.get("cookie").cloned().unwrap_or_default();
            let session = cookie.split(';').map(str::trim).find_map(|c| c.strip_prefix("session=").map(str::to_owned));
            let outcome = match session.as_deref() {
                Some("banned") => proxy_connect_response::Outcome::Error(refuse(4403, "you are banned")),
                Some(u) => proxy_connect_response::Outcome::Result(ProxyConnectResult {
                    user: u.to_owned(),
                    channels: vec![format!("user:{u}:inbox")],
                    info: json!({ "name": u }).to_string(),
                    claims: String::new(),
                }),
                None => proxy_connect_response::Outcome::Error(refuse(4001, "no session cookie")),
            };
            Ok(Response::new(ProxyConnectResponse { outcome: Some(outcome) }))
        }

        async fn on_subscribe(
            &self,
            req: Request<ProxySubscribeRequest>,
        ) -> Result<Response<ProxySubscribeResponse>, Status> {
            let r = req.into_inner();
            self.record(
                "subscribe",
                json!({ "client": r.client, "user": r.user, "channel": r.channel, "info": r.info }),
            );
            let error = r.channel.contains("secret").then(|| refuse(403, format!("not a member of {}", r.channel)));
            Ok(Response::new(ProxySubscribeResponse { error }))
        }

        async fn on_publish(
            &self,
            req: Request<ProxyPublishRequest>,
        ) -> Result<Response<ProxyPublishResponse>, Status> {
            let r = req.into_inner();
            self.record("publish", json!({ "client": r.client, "user": r.user, "channel": r.channel, "data": r.data }));
            let data: Value = serde_json::from_str(&r.data).unwrap_or_default();
            let outcome = if data["text"] == "spam" {
                proxy_publish_response::Outcome::Error(refuse(0, "no spam here"))
            } else {
                let changed = json!({ "text": data["text"], "by": r.user });
                proxy_publish_response::Outcome::Result(ProxyPublishResult { data: Some(changed.to_string()) })
            };
            Ok(Response::new(ProxyPublishResponse { outcome: Some(outcome) }))
        }

        async fn on_rpc(&self, req: Request<ProxyRpcRequest>) -> Result<Response<ProxyRpcResponse>, Status> {
            let r = req.into_inner();
            self.record("rpc", json!({ "client": r.client, "user": r.user, "method": r.method }));
            let outcome = match r.method.as_str() {
                "getUser" => {
                    let info: Value = serde_json::from_str(&r.info).unwrap_or_default();
                    let echo: Value = serde_json::from_str(&r.data).unwrap_or_default();
                    let data = json!({ "user": r.user, "info": info, "echo": echo });
                    proxy_rpc_response::Outcome::Result(ProxyRpcResult { data: data.to_string() })
                }
                "fail" => return Err(Status::internal("boom")),
                m => proxy_rpc_response::Outcome::Error(refuse(404, format!("no method {m}"))),
            };
            Ok(Response::new(ProxyRpcResponse { outcome: Some(outcome) }))
        }

        async fn on_disconnect(
            &self,
            req: Request<ProxyDisconnectRequest>,
        ) -> Result<Response<ProxyDisconnectResponse>, Status> {
            let r = req.into_inner();
            self.record("disconnect", json!({ "client": r.client, "user": r.user, "reason": r.reason }));
            Ok(Response::new(ProxyDisconnectResponse {}))
        }
    }
}

impl GrpcBackend {
    pub async fn start() -> anyhow::Result<GrpcBackend> {
        let state = Arc::new(State::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let service = pushmesh_common::proto::proxy_server::ProxyServer::new(grpc::Service(state.clone()));
        tokio::spawn(tonic::transport::Server::builder().add_service(service).serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            async move {
                let _ = stopped.await;
            },
        ));
        Ok(GrpcBackend { addr, state, stop: Some(stop) })
    }

    /// The endpoint for a namespaces file.
    pub fn endpoint(&self) -> String {
        format!("grpc://{}", self.addr)
    }

    /// Wait (up to `WAIT`) for a request of `kind` matching `pred`.
    pub async fn wait_for(&self, kind: &str, pred: impl Fn(&Value) -> bool) -> anyhow::Result<Value> {
        let deadline = tokio::time::Instant::now() + crate::WAIT;
        loop {
            let arrived = self.state.arrived.notified();
            let found = self
                .state
                .requests
                .lock()
                .expect("requests")
                .iter()
                .find(|(k, b)| k == kind && pred(b))
                .map(|(_, b)| b.clone());
            if let Some(v) = found {
                return Ok(v);
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                anyhow::bail!("no {kind} request as expected reached the backend within {:?}", crate::WAIT);
            }
        }
    }
}

impl Drop for GrpcBackend {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}
