//! The gateway's metrics, registered in one place: `pushmesh_gateway_*`,
//! labels from small fixed sets only (never a connection id or channel).

use prometheus::{HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

#[derive(Clone)]
pub struct GatewayMetrics {
    pub registry: Registry,
    pub connections: IntGauge,
    /// Server-Sent Events streams open now.
    pub sse_connections: IntGauge,
    pub accepted: IntCounter,
    pub disconnects: IntCounterVec,
    /// Message frames written to client sockets.
    pub deliveries: IntCounter,
    /// Message frames that did not reach a client, by reason.
    pub dropped: IntCounterVec,
    /// Deliveries received from hubs (before local fan-out).
    pub hub_deliveries: IntCounter,
    pub duplicates: IntCounter,
    /// Channel deliveries at or before the channel's last offset here.
    pub stale: IntCounter,
    /// Channel deliveries that skipped offsets.
    pub offset_gaps: IntCounter,
    pub hubs_attached: IntGauge,
    pub topics: IntGauge,
    pub commands: IntCounterVec,
    pub auth_failures: IntCounterVec,
    pub queries: IntCounterVec,
    /// Upgrades refused by admission, by reason.
    pub refused: IntCounterVec,
    /// Calls to the application's backend (docs/proxy.md), by kind and outcome.
    pub proxy_requests: IntCounterVec,
    pub proxy_duration: HistogramVec,
    /// Client publishes (`{"op":"publish"}`) by result.
    pub client_publishes: IntCounterVec,
}

pub const DROP_REASONS: &[&str] =
    &["slow_consumer", "client_gone", "shutdown", "unknown_connection", "protocol_error", "invalid_payload"];
pub const DISCONNECT_REASONS: &[&str] = &[
    "client",
    "slow_consumer",
    "protocol_error",
    "shutdown",
    "auth",
    "user_limit",
    "server",
    "rate_limited",
    "idle",
    "token_expired",
];

impl GatewayMetrics {
    pub fn new() -> Self {
        let registry = pushmesh_common::admin::registry();
        let connections =
            IntGauge::new("pushmesh_gateway_connections", "Client WebSocket connections open now.").expect("metric");
        let sse_connections =
            IntGauge::new("pushmesh_gateway_sse_connections", "Server-Sent Events streams open now (GET /sse).")
                .expect("metric");
        let accepted = IntCounter::new(
            "pushmesh_gateway_connections_accepted_total",
            "Client connections accepted (WebSocket and Server-Sent Events).",
        )
        .expect("metric");
        let disconnects = IntCounterVec::new(
            Opts::new("pushmesh_gateway_disconnects_total", "Client connections ended, by reason."),
            &["reason"],
        )
        .expect("metric");
        let deliveries =
            IntCounter::new("pushmesh_gateway_deliveries_total", "Message frames written to client sockets.")
                .expect("metric");
        let dropped = IntCounterVec::new(
            Opts::new("pushmesh_gateway_dropped_total", "Message frames that did not reach a client, by reason."),
            &["reason"],
        )
        .expect("metric");
        let hub_deliveries = IntCounter::new(
            "pushmesh_gateway_hub_deliveries_total",
            "Deliveries received from hubs, before local fan-out.",
        )
        .expect("metric");
        let duplicates = IntCounter::new(
            "pushmesh_gateway_duplicates_dropped_total",
            "Hub deliveries dropped because their publish was already delivered here (a relay and its \
             original, while a partition between this gateway and a hub heals).",
        )
        .expect("metric");
        let stale = IntCounter::new(
            "pushmesh_gateway_stale_dropped_total",
            "Hub channel deliveries dropped because this gateway already delivered that channel's offset or a \
             later one in the same epoch (a repeat, or a late copy from a hub that routed the channel during a \
             failover).",
        )
        .expect("metric");
        let offset_gaps = IntCounter::new(
            "pushmesh_gateway_offset_gaps_total",
            "Hub channel deliveries that skipped offsets after the channel's last one here (the skipped ones \
             are in the channel's history: a client that subscribes again with since gets them).",
        )
        .expect("metric");
        let hubs_attached =
            IntGauge::new("pushmesh_gateway_hubs_attached", "Hubs this gateway is attached to now.").expect("metric");
        let topics =
            IntGauge::new("pushmesh_gateway_topics", "Hub topics this gateway has local interest in.").expect("metric");
        let commands = IntCounterVec::new(
            Opts::new("pushmesh_gateway_client_commands_total", "Client commands handled, by op and result."),
            &["op", "result"],
        )
        .expect("metric");
        let auth_failures = IntCounterVec::new(
            Opts::new("pushmesh_gateway_auth_failures_total", "Connections refused at authentication, by reason."),
            &["reason"],
        )
        .expect("metric");
        let queries = IntCounterVec::new(
            Opts::new(
                "pushmesh_gateway_queries_total",
                "Hub queries answered (presence, stats, server-side commands), by op.",
            ),
            &["op"],
        )
        .expect("metric");
        let refused = IntCounterVec::new(
            Opts::new("pushmesh_gateway_upgrades_refused_total", "WebSocket upgrades refused at admission, by reason."),
            &["reason"],
        )
        .expect("metric");
        for r in ["origin_not_allowed", "gateway_full", "too_many_connections"] {
            refused.with_label_values(&[r]);
        }
        let proxy_requests = IntCounterVec::new(
            Opts::new(
                "pushmesh_gateway_proxy_requests_total",
                "Calls to the application's backend (connect, subscribe, publish, rpc, disconnect), by kind and outcome.",
            ),
            &["kind", "outcome"],
        )
        .expect("metric");
        let proxy_duration = HistogramVec::new(
            HistogramOpts::new(
                "pushmesh_gateway_proxy_duration_seconds",
                "Time of calls to the application's backend, by kind.",
            )
            .buckets(vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]),
            &["kind"],
        )
        .expect("metric");
        let client_publishes = IntCounterVec::new(
            Opts::new(
                "pushmesh_gateway_client_publishes_total",
                "Client publishes ({\"op\":\"publish\"}), by result: ok (a hub accepted it), refused (namespace or backend said no), failed (backend or hubs failed; the client was told).",
            ),
            &["result"],
        )
        .expect("metric");
        for c in [
            Box::new(proxy_requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(proxy_duration.clone()),
            Box::new(client_publishes.clone()),
            Box::new(refused.clone()),
            Box::new(auth_failures.clone()),
            Box::new(queries.clone()),
            Box::new(connections.clone()),
            Box::new(sse_connections.clone()),
            Box::new(accepted.clone()),
            Box::new(disconnects.clone()),
            Box::new(deliveries.clone()),
            Box::new(dropped.clone()),
            Box::new(hub_deliveries.clone()),
            Box::new(duplicates.clone()),
            Box::new(stale.clone()),
            Box::new(offset_gaps.clone()),
            Box::new(hubs_attached.clone()),
            Box::new(topics.clone()),
            Box::new(commands.clone()),
        ] {
            registry.register(c).expect("register metric");
        }
        for r in DROP_REASONS {
            dropped.with_label_values(&[r]);
        }
        for r in ["expired", "invalid", "missing"] {
            auth_failures.with_label_values(&[r]);
        }
        for r in DISCONNECT_REASONS {
            disconnects.with_label_values(&[r]);
        }
        // Every series a dashboard or alert may read exists from the start, at 0.
        for op in
            ["subscribe", "unsubscribe", "ping", "auth", "refresh", "publish", "rpc", "presence", "unknown", "invalid"]
        {
            for result in ["ok", "error"] {
                commands.with_label_values(&[op, result]);
            }
        }
        for op in ["presence", "stats", "subscribe", "unsubscribe", "disconnect", "user_connections"] {
            queries.with_label_values(&[op]);
        }
        Self {
            registry,
            connections,
            sse_connections,
            accepted,
            disconnects,
            deliveries,
            dropped,
            hub_deliveries,
            duplicates,
            stale,
            offset_gaps,
            hubs_attached,
            topics,
            commands,
            auth_failures,
            queries,
            refused,
            proxy_requests,
            proxy_duration,
            client_publishes,
        }
    }
}

impl Default for GatewayMetrics {
    fn default() -> Self {
        Self::new()
    }
}
