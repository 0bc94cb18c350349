//! The command line, as clap derives: every subcommand, flag and help text
//! in one place, so `pushmesh --help` and `pushmesh <cmd> --help` read like
//! a short manual. Each subcommand's behaviour lives in its own module.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::duration::parse_duration;

/// The exit codes, appended to the help of the commands that use them.
macro_rules! exit_codes {
    () => {
        "\n\nExit codes:
  0  done (listen: got --count messages, or listened for --timeout)
  1  the server refused the request (the message says why), or another error
  2  wrong usage: a flag or argument is missing or malformed
  3  pushmesh could not be reached (not running, not ready, no hub available)
  4  listen: --timeout passed before --count messages arrived
  5  listen: the gateway closed the connection (the close code says why)"
    };
}

/// pushmesh: publish to WebSocket clients over HTTP, and watch them receive.
#[derive(Debug, Parser)]
#[command(
    name = "pushmesh",
    version,
    about,
    long_about = "pushmesh: publish to WebSocket clients over HTTP, and watch them receive.\n\n\
        Backends publish through the http-ingress; clients connect to a ws-gateway; hubs \
        route each message to the gateways whose clients want it.",
    after_help = concat!("Try it (three terminals):\n  \
        pushmesh dev                                   # hub + ws-gateway + http-ingress on localhost\n  \
        pushmesh listen --channel news                 # a client: prints what it receives\n  \
        pushmesh publish --channel news '{\"text\":\"hi\"}'  # a backend: publish\n\n\
        Then open the demo page http://127.0.0.1:8080/ and try `pushmesh stats`.\n\n\
        Flags shown with [env: PUSHMESH_…] also read that environment variable (see each command's --help).", exit_codes!())
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run hub, ws-gateway and http-ingress in this one process (what `make run` starts).
    #[command(
        long_about = "Run a whole local pushmesh in this one process: a hub, a ws-gateway and an \
            http-ingress on the same addresses `make run` uses, wired together, with the ingress \
            accepting browser calls (CORS) from the gateway's demo page. Waits until both are \
            ready, prints how to use them, and stops cleanly on Ctrl-C.",
        after_help = "Examples:\n  \
            pushmesh dev\n  \
            pushmesh dev --jwt-secret dev-secret            # clients need a token (pushmesh token)\n  \
            pushmesh dev --gateway-addr 0.0.0.0:8080        # reachable from a phone on your network\n  \
            pushmesh dev --hub-grpc-addr 127.0.0.1:0 --hub-admin-addr 127.0.0.1:0 \\\n    \
            --gateway-addr 127.0.0.1:0 --ingress-addr 127.0.0.1:0 --ingress-grpc-addr 127.0.0.1:0 --announce\n    \
            # any free ports, for scripts (the first stdout line names them)"
    )]
    Dev(DevArgs),

    /// Publish a message to a channel, to everyone, to one connection or to one user.
    #[command(
        long_about = "Publish a message through the http-ingress. The data is JSON: an argument \
            that parses as JSON is sent as that value (an object, a number…); any other text is \
            sent as a JSON string. Without an argument (or with `-`), the data is read from stdin.",
        after_help = concat!("Examples:\n  \
            pushmesh publish --channel news hello                    # data: \"hello\"\n  \
            pushmesh publish --channel news '{\"text\":\"hi\"}'          # data: {\"text\":\"hi\"}\n  \
            echo '{\"n\":1}' | pushmesh publish --channel news          # data from stdin\n  \
            pushmesh publish --broadcast 'to everyone'\n  \
            pushmesh publish --connection gw-local:1 'just you'      # the id `pushmesh listen` prints\n  \
            pushmesh publish --user alice 'to every tab of alice'\n  \
            pushmesh publish --channel news --string 42              # the string \"42\", not the number", exit_codes!())
    )]
    Publish(PublishArgs),

    /// Connect to a gateway like a client: subscribe and print each message as it arrives.
    #[command(
        long_about = "Connect to a ws-gateway as a WebSocket client, subscribe to channels, and print \
            each delivery on stdout as it arrives (status lines go to stderr, so stdout can be \
            piped). Also a smoke test: with --count it exits 0 once that many messages arrived, \
            and with --timeout it fails (exit 4) if they did not arrive in time.",
        after_help = concat!("Examples:\n  \
            pushmesh listen --channel news --channel sport\n  \
            pushmesh listen --channel news --count 1 --timeout 10s   # smoke test: exit 0 after one message\n  \
            pushmesh listen --channel news --since 3f2a…:41          # resume after the last position seen\n  \
            pushmesh listen --output data | jq .                     # only the data of each message\n  \
            pushmesh listen --token \"$(pushmesh token --user alice --channel 'chat:*')\" --channel chat:1", exit_codes!())
    )]
    Listen(ListenArgs),

    /// Mint a client JWT (HS256) for a user and channel patterns, for testing.
    #[command(
        long_about = "Mint an HS256 JWT the ws-gateway accepts when it runs with --jwt-secret: `sub` is \
            the user id, `channels` the patterns the client may subscribe to (`*` matches any run of \
            characters), `exp` the expiry. Prints only the token on stdout, so it can be captured. \
            For testing and local development: production tokens come from your own backend.",
        after_help = "Examples:\n  \
            pushmesh token --secret dev-secret --user alice --channel 'chat:*' --channel news\n  \
            export PUSHMESH_JWT_SECRET=dev-secret; TOKEN=$(pushmesh token --user alice --channel '*' --ttl 10m)\n  \
            websocat \"ws://127.0.0.1:8080/ws?token=$TOKEN\""
    )]
    Token(TokenArgs),

    /// Show connections and channels per gateway, as a table.
    #[command(after_help = "Example:\n  pushmesh stats\n  pushmesh stats --json | jq .connections")]
    Stats(StatsArgs),

    /// Show who is subscribed to a channel, as a table.
    #[command(after_help = "Example:\n  pushmesh presence news\n  pushmesh presence news --limit 10 --json")]
    Presence(PresenceArgs),

    /// Show a channel's kept messages (its history), oldest first.
    #[command(
        long_about = "Show a channel's kept messages, oldest first, with their offsets, from the oldest \
            kept or after a position (`--since EPOCH:OFFSET`, the last message you saw). How much is kept \
            is the hubs' --history-size and --history-ttl-secs; with the Redis engine it survives a hub crash.",
        after_help = "Examples:\n  pushmesh history news\n  pushmesh history news --since 5f3a9c0d1e2b4a67:41 --limit 10\n  pushmesh history news --json | jq '.messages[].data'"
    )]
    History(HistoryArgs),
}

