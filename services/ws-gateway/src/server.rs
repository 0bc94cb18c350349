//! Wiring: build the gateway's parts from its config and hand each task the
//! narrow handle it needs; the `bind` → `run(shutdown)` lifecycle shared by
//! the three services.
//!
//! Every task is spawned on one `TaskTracker`, so shutdown waits for tasks
//! to end (bounded) instead of polling counters: the HTTP connections, the
//! client connections (which close with 1012), the hub links and their
//! query answers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use pushmesh_common::discovery::HubSource;
use pushmesh_common::health::Health;
use pushmesh_common::ids::GatewayId;

use crate::admission::Admission;
use crate::auth::Authenticator;
use crate::config::Config;
use crate::connection::{Clients, Settings};
use crate::fanout::Fanout;
use crate::http::Front;
use crate::hubs::{self, LinkCtx};
use crate::links::{AttachedCount, HubLinks};
use crate::metrics::GatewayMetrics;
use crate::proxy::Proxy;
use crate::queries::Queries;
use crate::recovery::Recovery;
use crate::registry::Registry;
use pushmesh_common::namespaces::Namespaces;

/// How long shutdown waits for connections to close before returning.
const DRAIN_LIMIT: Duration = Duration::from_secs(5);

/// A gateway whose listener is bound and whose config was checked, ready to
/// `run`. Nothing runs yet, except the hub discovery it was started with.
pub struct Gateway {
    listener: TcpListener,
    config: Config,
    gateway: GatewayId,
    auth: Option<Authenticator>,
    tls: Option<tonic::transport::ClientTlsConfig>,
    /// The current hub set (static list and DNS), kept up to date until
    /// `discovery` is cancelled.
    hub_set: watch::Receiver<Vec<String>>,
    discovery: CancellationToken,
    metrics: GatewayMetrics,
    health: Health,
    namespaces: Arc<Namespaces>,
    proxy: Option<Arc<Proxy>>,
}

