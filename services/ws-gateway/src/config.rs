//! The gateway's configuration: flags and `PUSHMESH_*` env vars, defaults
//! that work on a laptop next to `make run`'s hub.

use std::net::SocketAddr;

use clap::Parser;
use pushmesh_common::telemetry::LogArgs;

/// pushmesh ws-gateway: holds client WebSocket connections and fans hub
/// deliveries out to them.
#[derive(Debug, Clone, Parser)]
#[command(name = "ws-gateway", version)]
pub struct Config {
    /// Address of the HTTP server: /ws (WebSocket), /metrics, /healthz, /readyz.
    #[arg(long, env = "PUSHMESH_LISTEN_ADDR", default_value = "127.0.0.1:8080")]
    pub listen_addr: SocketAddr,

    /// Hub gRPC endpoints; the gateway attaches to every one of them
    /// (default: http://127.0.0.1:50051 when --hub-dns is not given either).
    #[arg(long = "hub", env = "PUSHMESH_HUBS", value_delimiter = ',')]
    pub hubs: Vec<String>,

    #[command(flatten)]
    pub hub_dns: pushmesh_common::discovery::HubDnsArgs,

    /// This gateway's id: the owner part of every connection id it hands
    /// out. Must be unique among live gateways (in Kubernetes, the pod name).
    /// Default: "gw-" and 8 random hex digits.
    #[arg(long, env = "PUSHMESH_GATEWAY_ID")]
    pub gateway_id: Option<String>,

    /// Frames queued per connection before the slow-consumer policy applies
    /// (the connection is closed with 1013 and the drop is counted).
    #[arg(long, env = "PUSHMESH_OUTBOUND_QUEUE", default_value_t = 1024)]
    pub outbound_queue: usize,

    /// Largest WebSocket message a client may send, in bytes (close 1009 beyond).
    #[arg(long, env = "PUSHMESH_MAX_MESSAGE_BYTES", default_value_t = 1 << 20)]
    pub max_message_bytes: usize,

    /// Per-connection read buffer, in bytes. Clients send small commands, so
    /// a small buffer keeps idle connections cheap (it grows for a larger
    /// message, up to --max-message-bytes).
    #[arg(long, env = "PUSHMESH_READ_BUFFER_BYTES", default_value_t = 256)]
    pub read_buffer_bytes: usize,

    /// Most bytes of missed messages one recovering subscribe (`since`, or
    /// an SSE Last-Event-ID) may replay; past it the answer is
    /// `recovered: false` (the client reloads its state). Also what one
    /// connection may recover per second, so recovery cannot be used to
    /// make the gateway send far more than it is asked.
    #[arg(long, env = "PUSHMESH_MAX_RECOVERY_BYTES", default_value_t = 1 << 20)]
    pub max_recovery_bytes: usize,

    /// Most channels one connection may subscribe to.
    #[arg(long, env = "PUSHMESH_MAX_CHANNELS_PER_CONNECTION", default_value_t = 256)]
    pub max_channels_per_connection: usize,

    /// How long a client's subscribe waits for the hubs' confirmation, in milliseconds.
    #[arg(long, env = "PUSHMESH_SUBSCRIBE_TIMEOUT_MS", default_value_t = 5000)]
    pub subscribe_timeout_ms: u64,

    /// Longest wait between two attempts to reach a hub, in milliseconds.
    #[arg(long, env = "PUSHMESH_RECONNECT_MAX_MS", default_value_t = 2000)]
    pub reconnect_max_ms: u64,

    /// After start, the gateway is ready only once attached to every hub,
    /// or to at least one after this many seconds.
    #[arg(long, env = "PUSHMESH_STARTUP_GRACE_SECS", default_value_t = 10)]
    pub startup_grace_secs: u64,

    /// Publish ids remembered to drop a second copy of one publish (which
    /// can arrive, directly and relayed, while a partition between this
    /// gateway and a hub heals); 0 turns it off.
    #[arg(long, env = "PUSHMESH_RECENT_IDS", default_value_t = 65_536)]
    pub recent_ids: usize,

    /// HTTP/2 keepalive ping interval (and timeout) towards hubs, in seconds:
    /// a dead or hung hub is noticed within about twice this.
    #[arg(long, env = "PUSHMESH_KEEPALIVE_SECS", default_value_t = 5)]
    pub keepalive_secs: u64,

    /// Seconds between the gateway's pings to each client (0: none); a
    /// client heard from in neither of the last two intervals is dropped.
    #[arg(long, env = "PUSHMESH_PING_INTERVAL_SECS", default_value_t = 25)]
    pub ping_interval_secs: u64,

    /// Time allowed for a client to send its HTTP upgrade request, in seconds.
    #[arg(long, env = "PUSHMESH_HANDSHAKE_TIMEOUT_SECS", default_value_t = 10)]
    pub handshake_timeout_secs: u64,

