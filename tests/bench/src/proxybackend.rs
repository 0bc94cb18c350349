//! The application backend of the clientpub workload: the least a backend
//! can do for the gateway's proxy (docs/proxy.md), so what the benchmark
//! measures is the proxy's own cost, not an application's.
//!
//! - HTTP: `POST {base}/publish` → `{"result":{}}` (publish unchanged),
//!   `POST {base}/rpc` → `{"result":{"data": <the call's data>}}` (echo),
//!   any other call → `{"result":{}}`.
//! - gRPC: the same answers from a `pushmesh.v1.Proxy` service.
//!
//! It runs as a process of its own (this binary's hidden `proxy-backend`
//! subcommand), started like the services and announcing its address the
//! same way, so its CPU is read from /proc apart from the gateways'.
//! The e2e tests' backend (tests/support/backend.rs) is a chat application
//! that rewrites publishes and records every request: the wrong thing to
//! time.

use std::net::SocketAddr;

use clap::ValueEnum;
use serde::Serialize;
use serde_json::Value;
use warp::Filter;

/// Which proxy transport the gateways use, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProxyKind {
    /// No backend: client publishes go straight to the hub.
    None,
    /// JSON POSTs to `http://…/pushmesh/{call}`.
    Http,
    /// The `pushmesh.v1.Proxy` gRPC service.
    Grpc,
}

impl ProxyKind {
    pub fn name(self) -> &'static str {
        match self {
            ProxyKind::None => "none",
            ProxyKind::Http => "http",
            ProxyKind::Grpc => "grpc",
        }
    }
}

/// `proxy-backend --kind K`: serve until killed (the benchmark's
/// `kill_on_drop`); the first stdout line announces the address.
pub fn main(kind: ProxyKind, threads: usize) -> std::process::ExitCode {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()
        .expect("runtime");
    let r = rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        match kind {
            ProxyKind::Http => {
                announce("http", addr);
                serve_http(listener).await;
                Ok(())
            }
            ProxyKind::Grpc => {
                announce("grpc", addr);
                serve_grpc(listener).await
            }
            ProxyKind::None => anyhow::bail!("--kind none needs no backend"),
        }
    });
    match r {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("proxy-backend: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn announce(name: &str, addr: SocketAddr) {
    pushmesh_common::announce::listening("bench-backend", &[(name, addr)]);
}

async fn serve_http(listener: tokio::net::TcpListener) {
    let routes = warp::post().and(warp::path!("pushmesh" / String)).and(warp::body::bytes()).map(
        |call: String, body: bytes::Bytes| {
            let answer = if call == "rpc" {
                // Echo the call's data; anything unreadable is the gateway's bug.
                let data = serde_json::from_slice::<Value>(&body).map(|mut v| v["data"].take()).unwrap_or_default();
                serde_json::json!({ "result": { "data": data } })
            } else {
                serde_json::json!({ "result": {} })
            };
            warp::reply::json(&answer)
        },
    );
    warp::serve(routes).incoming(listener).run().await;
}

async fn serve_grpc(listener: tokio::net::TcpListener) -> anyhow::Result<()> {
    let service = pushmesh_common::proto::proxy_server::ProxyServer::new(grpc::Allow);
    tonic::transport::Server::builder()
        .add_service(service)
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
        .await?;
    Ok(())
}

mod grpc {
    use pushmesh_common::proto::proxy_server::Proxy;
    use pushmesh_common::proto::*;
    use tonic::{Request, Response, Status};

    /// Allows everything unchanged, echoes rpc data.
    pub struct Allow;

    #[tonic::async_trait]
    impl Proxy for Allow {
        async fn on_connect(&self, _: Request<ProxyConnectRequest>) -> Result<Response<ProxyConnectResponse>, Status> {
            let result = ProxyConnectResult {
                user: String::new(),
                channels: vec![],
                info: String::new(),
                claims: String::new(),
            };
            Ok(Response::new(ProxyConnectResponse { outcome: Some(proxy_connect_response::Outcome::Result(result)) }))
        }

        async fn on_subscribe(
            &self,
            _: Request<ProxySubscribeRequest>,
        ) -> Result<Response<ProxySubscribeResponse>, Status> {
            Ok(Response::new(ProxySubscribeResponse { error: None }))
        }

        async fn on_publish(&self, _: Request<ProxyPublishRequest>) -> Result<Response<ProxyPublishResponse>, Status> {
            let result = ProxyPublishResult { data: None };
            Ok(Response::new(ProxyPublishResponse { outcome: Some(proxy_publish_response::Outcome::Result(result)) }))
        }

        async fn on_rpc(&self, req: Request<ProxyRpcRequest>) -> Result<Response<ProxyRpcResponse>, Status> {
            let result = ProxyRpcResult { data: req.into_inner().data };
            Ok(Response::new(ProxyRpcResponse { outcome: Some(proxy_rpc_response::Outcome::Result(result)) }))
        }

        async fn on_disconnect(
            &self,
            _: Request<ProxyDisconnectRequest>,
        ) -> Result<Response<ProxyDisconnectResponse>, Status> {
            Ok(Response::new(ProxyDisconnectResponse {}))
        }
    }
}
