//! Wiring: bind, start the hub health probe, serve the API until the
//! shutdown token fires (requests in flight are finished first).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use warp::Filter;

use pushmesh_common::discovery::HubSource;
use pushmesh_common::health::Health;

use crate::config::Config;
use crate::hubs::HubPool;
use crate::metrics::IngressMetrics;
use crate::routes::{self, State};

pub struct Ingress {
    config: Config,
    listener: TcpListener,
    grpc: TcpListener,
    hubs: Arc<HubPool>,
    /// The hub set from --hub and --hub-dns, and what stops its resolver.
    hub_set: (tokio::sync::watch::Receiver<Vec<String>>, CancellationToken),
    pub metrics: IngressMetrics,
    pub health: Health,
}

impl Ingress {
    pub async fn bind(config: Config) -> anyhow::Result<Self> {
        let metrics = IngressMetrics::new();
        let tls = config.hub_tls.client_config()?;
        let source = HubSource::new(&config.hubs, &config.hub_dns, tls.is_some())?;
        let hub_set_stop = CancellationToken::new();
        let hub_set = source.watch(hub_set_stop.clone()).await;
        let initial = hub_set.borrow().clone();
        let hubs = Arc::new(HubPool::new(
            &initial,
            Duration::from_millis(config.publish_timeout_ms.max(1)),
            tls,
            metrics.clone(),
            crate::replay::ReplayRing::new(Duration::from_millis(config.relay_replay_ms), config.relay_replay_bytes),
        )?);
        let listener = pushmesh_common::listener::bind(config.listen_addr, pushmesh_common::listener::DEFAULT_BACKLOG)
            .with_context(|| format!("cannot bind {}", config.listen_addr))?;
        let grpc = pushmesh_common::listener::bind(config.grpc_addr, pushmesh_common::listener::DEFAULT_BACKLOG)
            .with_context(|| format!("cannot bind the gRPC address {}", config.grpc_addr))?;
        Ok(Self {
            config,
            listener,
            grpc,
            hubs,
            hub_set: (hub_set, hub_set_stop),
            metrics,
            health: Health::new("no hub checked yet"),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("bound socket")
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc.local_addr().expect("bound socket")
    }

    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Ingress { config, listener, grpc, hubs, hub_set: (mut hub_set, hub_set_stop), metrics, health } = self;
        let probe_stop = CancellationToken::new();
        // Follow the hub set (DNS discovery) until the probe stops.
        let follower = {
            let (hubs, stop) = (hubs.clone(), probe_stop.clone());
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        changed = hub_set.changed() => if changed.is_err() { return },
                        _ = stop.cancelled() => return,
                    }
                    let urls = hub_set.borrow_and_update().clone();
                    if let Err(e) = hubs.set_hubs(&urls) {
                        tracing::error!(error = %e, "cannot use the new hub set");
                    }
                }
            })
        };
        let probe = tokio::spawn(hubs.clone().probe(
            Duration::from_millis(config.hub_probe_ms.max(10)),
            health.clone(),
            metrics.clone(),
            probe_stop.clone(),
        ));
        let commands = crate::commands::Commands { hubs, metrics };
        let keys = crate::keys::ApiKeys::load(&config.api_keys, config.api_keys_file.as_deref())?;
        if keys.is_none() {
            tracing::warn!(
                "no API keys configured: anyone who reaches this port can publish; set PUSHMESH_API_KEYS for production"
            );
        }
        let limiter = std::num::NonZeroU32::new(config.rate_limit_per_sec).map(|rate| {
            let burst = std::num::NonZeroU32::new(config.rate_limit_burst).unwrap_or(rate);
            governor::RateLimiter::keyed(governor::Quota::per_second(rate).allow_burst(burst))
        });
        let state =
            Arc::new(State { commands, max_body: config.max_body_bytes, max_batch: config.max_batch, keys, limiter });
        let sweeper_state = state.clone();
        let sweeper_stop = probe_stop.clone();
        tokio::spawn(async move {
            // Forget idle client IPs so the limiter's memory stays bounded.
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(60)) => {}
                    _ = sweeper_stop.cancelled() => return,
                }
                if let Some(l) = &sweeper_state.limiter {
                    l.retain_recent();
                }
            }
        });
        let grpc_shutdown = shutdown.clone();
        let grpc_task = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(pushmesh_common::proto::push_api_server::PushApiServer::new(crate::grpc::GrpcApi::new(
                    state.clone(),
                )))
                .serve_with_incoming_shutdown(tokio_stream::wrappers::TcpListenerStream::new(grpc), async move {
                    grpc_shutdown.cancelled().await
                }),
        );
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
        probe_stop.cancel();
        hub_set_stop.cancel();
        let _ = probe.await;
        let _ = follower.await;
        if let Ok(Err(e)) = grpc_task.await {
            tracing::warn!(error = %e, "gRPC API server failed");
        }
        tracing::info!("ingress stopped");
        Ok(())
    }
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
