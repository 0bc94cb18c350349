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
use pushmesh_common::discovery::HubSource;

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
    /// The current hub set (static list and DNS), kept up to date.
    hub_set: tokio::sync::watch::Receiver<Vec<String>>,
    keepalive: Duration,
    tls: Option<tonic::transport::ClientTlsConfig>,
}

impl Gateway {
    /// Validate the config, bind the listener; nothing runs yet.
    pub async fn bind(config: Config, shutdown: CancellationToken) -> anyhow::Result<Self> {
        let gateway = match &config.gateway_id {
            Some(id) => GatewayId::new(id.clone()).context("invalid --gateway-id")?,
            None => GatewayId::random("gw"),
        };
        let keepalive = Duration::from_secs(config.keepalive_secs.max(1));
        let tls = config.hub_tls.client_config()?;
        let source = HubSource::new(&config.hubs, &config.hub_dns, tls.is_some())?;
        for u in source.static_urls() {
            hubs::endpoint(u, keepalive, tls.as_ref())?;
        }
        let hub_set = source.watch(shutdown.clone()).await;
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
        let links = Arc::new(HubLinks::new(config.recent_ids));
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
            attached: AttachedCount::new(hub_set.borrow().len(), Duration::from_secs(config.startup_grace_secs)),
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
        Ok(Self { listener, shared, hub_set, keepalive, tls })
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
        let Gateway { listener, shared, mut hub_set, keepalive, tls } = self;
        tracing::info!(gateway = %shared.gateway, addr = %listener.local_addr()?, version = env!("CARGO_PKG_VERSION"), "gateway serving");
        // One link task per hub in the set, started and stopped as it changes.
        let linker_shared = shared.clone();
        let linker = tokio::spawn(async move {
            let shared = linker_shared;
            let mut tasks = Vec::new();
            loop {
                let urls = hub_set.borrow_and_update().clone();
                for link in shared.links.reconcile(&urls, &shared.shutdown) {
                    match hubs::endpoint(&link.url, keepalive, tls.as_ref()) {
                        Ok(endpoint) => tasks.push(tokio::spawn(hubs::run(link, endpoint, shared.clone()))),
                        Err(e) => tracing::error!(hub = %link.url, error = %e, "cannot link to hub"),
                    }
                }
                shared.attached.set_total(&shared, shared.links.len());
                tokio::select! {
                    changed = hub_set.changed() => if changed.is_err() { break },
                    _ = shared.shutdown.cancelled() => break,
                }
            }
            for t in tasks {
                let _ = t.await;
            }
        });
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
        let _ = linker.await;
        tracing::info!("gateway stopped");
        Ok(())
    }
}
