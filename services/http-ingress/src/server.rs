//! Wiring: check the config, bind, then serve the API (HTTP and gRPC)
//! until the shutdown token fires (requests in flight are finished first).
//! The three services share the lifecycle `bind(config)` → `run(shutdown)`.
//!
//! Every background task (hub set follower, hub probe, limiter sweeper,
//! the gRPC server, partition replays) is spawned on one `TaskTracker`,
//! and `run` returns only once they all ended.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use warp::Filter;

use pushmesh_common::discovery::HubSource;
use pushmesh_common::health::Health;

use crate::access::Access;
use crate::config::Config;
use crate::hubs::{HubPool, Timeouts};
use crate::metrics::IngressMetrics;
use crate::relay::Relays;
use crate::replay::ReplayRing;
use crate::routes;
use crate::state::State;

pub struct Ingress {
    config: Config,
    listener: TcpListener,
    grpc: TcpListener,
    access: Access,
    pool: Arc<HubPool>,
    /// Every background task, and what stops them once the API drained.
    tasks: TaskTracker,
    background: CancellationToken,
    /// The hub set from --hub and --hub-dns, and what stops its resolver.
    hub_set: (tokio::sync::watch::Receiver<Vec<String>>, CancellationToken),
    pub metrics: IngressMetrics,
    pub health: Health,
    /// The hub running in this process (--colocated-hub-addr).
    colocated: Option<pushmesh_hub::Hub>,
}

impl Ingress {
    /// Check the whole config (hub URLs, TLS files, API keys), then bind.
    pub async fn bind(mut config: Config) -> anyhow::Result<Self> {
        let tls = config.hub_tls.client_config()?;
        let frame_bytes = crate::stream::frame_budget(config.max_body_bytes, config.hub_max_message_bytes)?;
        let colocated = match config.colocated_hub.colocated_hub_addr {
            Some(addr) => Some(colocated_hub(&mut config, addr).await?),
            None => None,
        };
        Self::bind_checked(config, tls, frame_bytes, colocated).await
    }

    /// `bind`, next to a hub this process already bound (`pushmesh dev`):
    /// `url` is that hub's entry in `config.hubs`, and publishes for it are
    /// handed to it in-process. The ingress runs it, and stops it after
    /// the API drained.
    pub async fn bind_with_hub(config: Config, url: String, hub: pushmesh_hub::Hub) -> anyhow::Result<Self> {
        let tls = config.hub_tls.client_config()?;
        let frame_bytes = crate::stream::frame_budget(config.max_body_bytes, config.hub_max_message_bytes)?;
        Self::bind_checked(config, tls, frame_bytes, Some((url, hub))).await
    }

    async fn bind_checked(
        config: Config,
        tls: Option<tonic::transport::ClientTlsConfig>,
        frame_bytes: usize,
        colocated: Option<(String, pushmesh_hub::Hub)>,
    ) -> anyhow::Result<Self> {
        let source = HubSource::new(&config.hubs, &config.hub_dns, tls.is_some())?;
        let access = Access::from_config(&config)?;
        let hub_set_stop = CancellationToken::new();
        let hub_set = source.watch(hub_set_stop.clone()).await;
        let initial = hub_set.borrow().clone();
        let timeouts = Timeouts {
            publish: Duration::from_millis(config.publish_timeout_ms.max(1)),
            query: Duration::from_millis(config.query_timeout_ms.max(1)),
        };
        let tasks = TaskTracker::new();
        let background = CancellationToken::new();
        let local = colocated.as_ref().map(|(url, hub)| (url.clone(), hub.publisher()));
        let pool =
            Arc::new(HubPool::new(&initial, timeouts, frame_bytes, tls, tasks.clone(), background.clone(), local)?);
        let listener = pushmesh_common::listener::bind(config.listen_addr, pushmesh_common::listener::DEFAULT_BACKLOG)
            .with_context(|| format!("cannot bind {}", config.listen_addr))?;
        let grpc = pushmesh_common::listener::bind(config.grpc_addr, pushmesh_common::listener::DEFAULT_BACKLOG)
            .with_context(|| format!("cannot bind the gRPC address {}", config.grpc_addr))?;
        Ok(Self {
            config,
            listener,
            grpc,
            access,
            pool,
            tasks,
            background,
            hub_set: (hub_set, hub_set_stop),
            metrics: IngressMetrics::new(),
            health: Health::new("no hub checked yet"),
            colocated: colocated.map(|(_, hub)| hub),
        })
    }

