//! The hub's metrics, registered in one place: `pushmesh_hub_*`, labels
//! from small fixed sets only (never a topic or gateway id).

use prometheus::{Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

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
    /// Calls refused by the access check (identity and roles), by reason.
    pub denied: IntCounterVec,
    /// Confirmed direct sends, by what the gateway said.
    pub confirms: IntCounterVec,
    pub publish_duration: Histogram,
    pub gateways: IntGauge,
    pub topics: IntGauge,
    /// Queries forwarded to gateways (presence, stats, server-side commands).
    pub queries: IntCounter,
    pub history_bytes: IntGauge,
    pub history_streams: IntGauge,
    /// Channel state engine calls, by op (append, read, remove).
    pub engine_duration: HistogramVec,
    /// Engine failures, by kind.
    pub engine_errors: IntCounterVec,
    /// Engine calls in flight (the depth of the pipeline to Redis).
    pub engine_in_flight: IntGauge,
    /// 1 while the engine answers (always 1 for memory).
    pub engine_up: IntGauge,
    /// Redis's `used_memory` (0 with the memory engine).
    pub engine_memory_bytes: IntGauge,
    /// Publishes positioned per engine call (one channel's group commit).
    pub sequencer_batch: Histogram,
}

impl HubMetrics {
    pub fn new() -> Self {
        let registry = pushmesh_common::admin::registry();
        let publishes = IntCounterVec::new(
            Opts::new("pushmesh_hub_publishes_total", "Publishes accepted by the hub, by target kind (relay: a copy of another hub's publish for gateways cut off from it; event: a channel join/leave from a gateway)."),
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
        let denied = IntCounterVec::new(
            Opts::new(
                "pushmesh_hub_denied_total",
                "Hub calls refused for who made them, by reason (role: the client certificate lacks the RPC's role; gateway_id: a gateway certificate attaching under another id; duplicate_gateway: an Attach with the id of a live stream from another instance; no_certificate).",
            ),
            &["reason"],
        )
        .expect("metric");
        let confirms = IntCounterVec::new(
            Opts::new(
                "pushmesh_hub_confirmed_sends_total",
                "Confirmed direct sends, by result: delivered, unknown_connection, timeout.",
            ),
            &["result"],
        )
        .expect("metric");
        for r in ["delivered", "unknown_connection", "timeout"] {
            confirms.with_label_values(&[r]);
        }
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
        let engine_duration = HistogramVec::new(
            HistogramOpts::new(
                "pushmesh_hub_engine_call_duration_seconds",
                "Channel state engine calls (append: position a batch of one channel's publishes; read: history; remove), by op.",
            )
            .buckets(vec![1e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 5e-2, 0.25, 1.0]),
            &["op"],
        )
        .expect("metric");
        let engine_errors = IntCounterVec::new(
            Opts::new(
                "pushmesh_hub_engine_errors_total",
                "Channel state engine failures, by kind (timeout: no answer within --engine-timeout-ms; unavailable: cannot reach it; failed: it answered with an error; refused_while_down: a positioned publish refused at once because the engine is down).",
            ),
            &["kind"],
        )
        .expect("metric");
        let engine_in_flight = IntGauge::new(
            "pushmesh_hub_engine_calls_in_flight",
            "Channel state engine calls in flight now (the depth of the pipeline to Redis).",
        )
        .expect("metric");
        let engine_up = IntGauge::new(
            "pushmesh_hub_engine_up",
            "1 while the channel state engine answers, 0 while positioned publishes are refused because it does not.",
        )
        .expect("metric");
        let engine_memory_bytes = IntGauge::new(
            "pushmesh_hub_engine_memory_bytes",
            "Memory the Redis engine's server reports in use (INFO memory used_memory; 0 with the memory engine).",
        )
        .expect("metric");
        let sequencer_batch = Histogram::with_opts(
            HistogramOpts::new(
                "pushmesh_hub_engine_batch_publishes",
                "Publishes of one channel positioned by one engine call (those that arrived while the channel's previous call was in flight).",
            )
            .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 64.0, 256.0]),
        )
        .expect("metric");
        let queries = IntCounter::new("pushmesh_hub_queries_total", "Queries forwarded to gateways.").expect("metric");
        let topics =
            IntGauge::new("pushmesh_hub_topics", "Topics with at least one attached gateway.").expect("metric");
        for c in [
            Box::new(publishes.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(deliveries.clone()),
            Box::new(batches.clone()),
            Box::new(dropped.clone()),
            Box::new(rejected.clone()),
            Box::new(denied.clone()),
            Box::new(confirms.clone()),
            Box::new(publish_duration.clone()),
            Box::new(gateways.clone()),
            Box::new(topics.clone()),
            Box::new(queries.clone()),
            Box::new(history_bytes.clone()),
            Box::new(history_streams.clone()),
            Box::new(engine_duration.clone()),
            Box::new(engine_errors.clone()),
            Box::new(engine_in_flight.clone()),
            Box::new(engine_up.clone()),
            Box::new(engine_memory_bytes.clone()),
            Box::new(sequencer_batch.clone()),
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
        for r in ["unknown_gateway", "invalid", "engine_unavailable"] {
            rejected.with_label_values(&[r]);
        }
        for r in ["role", "gateway_id", "duplicate_gateway", "no_certificate"] {
            denied.with_label_values(&[r]);
        }
        for k in ["timeout", "unavailable", "failed", "refused_while_down"] {
            engine_errors.with_label_values(&[k]);
        }
        for op in ["append", "read", "remove"] {
            engine_duration.with_label_values(&[op]);
        }
        engine_up.set(1);
        Self {
            registry,
            publishes,
            deliveries,
            batches,
            dropped,
            rejected,
            denied,
            confirms,
            publish_duration,
            gateways,
            topics,
            queries,
            history_bytes,
            history_streams,
            engine_duration,
            engine_errors,
            engine_in_flight,
            engine_up,
            engine_memory_bytes,
            sequencer_batch,
        }
    }
}

impl Default for HubMetrics {
    fn default() -> Self {
        Self::new()
    }
}
