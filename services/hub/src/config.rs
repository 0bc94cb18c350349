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

    /// How long a confirmed direct send waits for its gateway to say
    /// whether the connection got it, in milliseconds (then it is answered
    /// as timed out: it may or may not have been delivered).
    #[arg(long, env = "PUSHMESH_CONFIRM_TIMEOUT_MS", default_value_t = 1000)]
    pub confirm_timeout_ms: u64,

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

    /// The channel namespaces file (TOML, docs/proxy.md: the same file the
    /// gateways read): its `history_size` / `history_ttl_secs` override
    /// --history-size / --history-ttl-secs per channel prefix. Checked at
    /// start-up, errors name the line.
    #[arg(long, env = "PUSHMESH_NAMESPACES")]
    pub namespaces: Option<std::path::PathBuf>,

    /// Where channel state (positions, history, idempotency keys) lives:
    /// `memory` (this hub's memory; lost with it) or `redis` (shared by
    /// every hub; survives a hub crash, see --redis-url).
    #[arg(long, env = "PUSHMESH_ENGINE", value_enum, default_value_t = EngineKind::Memory)]
    pub engine: EngineKind,

    /// The Redis engine's server: `redis://[user:password@]host:port[/db]`,
    /// `rediss://…` for TLS. Comma-separated: the seeds of a Redis Cluster
    /// (with --redis-cluster) or the sentinels (with --redis-sentinel-master).
    #[arg(long, env = "PUSHMESH_REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,

    /// Treat --redis-url as the seeds of a Redis Cluster.
    #[arg(long, env = "PUSHMESH_REDIS_CLUSTER")]
    pub redis_cluster: bool,

    /// Find the master through Redis Sentinel: its name (--redis-url lists
    /// the sentinels).
    #[arg(long, env = "PUSHMESH_REDIS_SENTINEL_MASTER")]
    pub redis_sentinel_master: Option<String>,

    /// Redis password, overriding the URL's (for a Kubernetes Secret in the
    /// environment). Prefer --redis-password-file.
    #[arg(long, env = "PUSHMESH_REDIS_PASSWORD", hide_env_values = true)]
    pub redis_password: Option<String>,

    /// Read the Redis password from this file (a mounted Secret); trailing
    /// newlines are ignored.
    #[arg(long, env = "PUSHMESH_REDIS_PASSWORD_FILE")]
    pub redis_password_file: Option<std::path::PathBuf>,

    /// CA certificate (PEM) to verify a `rediss://` server with, instead of
    /// the system's roots.
    #[arg(long, env = "PUSHMESH_REDIS_TLS_CA")]
    pub redis_tls_ca: Option<std::path::PathBuf>,

    /// Prefix of every Redis key (several deployments can share a Redis).
    #[arg(long, env = "PUSHMESH_REDIS_PREFIX", default_value = "pushmesh")]
    pub redis_prefix: String,

    /// Multiplexed connections to Redis (calls are spread over them; each
    /// pipelines many calls). Ignored for a cluster (one per node).
    #[arg(long, env = "PUSHMESH_REDIS_CONNECTIONS", default_value_t = 2)]
    pub redis_connections: usize,

    /// How long a channel state engine call may take before the publish
    /// fails with UNAVAILABLE (the ingress answers 503 + Retry-After), in
    /// milliseconds. Keep it under the ingress's --publish-timeout-ms.
    #[arg(long, env = "PUSHMESH_ENGINE_TIMEOUT_MS", default_value_t = 500)]
    pub engine_timeout_ms: u64,

    /// After start, how long the hub reports itself not serving (gRPC
    /// health, /readyz) while gateways attach, so ingresses do not route
    /// channels to it before the gateways can receive them. Keep it above
    /// the gateways' --reconnect-max-ms.
    #[arg(long, env = "PUSHMESH_WARMUP_MS", default_value_t = 3000)]
    pub warmup_ms: u64,

    /// Largest gRPC message the hub takes, in bytes: one publish, one
    /// PublishStream frame, one gateway stream message (refused with
    /// OUT_OF_RANGE beyond, which an ingress answers as 413). Keep the
    /// ingresses' --hub-max-message-bytes equal to it.
    #[arg(long, env = "PUSHMESH_MAX_MESSAGE_BYTES", default_value_t = 4 << 20)]
    pub max_message_bytes: usize,

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
    /// signed by this CA (PEM): mutual TLS, with each caller's role
    /// (gateway, ingress) and gateway id read from its certificate's SANs
    /// and checked per RPC (docs/security.md, hub identities).
    #[arg(long, env = "PUSHMESH_TLS_CLIENT_CA")]
    pub tls_client_ca: Option<std::path::PathBuf>,

    #[command(flatten)]
    pub runtime: pushmesh_common::runtime::RuntimeArgs,

    #[command(flatten)]
    pub log: LogArgs,
}

/// Where channel state lives (see `--engine`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EngineKind {
    Memory,
    Redis,
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
