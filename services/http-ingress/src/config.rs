//! The ingress's configuration: flags and `PUSHMESH_*` env vars, defaults
//! that work on a laptop next to `make run`'s hub.

use std::net::SocketAddr;

use clap::Parser;
use pushmesh_common::telemetry::LogArgs;

/// pushmesh http-ingress: the HTTP API backends publish through.
#[derive(Debug, Clone, Parser)]
#[command(name = "http-ingress", version)]
pub struct Config {
    /// Address of the HTTP server (API, /metrics, /healthz, /readyz).
    #[arg(long, env = "PUSHMESH_LISTEN_ADDR", default_value = "127.0.0.1:8081")]
    pub listen_addr: SocketAddr,

    /// Address of the gRPC server API (pushmesh.v1.PushApi, the same
    /// commands as the HTTP API).
    #[arg(long, env = "PUSHMESH_GRPC_ADDR", default_value = "127.0.0.1:8082")]
    pub grpc_addr: SocketAddr,

    /// Hub gRPC endpoints. A publish goes to the hub its target hashes to
    /// (rendezvous hashing), and to the next one if that hub is down
    /// (default: http://127.0.0.1:50051 when --hub-dns is not given either).
    #[arg(long = "hub", env = "PUSHMESH_HUBS", value_delimiter = ',')]
    pub hubs: Vec<String>,

    #[command(flatten)]
    pub hub_dns: pushmesh_common::discovery::HubDnsArgs,

    /// Largest request body, in bytes (413 beyond).
    #[arg(long, env = "PUSHMESH_MAX_BODY_BYTES", default_value_t = 1 << 20)]
    pub max_body_bytes: u64,

    /// The hubs' --max-message-bytes: publish stream frames are kept under
    /// it, and --max-body-bytes must leave room under it (checked at start:
    /// a body the hubs would refuse is a configuration error, not a 503).
    #[arg(long, env = "PUSHMESH_HUB_MAX_MESSAGE_BYTES", default_value_t = 4 << 20)]
    pub hub_max_message_bytes: u64,

    /// Origins allowed to call the API from a browser (CORS), e.g. the demo
    /// page's http://127.0.0.1:8080; "*" allows any. Default: none.
    #[arg(long = "cors-allow-origin", env = "PUSHMESH_CORS_ALLOW_ORIGINS", value_delimiter = ',')]
    pub cors_allow_origins: Vec<String>,

    /// API keys (comma-separated), each `KEY` or `KEY:admin` (every route)
    /// or `KEY:publish` (publish, broadcast, send). Several at once allow
    /// rotation. With none (and no file), the API is open: local use only.
    #[arg(long = "api-key", env = "PUSHMESH_API_KEYS", value_delimiter = ',', hide_env_values = true)]
    pub api_keys: Vec<String>,

    /// File with API keys, one per line (same forms; `#` comments).
    #[arg(long, env = "PUSHMESH_API_KEYS_FILE")]
    pub api_keys_file: Option<std::path::PathBuf>,

    /// Requests per second allowed per client IP (0: unlimited); beyond it
    /// the answer is 429 with Retry-After.
    #[arg(long, env = "PUSHMESH_RATE_LIMIT_PER_SEC", default_value_t = 10_000)]
    pub rate_limit_per_sec: u32,

    /// Burst allowed above the per-second rate.
    #[arg(long, env = "PUSHMESH_RATE_LIMIT_BURST", default_value_t = 20_000)]
    pub rate_limit_burst: u32,

    /// Most commands in one `POST /batch`.
    #[arg(long, env = "PUSHMESH_MAX_BATCH", default_value_t = 1000)]
    pub max_batch: usize,

    /// How often each hub's health is checked, in milliseconds.
    #[arg(long, env = "PUSHMESH_HUB_PROBE_MS", default_value_t = 1000)]
    pub hub_probe_ms: u64,

    /// Time allowed for one hub to accept a publish, in milliseconds.
    #[arg(long, env = "PUSHMESH_PUBLISH_TIMEOUT_MS", default_value_t = 2000)]
    pub publish_timeout_ms: u64,

    /// Time allowed for a hub to answer a query (presence, stats, users,
    /// server-side subscribe and disconnect), in milliseconds. Keep it above
    /// the hubs' --query-timeout-ms, so a hub always answers first, with
    /// `partial: true` when a gateway did not answer in time.
    #[arg(long, env = "PUSHMESH_QUERY_TIMEOUT_MS", default_value_t = 3000)]
    pub query_timeout_ms: u64,

    /// Serve the seed's publish form, `GET /?content=…[&to_worker_id=…&to_connection_id=…]`.
    /// Any web page can make a visitor's browser send a GET (an image tag
    /// will do), so on an ingress without API keys that a browser can reach
    /// this is a way for a page to broadcast; with keys it needs one like
    /// every route. `false` turns it off (404).
    #[arg(long, env = "PUSHMESH_SEED_FORM", default_value_t = true, action = clap::ArgAction::Set)]
    pub seed_form: bool,

    /// How long publishes are kept to replay to a gateway found cut off
    /// from their hub, in milliseconds; should exceed the gateways' hub
    /// failure detection (about twice their keepalive) plus the probe
    /// interval. 0 turns replay off.
    #[arg(long, env = "PUSHMESH_RELAY_REPLAY_MS", default_value_t = 15_000)]
    pub relay_replay_ms: u64,

    /// Most bytes of publishes kept for that replay (oldest dropped first).
    #[arg(long, env = "PUSHMESH_RELAY_REPLAY_BYTES", default_value_t = 64 << 20)]
    pub relay_replay_bytes: usize,

    #[command(flatten)]
    pub hub_tls: pushmesh_common::tls::HubTlsArgs,

    #[command(flatten)]
    pub colocated_hub: ColocatedHubArgs,

    #[command(flatten)]
    pub runtime: pushmesh_common::runtime::RuntimeArgs,

    #[command(flatten)]
    pub log: LogArgs,
}

/// A hub run inside the ingress process (see docs/architecture.md,
/// "Co-located hub"): gateways attach to it like to any hub; the ingress
/// hands it publishes without a gRPC hop.
#[derive(Debug, Clone, clap::Args)]
pub struct ColocatedHubArgs {
    /// Run a hub in this process, serving gateways' gRPC on this address.
    /// Its other settings (engine, history, Redis, TLS, hub id) come from
    /// the same `PUSHMESH_*` variables a standalone hub reads.
    #[arg(long, env = "PUSHMESH_COLOCATED_HUB_ADDR")]
    pub colocated_hub_addr: Option<SocketAddr>,

    /// Its admin address (/metrics, /healthz, /readyz of the hub).
    #[arg(long, env = "PUSHMESH_COLOCATED_HUB_ADMIN_ADDR", default_value = "127.0.0.1:9090")]
    pub colocated_hub_admin_addr: SocketAddr,

    /// The URL this hub has in the hub set (--hub or --hub-dns), e.g.
    /// http://$(POD_IP):50051; default http://<--colocated-hub-addr>.
    /// Added to --hub when that does not list it and --hub-dns is unused.
    #[arg(long, env = "PUSHMESH_COLOCATED_HUB_URL")]
    pub colocated_hub_url: Option<String>,
}

impl Config {
    /// The defaults, on port 0 and publishing to `hubs` (for tests).
    pub fn ephemeral(hubs: Vec<String>) -> Self {
        let mut c = Self::parse_from(["http-ingress"]);
        c.listen_addr = "127.0.0.1:0".parse().expect("addr");
        c.grpc_addr = "127.0.0.1:0".parse().expect("addr");
        c.hubs = hubs;
        c
    }
}
