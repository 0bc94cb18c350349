//! Wiring: bind, build the services, serve until the shutdown token fires.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::TcpIncoming;

use pushmesh_common::health::Health;
use pushmesh_common::namespaces::Namespaces;
use pushmesh_common::proto::hub_server::HubServer;

use crate::attach::AttachSettings;
use crate::config::Config;
use crate::engine::Built;
use crate::engine::SharedEngine;
use crate::engine::limits::{HistoryLimits, Limit};
use crate::metrics::HubMetrics;
use crate::publish::Publisher;
use crate::sequencer::Sequencer;
use crate::service::HubService;
use crate::topics::TopicTable;

/// A hub whose sockets are bound, ready to `run`.
pub struct Hub {
    config: Config,
    grpc: TcpListener,
    admin: TcpListener,
    pub metrics: HubMetrics,
    pub health: Health,
    engine: Built,
    tls: Option<tonic::transport::ServerTlsConfig>,
    hub_id: String,
    table: Arc<TopicTable>,
    publisher: Arc<Publisher>,
}

impl Hub {
    /// Check the configuration (namespaces file, TLS files, engine
    /// settings) first, then bind both ports: a bad flag never leaves a port
    /// bound or a "listening" line.
    pub async fn bind(config: Config) -> anyhow::Result<Self> {
        let namespaces = match &config.namespaces {
            Some(path) => Namespaces::load(path)?,
            None => Namespaces::default(),
        };
        let limits = HistoryLimits::new(
            Limit { size: config.history_size, ttl: Duration::from_secs(config.history_ttl_secs.max(1)) },
            &namespaces,
        );
        let tls = pushmesh_common::tls::server(
            config.tls_cert.as_ref(),
            config.tls_key.as_ref(),
            config.tls_client_ca.as_ref(),
        )?;
        if let Some(tls) = &tls {
            // Parses the certificate and key now, not when serving starts.
            tonic::transport::Server::builder().tls_config(tls.clone()).context("invalid TLS configuration")?;
        }
        let metrics = HubMetrics::new();
        let engine = Built::from_config(&config, limits, metrics.clone())?;
        let hub_id =
            config.hub_id.clone().unwrap_or_else(|| pushmesh_common::ids::GatewayId::random("hub").to_string());
        let table = Arc::new(TopicTable::new(metrics.clone()));
        let sequencer = Arc::new(Sequencer::new(engine.shared(), table.clone(), metrics.clone()));
        let publisher = Arc::new(Publisher::new(
            table.clone(),
            sequencer,
            metrics.clone(),
            Arc::default(),
            Duration::from_millis(config.confirm_timeout_ms.max(1)),
        ));
        let grpc = pushmesh_common::listener::bind(config.grpc_addr, pushmesh_common::listener::DEFAULT_BACKLOG)
            .with_context(|| format!("cannot bind the gRPC address {}", config.grpc_addr))?;
        let admin = pushmesh_common::listener::bind(config.admin_addr, pushmesh_common::listener::DEFAULT_BACKLOG)
            .with_context(|| format!("cannot bind the admin address {}", config.admin_addr))?;
        Ok(Self {
            config,
            grpc,
            admin,
            metrics,
            health: Health::new("warming up: gateways are attaching"),
            engine,
            tls,
            hub_id,
            table,
            publisher,
        })
    }

    /// The hub's publishing, for a process that hosts this hub next to its
    /// own publishers (an http-ingress with a co-located hub): a publish
    /// handed here is routed as if it came over `Publish`, without the gRPC
    /// hop.
    pub fn publisher(&self) -> Arc<Publisher> {
        self.publisher.clone()
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc.local_addr().expect("bound socket")
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin.local_addr().expect("bound socket")
    }

    /// Serve until `shutdown` is cancelled; then turn not-ready and
    /// `NOT_SERVING`, close every gateway stream (gateways move to the other
    /// hubs) and return.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Hub { config, grpc, admin, metrics, health, engine, tls, hub_id, table, publisher } = self;
        let settings = AttachSettings {
            hub_id: hub_id.clone(),
            query_timeout_ms: config.query_timeout_ms.max(1),
            queue: config.gateway_queue.max(1),
            batch_max: config.batch_max.max(1),
        };
        engine.spawn_background(shutdown.clone());
        let engine = engine.shared();
        tracing::info!(engine = engine.name(), "channel state engine");
        // Roles are read from client certificates, so they are enforced
        // exactly when client certificates are required.
        let access = crate::identity::Access::new(config.tls_client_ca.is_some(), metrics.clone());
        let service = HubService::new(table, publisher, metrics.clone(), settings, access, shutdown.clone());

        let (reporter, health_service) = tonic_health::server::health_reporter();
        reporter.set_not_serving::<HubServer<HubService>>().await;
        // Serving only after the warm-up: gateways attach meanwhile.
        let warm_reporter = reporter.clone();
        let warm_health = health.clone();
        let warmup = Duration::from_millis(config.warmup_ms);
        tokio::spawn(async move {
            tokio::time::sleep(warmup).await;
            if !warm_health.is_draining() {
                warm_reporter.set_serving::<HubServer<HubService>>().await;
                warm_health.set_ready();
            }
        });
        // Readiness (/readyz) also says when the channel state engine is
        // down. gRPC health stays SERVING: the hub still routes broadcasts
        // and direct sends, and ingresses keep sending them here.
        tokio::spawn(engine_readiness(engine, health.clone(), warmup, shutdown.clone()));

        let admin_routes = pushmesh_common::admin::routes(health.clone(), metrics.registry.clone());
        let admin_shutdown = shutdown.clone();
        let admin_task = tokio::spawn(
            warp::serve(admin_routes).incoming(admin).graceful(async move { admin_shutdown.cancelled().await }).run(),
        );

        let keepalive = Duration::from_secs(config.keepalive_secs.max(1));
        let grpc_shutdown = shutdown.clone();
        let grpc_health = health.clone();
        let grpc_reporter = reporter.clone();
        let mut builder = tonic::transport::Server::builder();
        if let Some(tls) = tls {
            builder = builder.tls_config(tls).context("invalid TLS configuration")?;
        }
        let server = builder
            .http2_keepalive_interval(Some(keepalive))
            .http2_keepalive_timeout(Some(keepalive))
            .add_service(health_service)
            .add_service(HubServer::new(service).max_decoding_message_size(config.max_message_bytes.max(1 << 16)))
            .serve_with_incoming_shutdown(TcpIncoming::from(grpc).with_nodelay(Some(true)), async move {
                grpc_shutdown.cancelled().await;
                grpc_health.start_draining();
                grpc_reporter.set_not_serving::<HubServer<HubService>>().await;
            });
        tracing::info!(%hub_id, version = env!("CARGO_PKG_VERSION"), "hub serving");
        server.await.context("gRPC server failed")?;
        let _ = admin_task.await;
        tracing::info!("hub stopped");
        Ok(())
    }
}

/// Keep /readyz false, with the reason, while the engine is down (after the
/// warm-up; the warm-up task owns readiness before that).
async fn engine_readiness(engine: SharedEngine, health: Health, warmup: Duration, stop: CancellationToken) {
    tokio::select! {
        _ = tokio::time::sleep(warmup) => {}
        _ = stop.cancelled() => return,
    }
    let mut was_down = false;
    loop {
        match engine.status() {
            Err(e) => {
                health.set_not_ready(&format!("channel state engine down: {e}"));
                was_down = true;
            }
            Ok(()) if was_down => {
                health.set_ready();
                was_down = false;
            }
            Ok(()) => {}
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            _ = stop.cancelled() => return,
        }
    }
}