    /// HS256 secret for client JWTs. With no JWT key at all, clients are
    /// anonymous and may subscribe to any channel (local development only).
    #[arg(long, env = "PUSHMESH_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// File holding the HS256 secret (e.g. a mounted Kubernetes Secret).
    #[arg(long, env = "PUSHMESH_JWT_SECRET_FILE")]
    pub jwt_secret_file: Option<std::path::PathBuf>,

    /// PEM public key for RS256/ES256 client JWTs.
    #[arg(long, env = "PUSHMESH_JWT_PUBLIC_KEY_FILE")]
    pub jwt_public_key_file: Option<std::path::PathBuf>,

    /// JWT algorithm: HS256 (with a secret), RS256 or ES256 (with a public key).
    #[arg(long, env = "PUSHMESH_JWT_ALGORITHM", default_value = "HS256")]
    pub jwt_algorithm: String,

    /// A JSON Web Key Set file (RS256/ES256 keys, chosen by the token's
    /// `kid`), reloaded when it changes: keys rotate without a restart.
    #[arg(long, env = "PUSHMESH_JWT_JWKS_FILE")]
    pub jwt_jwks_file: Option<std::path::PathBuf>,

    /// A JSON Web Key Set URL (an identity provider's jwks_uri), fetched at
    /// start, every --jwt-jwks-refresh-secs, and when a token names an
    /// unknown `kid` (at most once per --jwt-jwks-min-interval-ms).
    #[arg(long, env = "PUSHMESH_JWT_JWKS_URL")]
    pub jwt_jwks_url: Option<String>,

    /// Seconds between fetches of --jwt-jwks-url.
    #[arg(long, env = "PUSHMESH_JWT_JWKS_REFRESH_SECS", default_value_t = 300)]
    pub jwt_jwks_refresh_secs: u64,

    /// Least time between two key set reloads caused by tokens naming an
    /// unknown `kid`, in milliseconds (made-up kids cost one fetch per interval).
    #[arg(long, env = "PUSHMESH_JWT_JWKS_MIN_INTERVAL_MS", default_value_t = 10000)]
    pub jwt_jwks_min_interval_ms: u64,

    /// Refuse tokens whose `iss` is not this (closed with 4001).
    #[arg(long, env = "PUSHMESH_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,

    /// Refuse tokens whose `aud` does not name this audience (closed with 4001).
    #[arg(long, env = "PUSHMESH_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,

    /// With JWT auth on: seconds a client has to authenticate after connecting.
    #[arg(long, env = "PUSHMESH_AUTH_TIMEOUT_SECS", default_value_t = 10)]
    pub auth_timeout_secs: u64,

    /// Most connections one user may hold on this gateway (0: no limit).
    #[arg(long, env = "PUSHMESH_MAX_CONNECTIONS_PER_USER", default_value_t = 0)]
    pub max_connections_per_user: usize,

    /// Origins allowed to open a WebSocket (comma-separated, e.g.
    /// https://app.example.com); "*" or none: any. Requests without an
    /// Origin header (non-browser clients) are always allowed.
    #[arg(long = "allowed-origin", env = "PUSHMESH_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,

    /// Most WebSocket connections on this gateway (0: no limit). Keep it
    /// below the process's open-file limit.
    #[arg(long, env = "PUSHMESH_MAX_CONNECTIONS", default_value_t = 0)]
    pub max_connections: usize,

    /// Most WebSocket connections from one source IP (0: no limit).
    #[arg(long, env = "PUSHMESH_MAX_CONNECTIONS_PER_IP", default_value_t = 0)]
    pub max_connections_per_ip: usize,

    /// Commands one client may send per second (0: no limit); beyond the
    /// burst the connection is closed with 1008.
    #[arg(long, env = "PUSHMESH_CLIENT_COMMANDS_PER_SEC", default_value_t = 50)]
    pub client_commands_per_sec: u32,

    /// Commands a client may send at once above its rate.
    #[arg(long, env = "PUSHMESH_CLIENT_COMMANDS_BURST", default_value_t = 100)]
    pub client_commands_burst: u32,

    /// TOML file of channel namespaces (options per channel prefix) and the
    /// application backend proxy (docs/proxy.md; give the hubs the same
    /// file: they read its history options); checked at start-up, errors
    /// name the line. None: every channel gets the defaults (no client
    /// publish, no proxies, recovery on).
    #[arg(long, env = "PUSHMESH_NAMESPACES")]
    pub namespaces: Option<std::path::PathBuf>,

    #[command(flatten)]
    pub hub_tls: pushmesh_common::tls::HubTlsArgs,

    #[command(flatten)]
    pub runtime: pushmesh_common::runtime::RuntimeArgs,

    #[command(flatten)]
    pub log: LogArgs,
}

impl Config {
    /// The defaults, on port 0 and attached to `hubs` (for tests).
    pub fn ephemeral(hubs: Vec<String>) -> Self {
        let mut c = Self::parse_from(["ws-gateway"]);
        c.listen_addr = "127.0.0.1:0".parse().expect("addr");
        c.hubs = hubs;
        c
    }
}
