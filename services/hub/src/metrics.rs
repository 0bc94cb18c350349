//! The hub's metrics, registered in one place: `pushmesh_hub_*`, labels
//! from small fixed sets only (never a topic or gateway id).

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

#[derive(Clone)]
pub struct HubMetrics {
    pub registry: Registry,
    /// Publishes accepted, by target kind (channel, broadcast, connection, user).
    pub publishes: IntCounterVec,
    /// Deliveries queued to gateway streams (one per interested gateway).
    pub deliveries: IntCounter,
    /// Stream messages sent to gateways (each carries a batch of deliveries).
    pub batches: IntCounter,
    /// Deliveries not queued, by reason.
    pub dropped: IntCounterVec,
    /// Publish requests refused, by reason.
    pub rejected: IntCounterVec,
    pub publish_duration: Histogram,
    pub gateways: IntGauge,
    pub topics: IntGauge,
    /// Queries forwarded to gateways (presence, stats, server-side commands).
    pub queries: IntCounter,
    pub history_bytes: IntGauge,
    pub history_streams: IntGauge,
}

impl HubMetrics {
    pub fn new() -> Self {
        let registry = pushmesh_common::admin::registry();
        let publishes = IntCounterVec::new(
            Opts::new("pushmesh_hub_publishes_total", "Publishes accepted by the hub, by target kind (relay: a copy of another hub's publish for gateways cut off from it)."),
            &["target"],
        )
        .expect("metric");
        let deliveries = IntCounter::new(
            "pushmesh_hub_deliveries_total",
            "Deliveries queued to attached gateway streams (one per interested gateway per publish).",
        )
        .expect("metric");
        let batches = IntCounter::new(
            "pushmesh_hub_stream_batches_total",
            "Stream messages sent to gateways; each carries one or more deliveries.",
        )
        .expect("metric");
        let dropped = IntCounterVec::new(
            Opts::new(
                "pushmesh_hub_dropped_total",
                "Deliveries the hub accepted but could not hand to a gateway stream, by reason (gateway_queue_full: its queue was full; gateway_gone: its stream ended with them queued).",
            ),
            &["reason"],
        )
        .expect("metric");
        let rejected = IntCounterVec::new(
            Opts::new("pushmesh_hub_publish_rejected_total", "Publish requests the hub refused, by reason."),
            &["reason"],
        )
        .expect("metric");
        let publish_duration = Histogram::with_opts(
            HistogramOpts::new("pushmesh_hub_publish_duration_seconds", "Time to route one publish to gateway queues.")
                .buckets(vec![1e-6, 5e-6, 1e-5, 5e-5, 1e-4, 5e-4, 1e-3, 5e-3, 1e-2, 5e-2]),
        )
        .expect("metric");
        let gateways =
            IntGauge::new("pushmesh_hub_gateways_attached", "Gateway streams attached now.").expect("metric");
        let history_bytes =
            IntGauge::new("pushmesh_hub_history_bytes", "Payload bytes held in channel history.").expect("metric");
        let history_streams =
            IntGauge::new("pushmesh_hub_history_streams", "Channel streams (epoch + offset) held.").expect("metric");
        let queries = IntCounter::new("pushmesh_hub_queries_total", "Queries forwarded to gateways.").expect("metric");
        let topics =
            IntGauge::new("pushmesh_hub_topics", "Topics with at least one attached gateway.").expect("metric");
        for c in [
            Box::new(publishes.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(deliveries.clone()),
            Box::new(batches.clone()),
            Box::new(dropped.clone()),
            Box::new(rejected.clone()),
            Box::new(publish_duration.clone()),
            Box::new(gateways.clone()),
            Box::new(topics.clone()),
            Box::new(queries.clone()),
            Box::new(history_bytes.clone()),
            Box::new(history_streams.clone()),
        ] {
            registry.register(c).expect("register metric");
        }
        // Make the known label values visible at 0 from the start, so a
        // dashboard (and a test) sees the series before the first event.
        for t in ["channel", "broadcast", "connection", "user", "relay"] {
            publishes.with_label_values(&[t]);
        }
        for r in ["gateway_queue_full", "gateway_gone"] {
            dropped.with_label_values(&[r]);
        }
        for r in ["unknown_gateway", "invalid"] {
            rejected.with_label_values(&[r]);
        }
        Self {
            registry,
            publishes,
            deliveries,
            batches,
            dropped,
            rejected,
            publish_duration,
            gateways,
            topics,
            queries,
            history_bytes,
            history_streams,
        }
    }
}

impl Default for HubMetrics {
    fn default() -> Self {
        Self::new()
    }
}
