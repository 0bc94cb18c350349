//! Wiring: the shared state every task of the gateway reads, and the
//! `bind` → `run` lifecycle.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;

use pushmesh_common::health::Health;
use pushmesh_common::ids::GatewayId;

use crate::config::Config;
use crate::hubs::{self, AttachedCount, HubLinks};
use crate::metrics::GatewayMetrics;
use crate::registry::Registry;

/// What the gateway's tasks share.
pub struct Shared {
    pub gateway: GatewayId,
    pub config: Config,
    pub registry: Registry,
    pub links: Arc<HubLinks>,
    pub metrics: GatewayMetrics,
    pub health: Health,
    pub attached: AttachedCount,
    pub shutdown: CancellationToken,
    pub ws_config: WebSocketConfig,
    pub admission: Arc<crate::admission::Admission>,
    /// `None`: anonymous clients (no JWT key configured).
    pub auth: Option<crate::auth::Authenticator>,
    next_seq: AtomicU64,
}

impl Shared {
    pub fn next_seq(&self) -> u64 {
        self.next_seq.fetch_add(1, Ordering::Relaxed)
    }
}

pub struct Gateway {
    listener: TcpListener,
    shared: Arc<Shared>,
    links: Vec<(String, tonic::transport::Endpoint, tokio::sync::mpsc::Receiver<hubs::LinkCmd>)>,
}

impl Gateway {
    /// Validate the config, bind the listener; nothing runs yet.
    pub async fn bind(config: Config, shutdown: CancellationToken) -> anyhow::Result<Self> {
        let gateway = match &config.gateway_id {
            Some(id) => GatewayId::new(id.clone()).context("invalid --gateway-id")?,
            None => GatewayId::random("gw"),
        };
        if config.hubs.is_empty() {
            anyhow::bail!("no hub endpoints: pass --hub http://HOST:PORT (or PUSHMESH_HUBS)");
        }
        let keepalive = Duration::from_secs(config.keepalive_secs.max(1));
        let tls = config.hub_tls.client_config()?;
        let endpoints = config
            .hubs
            .iter()
            .map(|u| hubs::endpoint(u, keepalive, tls.as_ref()))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let auth = crate::auth::Authenticator::from_config(
            config.jwt_secret.as_deref(),
            config.jwt_secret_file.as_ref(),
            config.jwt_public_key_file.as_ref(),
            &config.jwt_algorithm,
        )?;
        if auth.is_none() {
            tracing::warn!(
                "no JWT key configured: clients are anonymous and may subscribe to ANY channel; set PUSHMESH_JWT_SECRET for production"
            );
        }
        let listener = pushmesh_common::listener::bind(config.listen_addr, pushmesh_common::listener::DEFAULT_BACKLOG)
            .with_context(|| format!("cannot bind {}", config.listen_addr))?;
        let metrics = GatewayMetrics::new();
        let (links, rxs) = HubLinks::new(&config.hubs, config.recent_ids);
        let links = Arc::new(links);
        let registry = Registry::new(links.clone(), metrics.topics.clone());
        let ws_config = WebSocketConfig::default()
            .read_buffer_size(config.read_buffer_bytes.max(256))
            .max_message_size(Some(config.max_message_bytes))
            .max_frame_size(Some(config.max_message_bytes));
        let shared = Arc::new(Shared {
            gateway,
            registry,
            links,
            metrics,
            health: Health::new("not attached to any hub"),
            attached: AttachedCount::new(config.hubs.len(), Duration::from_secs(config.startup_grace_secs)),
            shutdown,
            ws_config,
            admission: Arc::new(crate::admission::Admission::new(
                config.allowed_origins.clone(),
                config.max_connections,
                config.max_connections_per_ip,
            )),
            auth,
            next_seq: AtomicU64::new(1),
            config: config.clone(),
        });
        let links = config.hubs.iter().cloned().zip(endpoints).zip(rxs).map(|((u, e), r)| (u, e, r)).collect();
        Ok(Self { listener, shared, links })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("bound socket")
    }

    pub fn id(&self) -> &GatewayId {
        &self.shared.gateway
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Serve until the shutdown token fires; then stop accepting, close
    /// every client with 1012 and return once they are closed (bounded).
    pub async fn run(self) -> anyhow::Result<()> {
        let Gateway { listener, shared, links } = self;
        tracing::info!(gateway = %shared.gateway, addr = %listener.local_addr()?, version = env!("CARGO_PKG_VERSION"), "gateway serving");
        let mut tasks = Vec::new();
        for (index, (url, endpoint, rx)) in links.into_iter().enumerate() {
            tasks.push(tokio::spawn(hubs::run(index, url, endpoint, rx, shared.clone())));
        }
        let grace_shared = shared.clone();
        tokio::spawn(async move {
            tokio::time::sleep(grace_shared.attached.grace()).await;
            grace_shared.attached.update(&grace_shared, grace_shared.attached.current());
        });
        crate::http::serve(listener, shared.clone()).await;
        shared.health.start_draining();
        // Connection tasks see the same token and close with 1012; wait
        // (bounded) for them to go so their close frames are written.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while shared.registry.connection_count() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for t in tasks {
            let _ = t.await;
        }
        tracing::info!("gateway stopped");
        Ok(())
    }
}
