//! The hub's configuration: flags and `PUSHMESH_*` env vars, defaults that
//! work on a laptop.

use std::net::SocketAddr;

use clap::Parser;
use pushmesh_common::telemetry::LogArgs;

/// pushmesh hub: the channel bus. Gateways attach to it with a gRPC stream
/// and say which topics they want; ingresses publish to it.
#[derive(Debug, Clone, Parser)]
#[command(name = "hub", version)]
pub struct Config {
    /// Address of the gRPC server (Attach, Publish, grpc.health.v1).
    #[arg(long, env = "PUSHMESH_GRPC_ADDR", default_value = "127.0.0.1:50051")]
    pub grpc_addr: SocketAddr,

    /// Address of the admin HTTP server (/metrics, /healthz, /readyz).
    #[arg(long, env = "PUSHMESH_ADMIN_ADDR", default_value = "127.0.0.1:9090")]
    pub admin_addr: SocketAddr,

    /// This hub's id in logs and in the `Attached` greeting (default: random).
    #[arg(long, env = "PUSHMESH_HUB_ID")]
    pub hub_id: Option<String>,

    /// Deliveries queued per attached gateway before new ones are dropped
    /// (and counted in pushmesh_hub_dropped_total{reason="gateway_queue_full"}).
    #[arg(long, env = "PUSHMESH_GATEWAY_QUEUE", default_value_t = 16384)]
    pub gateway_queue: usize,

    /// Most deliveries packed into one stream message to a gateway.
    #[arg(long, env = "PUSHMESH_BATCH_MAX", default_value_t = 512)]
    pub batch_max: usize,

    /// How long a query (presence, stats, server-side subscribe…) waits for
    /// gateways' answers, in milliseconds.
    #[arg(long, env = "PUSHMESH_QUERY_TIMEOUT_MS", default_value_t = 2000)]
    pub query_timeout_ms: u64,

    /// Messages kept per channel for recovery (0: positions only).
    #[arg(long, env = "PUSHMESH_HISTORY_SIZE", default_value_t = 100)]
    pub history_size: usize,

    /// Seconds a message stays in history (and a channel stream without
    /// publishes lives: after that its epoch changes).
    #[arg(long, env = "PUSHMESH_HISTORY_TTL_SECS", default_value_t = 300)]
    pub history_ttl_secs: u64,

    /// Byte budget for all channels' history together; the oldest entries
    /// go first when it is exceeded.
    #[arg(long, env = "PUSHMESH_HISTORY_MAX_BYTES", default_value_t = 64 << 20)]
    pub history_max_bytes: usize,

    /// After start, how long the hub reports itself not serving (gRPC
    /// health, /readyz) while gateways attach, so ingresses do not route
    /// channels to it before the gateways can receive them. Keep it above
    /// the gateways' --reconnect-max-ms.
    #[arg(long, env = "PUSHMESH_WARMUP_MS", default_value_t = 3000)]
    pub warmup_ms: u64,

    /// HTTP/2 keepalive ping interval on gateway streams, in seconds.
    #[arg(long, env = "PUSHMESH_KEEPALIVE_SECS", default_value_t = 5)]
    pub keepalive_secs: u64,

    /// Serve gRPC over TLS with this certificate (PEM; needs --tls-key).
    #[arg(long, env = "PUSHMESH_TLS_CERT")]
    pub tls_cert: Option<std::path::PathBuf>,

    /// The key of --tls-cert (PEM).
    #[arg(long, env = "PUSHMESH_TLS_KEY")]
    pub tls_key: Option<std::path::PathBuf>,

    /// Require clients (gateways, ingresses) to present a certificate
    /// signed by this CA (PEM): mutual TLS.
    #[arg(long, env = "PUSHMESH_TLS_CLIENT_CA")]
    pub tls_client_ca: Option<std::path::PathBuf>,

    #[command(flatten)]
    pub log: LogArgs,
}

impl Config {
    /// The defaults, with both servers on port 0 (for tests).
    pub fn ephemeral() -> Self {
        let mut c = Self::parse_from(["hub"]);
        c.grpc_addr = "127.0.0.1:0".parse().expect("addr");
        c.admin_addr = "127.0.0.1:0".parse().expect("addr");
        c
    }
}