/// Where the http-ingress is, and how to call it.
#[derive(Debug, Clone, Args)]
pub struct IngressArgs {
    /// Base URL of the http-ingress.
    #[arg(long = "ingress", env = "PUSHMESH_INGRESS_URL", default_value = "http://127.0.0.1:8081")]
    pub url: String,

    /// API key, sent as `Authorization: Bearer <key>` (when the ingress requires one).
    #[arg(long, env = "PUSHMESH_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,

    /// Give up on a request after this long (e.g. 500ms, 10s, 1m).
    #[arg(long = "request-timeout", default_value = "10s", value_parser = parse_duration)]
    pub timeout: Duration,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["channel", "broadcast", "connection", "user"])))]
pub struct PublishArgs {
    /// Publish to the subscribers of this channel.
    #[arg(long, short = 'c')]
    pub channel: Option<String>,

    /// Publish to every connected client.
    #[arg(long, short = 'b')]
    pub broadcast: bool,

    /// Send to one connection (the id from its welcome frame, e.g. gw-local:1).
    #[arg(long)]
    pub connection: Option<String>,

    /// Send to every connection of this user (the `sub` of their token).
    #[arg(long, short = 'u')]
    pub user: Option<String>,

    /// Connection ids that must not receive it (broadcast and user only; repeatable).
    #[arg(long, value_name = "CONNECTION")]
    pub exclude: Vec<String>,

    /// Send the data as a JSON string even when it parses as JSON.
    #[arg(long, conflicts_with = "json")]
    pub string: bool,

    /// Require the data to be valid JSON (fail instead of sending it as a string).
    #[arg(long)]
    pub json: bool,

    /// Print the ingress's JSON response instead of a sentence.
    #[arg(long = "output-json")]
    pub output_json: bool,

    /// The data; `-` or nothing reads it from stdin.
    pub data: Option<String>,

    #[command(flatten)]
    pub ingress: IngressArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// `channel: data`, one line per message.
    Text,
    /// Each frame exactly as received (JSON), one per line.
    Json,
    /// Only the data of each message (JSON), one per line.
    Data,
}

#[derive(Debug, Args)]
pub struct ListenArgs {
    /// WebSocket URL of a ws-gateway (`/ws` is added when the URL has no path).
    #[arg(long = "gateway", env = "PUSHMESH_GATEWAY_URL", default_value = "ws://127.0.0.1:8080/ws")]
    pub url: String,

    /// Subscribe to this channel (repeatable). Without one, only broadcasts
    /// and sends to this connection or its user arrive.
    #[arg(long, short = 'c', value_name = "CHANNEL")]
    pub channel: Vec<String>,

    /// Recover what was missed since a stream position EPOCH:OFFSET (the
    /// `epoch` and `offset` of the last message seen; needs exactly one --channel).
    #[arg(long, value_name = "EPOCH:OFFSET")]
    pub since: Option<String>,

    /// JWT for a gateway that requires auth (see `pushmesh token`).
    #[arg(long, env = "PUSHMESH_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// Exit 0 once this many messages arrived.
    #[arg(long, short = 'n')]
    pub count: Option<u64>,

    /// Stop after this long (e.g. 10s, 2m): exit 4 if --count messages had not
    /// arrived by then, exit 0 when no --count was given.
    #[arg(long, value_parser = parse_duration)]
    pub timeout: Option<Duration>,

    /// How long to keep trying to reach the gateway before giving up (exit 3).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub connect_timeout: Duration,

