//! Channel state engines: where a channel's stream position (epoch +
//! offset), its bounded history and its idempotency keys live.
//!
//! The hubs stay the fan-out layer whichever engine holds the state; an
//! engine only *positions* publishes and answers history reads. Two
//! implementations:
//!
//! - [`memory`]: the state in the owning hub's memory (the default, no
//!   dependency). A hub that dies takes its channels' state with it: the
//!   next owner starts a new epoch.
//! - [`redis`]: the state in Redis (or Valkey, or a Redis Cluster). Every
//!   hub reads and writes the same streams, so a channel that moves to
//!   another hub (rendezvous failover) continues the same epoch and clients
//!   recover across a hub crash.
//!
//! Calls return `'static` boxed futures so the [`crate::sequencer`] can poll
//! one in place and, only if it is not ready at once (Redis), move it into a
//! task. The memory engine does its work synchronously inside the call and
//! returns a ready future, so it never costs a task or a wake-up.

pub mod limits;
pub mod memory;
pub mod redis;

use std::sync::Arc;

use bytes::Bytes;
use futures_util::future::BoxFuture;

use pushmesh_common::ids::Channel;

use crate::metrics::HubMetrics;

/// One publish to position.
#[derive(Debug, Clone)]
pub struct NewEntry {
    pub data: Bytes,
    /// The idempotency key (empty: none).
    pub key: String,
}

/// Where one publish of a batch landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// Positioned at this offset: deliver it.
    New(u64),
    /// Its idempotency key was seen at this offset: do not deliver again.
    Duplicate(u64),
}

/// The answer to an append: the stream's epoch and one slot per entry, in
/// the batch's order (new offsets consecutive and increasing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    pub epoch: String,
    pub slots: Vec<Slot>,
}

/// What a history read asks for.
#[derive(Debug, Clone)]
pub struct ReadQuery {
    /// The last position the reader saw; `None`: from the oldest entry kept.
    pub since: Option<(String, u64)>,
    /// Most entries wanted (0: all that are kept).
    pub limit: usize,
}

/// A history read's answer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Page {
    /// The stream's current epoch and top offset (empty epoch: no stream).
    pub epoch: String,
    pub top: u64,
    /// With `since`: the entries are exactly those after it (up to the
    /// limit). Without `since`: always true.
    pub recovered: bool,
    /// (offset, data), oldest first.
    pub entries: Vec<(u64, Bytes)>,
}

/// Why an engine call failed. Every variant is "try again later" for the
/// caller: the hub answers `UNAVAILABLE` and the ingress 503 + Retry-After.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EngineError {
    #[error("the {engine} engine did not answer within {ms} ms")]
    Timeout { engine: &'static str, ms: u64 },
    #[error("the {engine} engine is unreachable: {reason}")]
    Down { engine: &'static str, reason: String },
    #[error("the {engine} engine failed: {reason}")]
    Failed { engine: &'static str, reason: String },
}

impl EngineError {
    /// The error without its underlying reason (which can name internal
    /// addresses): what API answers carry. The hub logs the whole of it.
    pub fn public(&self) -> String {
        match self {
            Self::Timeout { engine, ms } => format!("the {engine} engine did not answer within {ms} ms"),
            Self::Down { engine, .. } => format!("the {engine} engine is unreachable"),
            Self::Failed { engine, .. } => format!("the {engine} engine failed"),
        }
    }

    /// The `kind` label of `pushmesh_hub_engine_errors_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Timeout { .. } => "timeout",
            Self::Down { .. } => "unavailable",
            Self::Failed { .. } => "failed",
        }
    }
}

pub type EngineFuture<T> = BoxFuture<'static, Result<T, EngineError>>;

/// A channel state engine (see the module doc).
pub trait Engine: Send + Sync + 'static {
    /// `memory` or `redis`, for logs, errors and metrics.
    fn name(&self) -> &'static str;

    /// Position `batch` (one channel's publishes, in publish order): create
    /// the epoch on first use, check each idempotency key, give each new
    /// publish the next offset and keep it in the bounded history.
    ///
    /// Callers never have two appends of one channel in flight at once
    /// (see [`crate::sequencer`]).
    fn append(&self, channel: &Channel, batch: Vec<NewEntry>) -> EngineFuture<Appended>;

    /// The entries after a position (or from the oldest kept).
    fn read(&self, channel: &Channel, query: ReadQuery) -> EngineFuture<Page>;

    /// Drop a channel's stream: history, position and keys (the next
    /// publish starts a new epoch).
    fn remove(&self, channel: &Channel) -> EngineFuture<()>;

    /// `Err` with the reason while the engine cannot take appends (the
    /// hub fails positioned publishes at once instead of waiting).
    fn status(&self) -> Result<(), EngineError>;
}

pub type SharedEngine = Arc<dyn Engine>;

/// The engine a hub was configured with, and its background task (the
/// memory engine's sweeper, the Redis engine's probe).
pub enum Built {
    Memory(Arc<memory::Streams>),
    Redis(Arc<redis::RedisEngine>),
}

impl Built {
    /// Build the configured engine (nothing is connected yet) with the
    /// history limits of each channel.
    pub fn from_config(
        config: &crate::Config,
        limits: limits::HistoryLimits,
        metrics: HubMetrics,
    ) -> anyhow::Result<Self> {
        use anyhow::Context;
        Ok(match config.engine {
            crate::config::EngineKind::Memory => Self::Memory(Arc::new(memory::Streams::new(
                memory::HistoryConfig { limits, max_bytes: config.history_max_bytes },
                metrics,
            ))),
            crate::config::EngineKind::Redis => {
                let password = match (&config.redis_password_file, &config.redis_password) {
                    (Some(path), _) => Some(
                        std::fs::read_to_string(path)
                            .with_context(|| format!("cannot read --redis-password-file {}", path.display()))?
                            .trim_end_matches(['\r', '\n'])
                            .to_owned(),
                    ),
                    (None, pw) => pw.clone(),
                };
                let tls_ca = match &config.redis_tls_ca {
                    Some(path) => Some(
                        std::fs::read(path)
                            .with_context(|| format!("cannot read --redis-tls-ca {}", path.display()))?,
                    ),
                    None => None,
                };
                let settings = redis::RedisSettings {
                    urls: config.redis_url.split(',').map(str::to_owned).collect(),
                    cluster: config.redis_cluster,
                    sentinel_master: config.redis_sentinel_master.clone(),
                    password,
                    tls_ca,
                    prefix: config.redis_prefix.clone(),
                    connections: config.redis_connections,
                    timeout: std::time::Duration::from_millis(config.engine_timeout_ms.max(1)),
                    limits,
                };
                Self::Redis(Arc::new(redis::RedisEngine::new(settings, metrics)?))
            }
        })
    }

    pub fn shared(&self) -> SharedEngine {
        match self {
            Self::Memory(e) => e.clone(),
            Self::Redis(e) => e.clone(),
        }
    }

    /// Run the engine's background work until `stop`.
    pub fn spawn_background(&self, stop: tokio_util::sync::CancellationToken) {
        match self {
            Self::Memory(e) => drop(tokio::spawn(e.clone().sweeper(stop))),
            Self::Redis(e) => drop(tokio::spawn(e.clone().probe(stop))),
        }
    }
}