    /// The co-located hub's gRPC and admin addresses, when there is one.
    pub fn colocated_hub_addrs(&self) -> Option<(SocketAddr, SocketAddr)> {
        self.colocated.as_ref().map(|hub| (hub.grpc_addr(), hub.admin_addr()))
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("bound socket")
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc.local_addr().expect("bound socket")
    }

    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Ingress {
            config,
            listener,
            grpc,
            access,
            pool,
            tasks,
            background,
            hub_set: (mut hub_set, hub_set_stop),
            metrics,
            health,
            colocated,
        } = self;
        // The co-located hub stops after the API drained (with the other
        // background tasks), so publishes in flight still reach it.
        if let Some(hub) = colocated {
            let stop = background.clone();
            tasks.spawn(async move {
                if let Err(e) = hub.run(stop).await {
                    tracing::error!(error = %e, "co-located hub failed");
                }
            });
        }
        let relays = Arc::new(Relays::new(
            pool.clone(),
            metrics.clone(),
            ReplayRing::new(Duration::from_millis(config.relay_replay_ms), config.relay_replay_bytes),
            tasks.clone(),
        ));
        // Follow the hub set (DNS discovery).
        {
            let (pool, stop) = (pool.clone(), background.clone());
            tasks.spawn(async move {
                loop {
                    tokio::select! {
                        changed = hub_set.changed() => if changed.is_err() { return },
                        _ = stop.cancelled() => return,
                    }
                    let urls = hub_set.borrow_and_update().clone();
                    if let Err(e) = pool.set_hubs(&urls) {
                        tracing::error!(error = %e, "cannot use the new hub set");
                    }
                }
            });
        }
        {
            let replanner = relays.clone();
            tasks.spawn(pool.clone().probe(
                Duration::from_millis(config.hub_probe_ms.max(10)),
                health.clone(),
                metrics.clone(),
                background.clone(),
                move || replanner.replan(),
            ));
        }
        if !access.has_keys() {
            tracing::warn!(
                "no API keys configured: anyone who reaches this port can publish; set PUSHMESH_API_KEYS for production"
            );
        }
        let state = Arc::new(State {
            commands: crate::commands::Commands { hubs: relays, metrics },
            access,
            seed_form: config.seed_form,
        });
        {
            let (state, stop) = (state.clone(), background.clone());
            tasks.spawn(async move {
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(60)) => state.access.sweep(),
                        _ = stop.cancelled() => return,
                    }
                }
            });
        }
        let grpc_shutdown = shutdown.clone();
        let grpc_server = tonic::transport::Server::builder()
            .add_service(
                pushmesh_common::proto::push_api_server::PushApiServer::new(crate::grpc::GrpcApi::new(state.clone()))
                    .max_decoding_message_size(grpc_decode_limit(config.max_body_bytes)),
            )
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(grpc).with_nodelay(Some(true)),
                async move { grpc_shutdown.cancelled().await },
            );
        tasks.spawn(async move {
            if let Err(e) = grpc_server.await {
                tracing::warn!(error = %e, "gRPC API server failed");
            }
        });
        let api = routes::api(state, health.clone());
        // CORS only when origins are configured: without it the Origin
        // header is not looked at (backends send none; browsers cannot
        // read the answers without CORS headers anyway).
        let api: warp::filters::BoxedFilter<(warp::reply::Response,)> = if config.cors_allow_origins.is_empty() {
            // A no-op that can reject, so both branches have one type.
            let pass = warp::any().and_then(|| async { Ok::<(), warp::Rejection>(()) }).untuple_one();
            pass.and(api).map(warp::Reply::into_response).boxed()
        } else {
            api.with(cors(&config.cors_allow_origins))
                .map(warp::Reply::into_response)
                .recover(cors_refused)
                .unify()
                .boxed()
        };
        tracing::info!(addr = %listener.local_addr()?, version = env!("CARGO_PKG_VERSION"), "ingress serving");
        let drain_health = health.clone();
        warp::serve(api)
            .incoming(listener)
            .graceful(async move {
                shutdown.cancelled().await;
                drain_health.start_draining();
            })
            .run()
            .await;
        background.cancel();
        hub_set_stop.cancel();
        tasks.close();
        tasks.wait().await;
        tracing::info!("ingress stopped");
        Ok(())
    }
}