impl Gateway {
    /// Check the whole config, then bind the listener.
    pub async fn bind(config: Config) -> anyhow::Result<Self> {
        let gateway = match &config.gateway_id {
            Some(id) => GatewayId::new(id.clone()).context("invalid --gateway-id")?,
            None => GatewayId::random("gw"),
        };
        let keepalive = keepalive(&config);
        let tls = config.hub_tls.client_config()?;
        let source = HubSource::new(&config.hubs, &config.hub_dns, tls.is_some())?;
        for u in source.static_urls() {
            crate::links::endpoint(u, keepalive, tls.as_ref())?;
        }
        let auth = Authenticator::from_config(&config).await?;
        if auth.is_none() {
            tracing::warn!(
                "no JWT key configured: clients are anonymous and may subscribe to ANY channel; set PUSHMESH_JWT_SECRET for production"
            );
        }
        let namespaces = match &config.namespaces {
            Some(path) => Namespaces::load(path)?,
            None => Namespaces::default(),
        };
        let metrics = GatewayMetrics::new();
        let proxy = match &namespaces.proxy {
            Some(p) => Some(Proxy::new(p.clone(), metrics.clone()).context("the namespaces file's [proxy]")?),
            None => None,
        };
        let listener = pushmesh_common::listener::bind(config.listen_addr, pushmesh_common::listener::DEFAULT_BACKLOG)
            .with_context(|| format!("cannot bind {}", config.listen_addr))?;
        let discovery = CancellationToken::new();
        let hub_set = source.watch(discovery.clone()).await;
        Ok(Self {
            listener,
            config,
            gateway,
            auth,
            tls,
            hub_set,
            discovery,
            metrics,
            health: Health::new("not attached to any hub"),
            namespaces: Arc::new(namespaces),
            proxy,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("bound socket")
    }

    pub fn id(&self) -> &GatewayId {
        &self.gateway
    }

    /// Serve until `shutdown` fires; then turn not-ready, stop accepting,
    /// close every client with 1012 and return once every task ended
    /// (bounded).
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Gateway {
            listener,
            config,
            gateway,
            auth,
            tls,
            mut hub_set,
            discovery,
            metrics,
            health,
            namespaces,
            proxy,
        } = self;
        let tasks = TaskTracker::new();
        let links = Arc::new(HubLinks::new(config.recent_ids));
        let registry = Arc::new(Registry::new(links.clone(), metrics.topics.clone()));
        let recovery =
            Arc::new(Recovery::new(registry.clone(), links.clone(), config.outbound_queue, config.max_recovery_bytes));
        let attached = Arc::new(AttachedCount::new(
            hub_set.borrow().len(),
            Duration::from_secs(config.startup_grace_secs),
            health.clone(),
            metrics.hubs_attached.clone(),
        ));
        if let Some(jwks) = auth.as_ref().and_then(Authenticator::jwks) {
            let every = Duration::from_secs(config.jwt_jwks_refresh_secs);
            tasks.spawn(jwks.keep_current(every, shutdown.clone()));
        }
        let clients = Arc::new(
            Clients::new(
                gateway.clone(),
                Settings::from_config(&config),
                registry.clone(),
                recovery.clone(),
                metrics.clone(),
                auth,
                shutdown.clone(),
            )
            .with_read_buffer(config.read_buffer_bytes)
            .with_backend(namespaces, proxy, links.clone()),
        );
        let link_ctx = Arc::new(LinkCtx {
            gateway: gateway.clone(),
            instance: format!("{:032x}", rand::random::<u128>()),
            links: links.clone(),
            attached: attached.clone(),
            registry: registry.clone(),
            fanout: Arc::new(Fanout::new(gateway.clone(), registry.clone(), recovery.clone(), metrics.clone())),
            queries: Arc::new(Queries {
                gateway: gateway.clone(),
                registry,
                recovery,
                metrics: metrics.clone(),
                subscribe_timeout: Duration::from_millis(config.subscribe_timeout_ms),
                max_channels: config.max_channels_per_connection,
            }),
            metrics,
            keepalive: keepalive(&config),
            reconnect_max: Duration::from_millis(config.reconnect_max_ms),
            tasks: tasks.clone(),
            shutdown: shutdown.clone(),
        });
        let front = Arc::new(Front {
            clients,
            admission: Arc::new(Admission::new(
                config.allowed_origins.clone(),
                config.max_connections,
                config.max_connections_per_ip,
            )),
            health: health.clone(),
            attached: attached.clone(),
            handshake_timeout: Duration::from_secs(config.handshake_timeout_secs),
            tasks: tasks.clone(),
        });
        tracing::info!(%gateway, addr = %listener.local_addr()?, version = env!("CARGO_PKG_VERSION"), "gateway serving");

        // One link task per hub in the set, started and stopped as it changes.
        let linker_tasks = tasks.clone();
        let linker_stop = shutdown.clone();
        tasks.spawn(async move {
            let ctx = link_ctx;
            loop {
                let urls = hub_set.borrow_and_update().clone();
                for link in ctx.links.reconcile(&urls, &linker_stop) {
                    match crate::links::endpoint(&link.url, ctx.keepalive, tls.as_ref()) {
                        Ok(endpoint) => {
                            linker_tasks.spawn(hubs::run(link, endpoint, ctx.clone()));
                        }
                        Err(e) => tracing::error!(hub = %link.url, error = %e, "cannot link to hub"),
                    }
                }
                ctx.attached.set_total(ctx.links.len());
                tokio::select! {
                    changed = hub_set.changed() => if changed.is_err() { break },
                    _ = linker_stop.cancelled() => break,
                }
            }
        });
        // Once the start-up grace is over, one attached hub is enough.
        let grace_stop = shutdown.clone();
        tasks.spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(attached.grace_left()) => attached.update(),
                _ = grace_stop.cancelled() => {}
            }
        });

        crate::http::serve(listener, front).await;
        health.start_draining();
        discovery.cancel();
        // Connection tasks see the same token and close with 1012; wait
        // (bounded) for them to go so their close frames are written.
        tasks.close();
        if tokio::time::timeout(DRAIN_LIMIT, tasks.wait()).await.is_err() {
            tracing::warn!(left = tasks.len(), "tasks still running after {DRAIN_LIMIT:?}; stopping anyway");
        }
        tracing::info!("gateway stopped");
        Ok(())
    }
}

fn keepalive(config: &Config) -> Duration {
    Duration::from_secs(config.keepalive_secs.max(1))
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    async fn socket() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        (l.accept().await.unwrap().0, c)
    }

    /// An idle connection's memory is mostly this future (it lives in the
    /// task for the connection's lifetime): the gateway's budget is 4 KiB
    /// per idle connection in all. Measured 1,776 bytes (debug, rustc 1.95;
    /// less in release), in a 2,048-byte task allocation; cold paths (and
    /// the connect proxy's handshake data) are boxed to keep it so.
    #[tokio::test]
    async fn the_connection_task_stays_small() {
        let config = Config::ephemeral(vec!["http://127.0.0.1:1".into()]);
        let links = Arc::new(HubLinks::new(0));
        let metrics = GatewayMetrics::new();
        let registry = Arc::new(Registry::new(links.clone(), metrics.topics.clone()));
        let recovery = Arc::new(Recovery::new(registry.clone(), links, 16, 1 << 20));
        let clients = Arc::new(Clients::new(
            GatewayId::new("gw").unwrap(),
            Settings::from_config(&config),
            registry,
            recovery,
            metrics,
            None,
            CancellationToken::new(),
        ));
        let (s, _c) = socket().await;
        let fut = crate::connection::run(s, Bytes::new(), clients, false, None);
        let size = std::mem::size_of_val(&fut);
        assert!(size <= 1792, "connection::run's future grew to {size} bytes");
    }
}