    /// What to print for each message.
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Text)]
    pub output: Output,

    /// Connect with ?format=raw (each delivery is the bare content, as in the
    /// original seed) and print each frame as it is.
    #[arg(long)]
    pub raw: bool,

    /// Print no status lines on stderr (connected, subscribed, summary).
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

#[derive(Debug, Args)]
pub struct TokenArgs {
    /// The gateway's HS256 secret (the same PUSHMESH_JWT_SECRET the gateway reads).
    #[arg(long, env = "PUSHMESH_JWT_SECRET", hide_env_values = true)]
    pub secret: String,

    /// The user id (`sub`); sends to this user reach every connection made with the token.
    #[arg(long, short = 'u')]
    pub user: String,

    /// A channel pattern the client may subscribe to (repeatable; `*` matches
    /// any run of characters, e.g. `chat:*`). None: no channel at all.
    #[arg(long, short = 'c', value_name = "PATTERN")]
    pub channel: Vec<String>,

    /// How long the token is valid (e.g. 30s, 10m, 1h, 7d).
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub ttl: Duration,
}

#[derive(Debug, Args)]
pub struct StatsArgs {
    /// Print the ingress's JSON instead of a table.
    #[arg(long)]
    pub json: bool,

    #[command(flatten)]
    pub ingress: IngressArgs,
}

#[derive(Debug, Args)]
pub struct PresenceArgs {
    /// The channel.
    pub channel: String,

    /// List at most this many connections (counts are exact regardless).
    #[arg(long)]
    pub limit: Option<u32>,

    /// Print the ingress's JSON instead of a table.
    #[arg(long)]
    pub json: bool,

    #[command(flatten)]
    pub ingress: IngressArgs,
}

#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// The channel.
    pub channel: String,

    /// Only the messages after this position (`EPOCH:OFFSET`, as in a
    /// message's epoch and offset).
    #[arg(long)]
    pub since: Option<String>,

    /// Show at most this many messages (0–10000; default: all kept).
    #[arg(long)]
    pub limit: Option<u32>,

    /// Print the ingress's JSON instead of a table.
    #[arg(long)]
    pub json: bool,

    #[command(flatten)]
    pub ingress: IngressArgs,
}

#[derive(Debug, Args)]
pub struct DevArgs {
    /// hub gRPC address (gateways attach to it; the ingress publishes to it).
    #[arg(long, env = "PUSHMESH_DEV_HUB_GRPC_ADDR", default_value = "127.0.0.1:50051")]
    pub hub_grpc_addr: SocketAddr,

    /// hub admin address (/metrics, /healthz, /readyz).
    #[arg(long, env = "PUSHMESH_DEV_HUB_ADMIN_ADDR", default_value = "127.0.0.1:9090")]
    pub hub_admin_addr: SocketAddr,

    /// ws-gateway address (/ws, the demo page at /, /metrics).
    #[arg(long, env = "PUSHMESH_DEV_GATEWAY_ADDR", default_value = "127.0.0.1:8080")]
    pub gateway_addr: SocketAddr,

    /// http-ingress address (the HTTP API, /metrics).
    #[arg(long, env = "PUSHMESH_DEV_INGRESS_ADDR", default_value = "127.0.0.1:8081")]
    pub ingress_addr: SocketAddr,

    /// http-ingress gRPC API address (pushmesh.v1.PushApi).
    #[arg(long, env = "PUSHMESH_DEV_INGRESS_GRPC_ADDR", default_value = "127.0.0.1:8082")]
    pub ingress_grpc_addr: SocketAddr,

    /// The gateway's id: the prefix of every connection id.
    #[arg(long, env = "PUSHMESH_DEV_GATEWAY_ID", default_value = "gw-local")]
    pub gateway_id: String,

    /// The channel namespaces and backend proxy file (TOML, see docs/proxy.md):
    /// the gateway's options and the hub's history per namespace.
    #[arg(long, env = "PUSHMESH_NAMESPACES")]
    pub namespaces: Option<std::path::PathBuf>,

    /// Require client JWTs signed with this HS256 secret (mint them with `pushmesh token`).
    #[arg(long, env = "PUSHMESH_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// More origins allowed to call the ingress from a browser (the gateway's own
    /// origin, for its demo page, is always allowed). "*" allows any.
    #[arg(long = "cors-allow-origin", env = "PUSHMESH_DEV_CORS_ALLOW_ORIGINS", value_delimiter = ',')]
    pub cors_allow_origin: Vec<String>,

    /// Log filter, in RUST_LOG syntax (e.g. info, or debug,h2=info).
    #[arg(long, env = "PUSHMESH_LOG", default_value = "warn")]
    pub log: String,

    /// Print one JSON line with the bound addresses on stdout first
    /// ({"service":"dev","listening":{…}}), for scripts and tests.
    #[arg(long, env = "PUSHMESH_DEV_ANNOUNCE")]
    pub announce: bool,

    /// How long to wait for the services to become ready.
    #[arg(long, env = "PUSHMESH_DEV_READY_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub ready_timeout: Duration,
}