/// Bind the hub this process runs next to the API, and make sure the hub
/// set has it: its URL is added to --hub when neither --hub nor --hub-dns
/// names it (with --hub-dns, --colocated-hub-url must be the address DNS
/// gives for this pod).
async fn colocated_hub(config: &mut Config, addr: SocketAddr) -> anyhow::Result<(String, pushmesh_hub::Hub)> {
    let args = &config.colocated_hub;
    // The hub's own settings from its PUSHMESH_* variables; its ports and
    // its query deadline (under the ingress's, so the hub answers first)
    // from the ingress's flags.
    let query_timeout = config.query_timeout_ms.saturating_sub(1000).max(1);
    let hub_config = <pushmesh_hub::Config as clap::Parser>::try_parse_from([
        "hub".to_owned(),
        format!("--grpc-addr={addr}"),
        format!("--admin-addr={}", args.colocated_hub_admin_addr),
        format!("--query-timeout-ms={query_timeout}"),
    ])
    .map_err(|e| anyhow::anyhow!("the co-located hub's settings (PUSHMESH_* variables of the hub): {e}"))?;
    let hub = pushmesh_hub::Hub::bind(hub_config).await.context("cannot start the co-located hub")?;
    let url = args.colocated_hub_url.clone().unwrap_or_else(|| format!("http://{}", hub.grpc_addr()));
    if config.hub_dns.hub_dns.is_none() && !config.hubs.contains(&url) {
        config.hubs.push(url.clone());
    }
    tracing::info!(grpc = %hub.grpc_addr(), admin = %hub.admin_addr(), %url, "co-located hub bound");
    Ok((url, hub))
}

/// tonic refuses a request larger than this before the API sees it; a
/// little above the body limit, so the API's own size check (with its clear
/// error) is what an oversized request normally meets.
fn grpc_decode_limit(max_body: u64) -> usize {
    usize::try_from(max_body).unwrap_or(usize::MAX).saturating_add(64 << 10)
}

/// A browser request from an origin not on the list: the JSON error shape,
/// like every other refusal.
async fn cors_refused(r: warp::Rejection) -> Result<warp::reply::Response, warp::Rejection> {
    match r.find::<warp::cors::CorsForbidden>() {
        Some(e) => {
            Ok(crate::error::ApiError::Forbidden(format!("{e}; allowed origins are set by --cors-allow-origin"))
                .into_response())
        }
        None => Err(r),
    }
}

/// CORS for browser callers (the demo page).
fn cors(origins: &[String]) -> warp::cors::Builder {
    let builder = warp::cors()
        .allow_methods(["GET", "POST", "OPTIONS"])
        .allow_headers(["content-type", "authorization"])
        .max_age(600);
    if origins.iter().any(|o| o == "*") {
        builder.allow_any_origin()
    } else {
        builder.allow_origins(origins.iter().map(String::as_str))
    }
}
