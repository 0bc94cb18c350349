//! The ingress's metrics, registered in one place: `pushmesh_ingress_*`,
//! labels from small fixed sets only.

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry};

#[derive(Clone)]
pub struct IngressMetrics {
    pub registry: Registry,
    /// HTTP requests by route (a fixed set; unknown paths are "other") and status code.
    pub requests: IntCounterVec,
    /// Publishes by target kind and result (ok, rejected, unavailable).
    pub publishes: IntCounterVec,
    /// Time for a hub to accept a publish, retries included, by target kind.
    pub publish_duration: HistogramVec,
    pub hubs_up: IntGauge,
    /// Relayed copies of publishes (for gateways cut off from the owner
    /// hub), by result: ok, or failed (a gateway missed an accepted message).
    pub relays: IntCounterVec,
    /// Gateways that declare themselves cut off from at least one live hub.
    pub partitioned_gateways: IntGauge,
    /// Publishes sent again to gateways found cut off from their hub.
    pub replayed: prometheus::IntCounter,
    /// Bytes of recent publishes kept for that replay.
    pub replay_bytes: IntGauge,
    /// Publishes handed to the hub in this process (--colocated-hub-addr),
    /// without a gRPC hop.
    pub colocated: prometheus::IntCounter,
}

pub const TARGETS: &[&str] = &["channel", "broadcast", "connection", "user"];
pub const RESULTS: &[&str] = &["ok", "rejected", "unavailable", "unconfirmed"];

impl IngressMetrics {
    pub fn new() -> Self {
        let registry = pushmesh_common::admin::registry();
        let requests = IntCounterVec::new(
            Opts::new("pushmesh_ingress_requests_total", "HTTP requests, by route and status code."),
            &["route", "code"],
        )
        .expect("metric");
        let publishes = IntCounterVec::new(
            Opts::new("pushmesh_ingress_publishes_total", "Publish attempts, by target kind and result."),
            &["target", "result"],
        )
        .expect("metric");
        let publish_duration = HistogramVec::new(
            HistogramOpts::new(
                "pushmesh_ingress_publish_duration_seconds",
                "Time until a hub accepted a publish (failover included), by target kind.",
            )
            .buckets(vec![1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5, 1.0, 2.5]),
            &["target"],
        )
        .expect("metric");
        let hubs_up =
            IntGauge::new("pushmesh_ingress_hubs_up", "Hubs that answered the last health check.").expect("metric");
        let relays = IntCounterVec::new(
            Opts::new(
                "pushmesh_ingress_relays_total",
                "Copies of accepted publishes relayed through another hub to gateways cut off from the owner hub, \
                 by result (failed: those gateways missed the message).",
            ),
            &["result"],
        )
        .expect("metric");
        let partitioned_gateways = IntGauge::new(
            "pushmesh_ingress_partitioned_gateways",
            "Gateways that, at the last hub poll, were attached to some hubs but not to every live one.",
        )
        .expect("metric");
        let replayed = prometheus::IntCounter::new(
            "pushmesh_ingress_replayed_total",
            "Recent publishes sent again, through another hub, to gateways found cut off from their owner hub.",
        )
        .expect("metric");
        let replay_bytes = IntGauge::new(
            "pushmesh_ingress_replay_buffer_bytes",
            "Bytes of recent publishes kept to replay to gateways found cut off from a hub.",
        )
        .expect("metric");
        let colocated = prometheus::IntCounter::new(
            "pushmesh_ingress_colocated_publishes_total",
            "Publishes accepted by the hub running in this process (--colocated-hub-addr), without a gRPC hop.",
        )
        .expect("metric");
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(publishes.clone()),
            Box::new(publish_duration.clone()),
            Box::new(hubs_up.clone()),
            Box::new(relays.clone()),
            Box::new(partitioned_gateways.clone()),
            Box::new(replayed.clone()),
            Box::new(replay_bytes.clone()),
            Box::new(colocated.clone()),
        ] {
            registry.register(c).expect("register metric");
        }
        for t in TARGETS {
            for r in RESULTS {
                publishes.with_label_values(&[t, r]);
            }
        }
        for r in ["ok", "failed"] {
            relays.with_label_values(&[r]);
        }
        Self {
            registry,
            requests,
            publishes,
            publish_duration,
            hubs_up,
            relays,
            partitioned_gateways,
            replayed,
            replay_bytes,
            colocated,
        }
    }
}

impl Default for IngressMetrics {
    fn default() -> Self {
        Self::new()
    }
}
