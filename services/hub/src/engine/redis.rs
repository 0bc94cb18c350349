//! The Redis engine: channel state in Redis (or Valkey, or a Redis Cluster,
//! or a master found through Sentinel), shared by every hub.
//!
//! One channel's state is three keys with the channel as hash tag, so they
//! share a cluster slot: `<prefix>:{<channel>}:m` (a hash: epoch `e`, top
//! offset `t`), `<prefix>:{<channel>}:s` (a stream of the kept publishes,
//! entry id `<offset>-1`, fields `d` data, `t` server time in ms, `k` the
//! idempotency key if any) and `<prefix>:{<channel>}:k` (idempotency key →
//! offset, for the entries still kept). Everything gets the history TTL
//! again at each publish, so a channel without publishes for that long
//! forgets its stream (its next publish starts a new epoch), as in memory.
//!
//! **One atomic server-side step per append.** The append script creates
//! the epoch on first use (from a random candidate the hub passes: scripts
//! should not make up randomness), checks and sets each idempotency key,
//! increments the offset, `XADD`s with an exact `MAXLEN` and refreshes the
//! TTLs, for a whole batch of one channel's publishes in one call. Because
//! the offset lives in Redis, two hubs that write one channel during a
//! failover window still get unique, increasing offsets, and the hub that
//! takes a channel over continues its epoch.
//!
//! **No lock-step round trip per publish.** Calls go over multiplexed
//! connections (`ConnectionManager`, or the cluster client, which is
//! multiplexed per node): every channel's call is written as soon as it is
//! made, so calls of many channels are pipelined on one socket, and the
//! [`crate::sequencer`] gathers a channel's concurrent publishes into one
//! call. The gauge `pushmesh_hub_engine_calls_in_flight` is that pipeline's
//! depth.
//!
//! **Failing fast.** Every call has a deadline (`--engine-timeout-ms`). A
//! call that cannot reach Redis marks the engine down; one that times out
//! wakes the probe, which marks it down if a `PING` does not come back
//! within the deadline either (a loaded machine has slow moments that are
//! not an outage). While it is down positioned publishes fail at once
//! (`status`) rather than each waiting for the deadline, and the probe
//! (`PING` every [`PROBE_INTERVAL`]) marks it up again. Broadcasts and direct sends never
//! touch the engine. A call that timed out may still be carried out when
//! Redis resumes: that publish is then in the history (recoverable) though
//! its publisher was told 503; docs/reliability.md says so.
//!
//! History size and TTL are per channel ([`super::limits`]: the flags, or
//! the channel's namespace): each append and read call passes its
//! channel's `MAXLEN` and TTL as arguments, so one script serves every
//! namespace and a changed file applies from the next publish.
//!
//! Limits the memory engine enforces and this one leaves to Redis: the
//! global byte budget (`--history-max-bytes`; use Redis `maxmemory`), and
//! the age of single entries (entries older than the TTL are skipped when
//! read, and the whole stream expires TTL after the last publish).

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::FutureExt;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::{AsyncConnectionConfig, Client, IntoConnectionInfo, RedisError, Script, Value};
use tokio_util::sync::CancellationToken;

use pushmesh_common::ids::Channel;

use super::limits::{HistoryLimits, Limit};
use super::{Appended, Engine, EngineError, EngineFuture, NewEntry, Page, ReadQuery, Slot};
use crate::metrics::HubMetrics;

/// How often the probe pings Redis (and how soon a down engine is seen up).
pub const PROBE_INTERVAL: Duration = Duration::from_millis(500);

const ENGINE: &str = "redis";

/// ARGV: epoch candidate, history size, TTL (ms), then (data, key) pairs.
/// Returns {epoch, slot…}: a positive offset per new publish, a negative
/// one (the earlier publish's) per duplicate.
const APPEND: &str = r#"
local meta, stream, keys = KEYS[1], KEYS[2], KEYS[3]
local size = tonumber(ARGV[2])
local ttl = tonumber(ARGV[3])
local epoch = redis.call('HGET', meta, 'e')
local top = 0
if epoch then
  top = tonumber(redis.call('HGET', meta, 't'))
else
  epoch = ARGV[1]
  redis.call('DEL', stream, keys)
end
local t = redis.call('TIME')
local now = tostring(t[1] * 1000 + math.floor(t[2] / 1000))
local out = {epoch}
local haskeys = redis.call('EXISTS', keys) == 1
for i = 4, #ARGV, 2 do
  local data, key = ARGV[i], ARGV[i + 1]
  local seen = false
  if key ~= '' and haskeys then seen = redis.call('HGET', keys, key) end
  if seen then
    out[#out + 1] = -tonumber(seen)
  else
    top = top + 1
    if size > 0 then
      if haskeys then
        -- The entries about to be trimmed take their keys with them.
        local len = redis.call('XLEN', stream)
        if len >= size then
          for _, e in ipairs(redis.call('XRANGE', stream, '-', '+', 'COUNT', len - size + 1)) do
            local f = e[2]
            if f[5] == 'k' then redis.call('HDEL', keys, f[6]) end
          end
        end
      end
      if key ~= '' then
        redis.call('XADD', stream, 'MAXLEN', size, top .. '-1', 'd', data, 't', now, 'k', key)
        redis.call('HSET', keys, key, top)
        haskeys = true
      else
        redis.call('XADD', stream, 'MAXLEN', size, top .. '-1', 'd', data, 't', now)
      end
    end
    out[#out + 1] = top
  end
end
redis.call('HSET', meta, 'e', epoch, 't', top)
redis.call('PEXPIRE', meta, ttl)
if size > 0 then
  redis.call('PEXPIRE', stream, ttl)
  if haskeys then redis.call('PEXPIRE', keys, ttl) end
end
return out
"#;

/// ARGV: mode (`s`: after a position, `o`: from the oldest), epoch, offset,
/// count, TTL (ms). Returns {epoch, top, recovered, offset, data, …}.
const READ: &str = r#"
local mode = ARGV[1]
local epoch = redis.call('HGET', KEYS[1], 'e')
if not epoch then
  if mode == 'o' then return {'', 0, 1} end
  return {'', 0, 0}
end
local top = tonumber(redis.call('HGET', KEYS[1], 't'))
local out = {epoch, top, 0}
local after = 0
local from = '-'
if mode == 's' then
  after = tonumber(ARGV[3])
  if ARGV[2] ~= epoch or after > top then return out end
  if after == top then
    out[3] = 1
    return out
  end
  from = (after + 1) .. '-1'
end
local t = redis.call('TIME')
local cutoff = t[1] * 1000 + math.floor(t[2] / 1000) - tonumber(ARGV[5])
local first = true
for _, e in ipairs(redis.call('XRANGE', KEYS[2], from, '+', 'COUNT', tonumber(ARGV[4]))) do
  local f = e[2]
  if tonumber(f[4]) >= cutoff then
    local off = tonumber(string.match(e[1], '^(%d+)'))
    if first and mode == 's' and off ~= after + 1 then return out end
    first = false
    out[#out + 1] = off
    out[#out + 1] = f[2]
  elseif mode == 's' then
    return out
  end
end
if first and mode == 's' then return out end
out[3] = 1
return out
"#;

/// How the hub reaches Redis.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// `redis://` or `rediss://` URLs: one server, the cluster's seeds, or
    /// the sentinels.
    pub urls: Vec<String>,
    pub cluster: bool,
    /// With Sentinel: the master's name.
    pub sentinel_master: Option<String>,
    /// Overrides the URLs' password (from a file or env: a Kubernetes Secret).
    pub password: Option<String>,
    /// A CA (PEM) for `rediss://` instead of the system's roots.
    pub tls_ca: Option<Vec<u8>>,
    pub prefix: String,
    pub connections: usize,
    pub timeout: Duration,
    /// History size (entries per channel) and TTL, per channel.
    pub limits: HistoryLimits,
}

/// One way to reach Redis; each is multiplexed (many calls in flight).
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(Arc<tokio::sync::OnceCell<ClusterConnection>>, Arc<redis::cluster::ClusterClient>),
    Sentinel(Arc<SentinelConn>),
}

/// A master found through Sentinel; asked again after a connection error
/// (a failover moves the master).
struct SentinelConn {
    client: tokio::sync::Mutex<redis::sentinel::SentinelClient>,
    current: Mutex<Option<MultiplexedConnection>>,
    config: AsyncConnectionConfig,
}

struct State {
    /// `Some(reason)` while Redis is considered unreachable.
    down: Mutex<Option<String>>,
    is_down: AtomicBool,
    /// Wakes the probe at once (a call timed out).
    probe_now: tokio::sync::Notify,
}

pub struct RedisEngine {
    conns: Vec<Conn>,
    next: AtomicUsize,
    append: Arc<Script>,
    read: Arc<Script>,
    prefix: Arc<str>,
    limits: HistoryLimits,
    timeout: Duration,
    state: Arc<State>,
    metrics: HubMetrics,
}

/// A configuration the engine cannot start with.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--redis-url is empty: expected redis://host:port (or rediss:// with TLS)")]
    NoUrl,
    #[error("invalid Redis URL {url:?}: {reason}; expected redis://[user:password@]host:port[/db] or rediss://…")]
    Url { url: String, reason: String },
    #[error("--redis-prefix {0:?} may not contain '{{' or '}}' (they would change the cluster hash tag)")]
    Prefix(String),
    #[error("cannot set up the Redis client: {0}")]
    Client(String),
}

impl RedisEngine {
    /// Build the engine; nothing is connected yet (connections are made on
    /// first use and re-made after errors), so a hub starts while Redis is
    /// down and reports it in readiness.
    pub fn new(s: RedisSettings, metrics: HubMetrics) -> Result<Self, ConfigError> {
        if s.urls.iter().all(|u| u.trim().is_empty()) {
            return Err(ConfigError::NoUrl);
        }
        if s.prefix.contains(['{', '}']) {
            return Err(ConfigError::Prefix(s.prefix));
        }
        let infos = s
            .urls
            .iter()
            .filter(|u| !u.trim().is_empty())
            .map(|u| {
                let mut info = u
                    .trim()
                    .into_connection_info()
                    .map_err(|e| ConfigError::Url { url: redact(u), reason: e.to_string() })?;
                if let Some(pw) = &s.password {
                    let settings = info.redis_settings().clone().set_password(pw);
                    info = info.set_redis_settings(settings);
                }
                Ok(info)
            })
            .collect::<Result<Vec<_>, ConfigError>>()?;
        let client_err = |e: RedisError| ConfigError::Client(e.to_string());
        let certs = || redis::TlsCertificates { client_tls: None, root_cert: s.tls_ca.clone() };
        let conns = if s.cluster {
            let mut b =
                redis::cluster::ClusterClient::builder(infos).connection_timeout(s.timeout).response_timeout(s.timeout);
            if let Some(pw) = &s.password {
                b = b.password(pw.clone());
            }
            if s.tls_ca.is_some() {
                b = b.certs(certs());
            }
            let client = b.build().map_err(client_err)?;
            vec![Conn::Cluster(Arc::default(), Arc::new(client))]
        } else if let Some(master) = &s.sentinel_master {
            let mut node = redis::sentinel::SentinelNodeConnectionInfo::default();
            if let Some(pw) = &s.password {
                node = node.set_redis_connection_info(redis::RedisConnectionInfo::default().set_password(pw.clone()));
            }
            let client = redis::sentinel::SentinelClient::build(
                infos,
                master.clone(),
                Some(node),
                redis::sentinel::SentinelServerType::Master,
            )
            .map_err(client_err)?;
            let config = AsyncConnectionConfig::new()
                .set_connection_timeout(Some(s.timeout))
                .set_response_timeout(Some(s.timeout));
            vec![Conn::Sentinel(Arc::new(SentinelConn {
                client: tokio::sync::Mutex::new(client),
                current: Mutex::new(None),
                config,
            }))]
        } else {
            let info = infos.into_iter().next().ok_or(ConfigError::NoUrl)?;
            let client = match &s.tls_ca {
                Some(_) => Client::build_with_tls(info, certs()).map_err(client_err)?,
                None => Client::open(info).map_err(client_err)?,
            };
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(s.timeout))
                .set_response_timeout(Some(s.timeout))
                .set_number_of_retries(2)
                .set_max_delay(Duration::from_millis(500));
            (0..s.connections.max(1))
                .map(|_| {
                    ConnectionManager::new_lazy_with_config(client.clone(), config.clone())
                        .map(Conn::Single)
                        .map_err(client_err)
                })
                .collect::<Result<_, _>>()?
        };
        Ok(Self {
            conns,
            next: AtomicUsize::new(0),
            append: Arc::new(Script::new(APPEND)),
            read: Arc::new(Script::new(READ)),
            prefix: s.prefix.into(),
            limits: s.limits,
            timeout: s.timeout,
            state: Arc::new(State {
                down: Mutex::new(Some("not checked yet".to_owned())),
                is_down: AtomicBool::new(true),
                probe_now: tokio::sync::Notify::new(),
            }),
            metrics,
        })
    }

    fn keys(&self, channel: &Channel) -> [String; 3] {
        let base = format!("{}:{{{}}}", self.prefix, channel.as_str());
        [format!("{base}:m"), format!("{base}:s"), format!("{base}:k")]
    }

    fn conn(&self) -> Conn {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.conns.len();
        self.conns[i].clone()
    }

    /// Run one call with the deadline, metrics, and the down/up bookkeeping.
    fn call<T, F>(&self, op: &'static str, f: F) -> EngineFuture<T>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, RedisError>> + Send + 'static,
    {
        let (timeout, metrics, state) = (self.timeout, self.metrics.clone(), self.state.clone());
        async move {
            let started = Instant::now();
            metrics.engine_in_flight.inc();
            let result = tokio::time::timeout(timeout, f).await;
            metrics.engine_in_flight.dec();
            metrics.engine_duration.with_label_values(&[op]).observe(started.elapsed().as_secs_f64());
            let err = match result {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e)) => classify(&e),
                Err(_) => EngineError::Timeout { engine: ENGINE, ms: timeout.as_millis() as u64 },
            };
            metrics.engine_errors.with_label_values(&[err.kind()]).inc();
            match &err {
                // Cannot reach Redis: down now, the probe says when it is back.
                EngineError::Down { .. } => state.set_down(&metrics, err.to_string()),
                // Slow is not down (a loaded machine has slow moments): ask
                // the probe to check now; it marks the engine down if Redis
                // does not answer a PING in time either.
                EngineError::Timeout { .. } => state.probe_now.notify_one(),
                EngineError::Failed { .. } => {}
            }
            Err(err)
        }
        .boxed()
    }

    /// Ping every [`PROBE_INTERVAL`] until `stop`: keeps the up/down state
    /// (and `pushmesh_hub_engine_up`) in step, and reads Redis's memory use
    /// every few seconds.
    pub async fn probe(self: Arc<Self>, stop: CancellationToken) {
        let mut tick = tokio::time::interval(PROBE_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut n = 0u64;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = self.state.probe_now.notified() => {}
                _ = stop.cancelled() => return,
            }
            let conn = self.conn();
            let ping = tokio::time::timeout(self.timeout, query::<String>(conn.clone(), redis::cmd("PING"))).await;
            match ping {
                Ok(Ok(_)) => self.state.set_up(&self.metrics),
                Ok(Err(e)) => self.state.set_down(&self.metrics, classify(&e).to_string()),
                Err(_) => self.state.set_down(
                    &self.metrics,
                    EngineError::Timeout { engine: ENGINE, ms: self.timeout.as_millis() as u64 }.to_string(),
                ),
            }
            n += 1;
            if n % 10 == 1 && !self.state.is_down.load(Ordering::Relaxed) {
                let mut info = redis::cmd("INFO");
                info.arg("memory");
                if let Ok(Ok(text)) = tokio::time::timeout(self.timeout, query::<String>(conn, info)).await
                    && let Some(bytes) = text
                        .lines()
                        .find_map(|l| l.strip_prefix("used_memory:"))
                        .and_then(|v| v.trim().parse::<i64>().ok())
                {
                    self.metrics.engine_memory_bytes.set(bytes);
                }
            }
        }
    }
}

impl State {
    fn set_down(&self, metrics: &HubMetrics, reason: String) {
        let mut down = self.down.lock().expect("engine state lock");
        if down.is_none() {
            tracing::warn!(engine = ENGINE, %reason, "channel state engine down: positioned publishes fail until it answers again");
        }
        *down = Some(reason);
        self.is_down.store(true, Ordering::Relaxed);
        metrics.engine_up.set(0);
    }

    fn set_up(&self, metrics: &HubMetrics) {
        let mut down = self.down.lock().expect("engine state lock");
        if let Some(reason) = down.take() {
            tracing::info!(engine = ENGINE, was = %reason, "channel state engine up");
        }
        self.is_down.store(false, Ordering::Relaxed);
        metrics.engine_up.set(1);
    }
}

/// A limit's TTL in Redis's unit (at least 1 ms).
fn ttl_ms(limit: Limit) -> u64 {
    limit.ttl.as_millis().max(1) as u64
}

/// A connection error or a server error?
fn classify(e: &RedisError) -> EngineError {
    let reason = e.to_string();
    if e.is_timeout()
        || e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_unrecoverable_error()
    {
        EngineError::Down { engine: ENGINE, reason }
    } else {
        EngineError::Failed { engine: ENGINE, reason }
    }
}

/// A URL for messages, without its password.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://…@{}", &url[..s], &url[at + 1..]),
        _ => url.to_owned(),
    }
}

async fn query<T: redis::FromRedisValue>(conn: Conn, cmd: redis::Cmd) -> Result<T, RedisError> {
    match conn {
        Conn::Single(mut c) => cmd.query_async(&mut c).await,
        Conn::Cluster(cell, client) => {
            let mut c = cell.get_or_try_init(|| client.get_async_connection()).await?.clone();
            cmd.query_async(&mut c).await
        }
        Conn::Sentinel(s) => {
            let mut c = s.connection().await?;
            let r = cmd.query_async(&mut c).await;
            s.check(&r);
            r
        }
    }
}

async fn invoke(conn: Conn, script: Arc<Script>, keys: [String; 3], args: Vec<Vec<u8>>) -> Result<Value, RedisError> {
    let mut inv = script.prepare_invoke();
    for k in &keys {
        inv.key(k);
    }
    for a in &args {
        inv.arg(a.as_slice());
    }
    async fn run(inv: &redis::ScriptInvocation<'_>, c: &mut impl ConnectionLike) -> Result<Value, RedisError> {
        inv.invoke_async(c).await
    }
    match conn {
        Conn::Single(mut c) => run(&inv, &mut c).await,
        Conn::Cluster(cell, client) => {
            let mut c = cell.get_or_try_init(|| client.get_async_connection()).await?.clone();
            run(&inv, &mut c).await
        }
        Conn::Sentinel(s) => {
            let mut c = s.connection().await?;
            let r = run(&inv, &mut c).await;
            s.check(&r);
            r
        }
    }
}

impl SentinelConn {
    async fn connection(&self) -> Result<MultiplexedConnection, RedisError> {
        if let Some(c) = self.current.lock().expect("sentinel lock").clone() {
            return Ok(c);
        }
        let mut client = self.client.lock().await;
        if let Some(c) = self.current.lock().expect("sentinel lock").clone() {
            return Ok(c);
        }
        let c = client.get_async_connection_with_config(&self.config).await?;
        *self.current.lock().expect("sentinel lock") = Some(c.clone());
        Ok(c)
    }

    /// After a connection-level error (or a master turned replica), ask the
    /// sentinels again on the next call.
    fn check<T>(&self, r: &Result<T, RedisError>) {
        if let Err(e) = r
            && (e.is_io_error()
                || e.is_connection_dropped()
                || e.is_timeout()
                || e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly))
        {
            *self.current.lock().expect("sentinel lock") = None;
        }
    }
}

fn bad_answer(what: &str, v: &Value) -> RedisError {
    RedisError::from((redis::ErrorKind::Parse, "unexpected answer from a pushmesh script", format!("{what}: {v:?}")))
}

fn as_bytes(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

fn as_int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        _ => None,
    }
}

fn parse_appended(v: Value, n: usize) -> Result<Appended, RedisError> {
    let Value::Array(items) = &v else { return Err(bad_answer("append", &v)) };
    if items.len() != n + 1 {
        return Err(bad_answer("append: wrong number of slots", &v));
    }
    let epoch = as_bytes(&items[0]).and_then(|b| std::str::from_utf8(b).ok()).ok_or_else(|| bad_answer("epoch", &v))?;
    let slots = items[1..]
        .iter()
        .map(|s| match as_int(s) {
            Some(o) if o > 0 => Ok(Slot::New(o as u64)),
            Some(o) if o < 0 => Ok(Slot::Duplicate(o.unsigned_abs())),
            _ => Err(bad_answer("slot", &v)),
        })
        .collect::<Result<_, _>>()?;
    Ok(Appended { epoch: epoch.to_owned(), slots })
}

fn parse_page(v: Value) -> Result<Page, RedisError> {
    let Value::Array(items) = &v else { return Err(bad_answer("read", &v)) };
    if items.len() < 3 || items.len() % 2 == 0 {
        return Err(bad_answer("read", &v));
    }
    let epoch = as_bytes(&items[0]).and_then(|b| std::str::from_utf8(b).ok()).ok_or_else(|| bad_answer("epoch", &v))?;
    let top = as_int(&items[1]).ok_or_else(|| bad_answer("top", &v))?;
    let recovered = as_int(&items[2]).ok_or_else(|| bad_answer("recovered", &v))? == 1;
    let entries = items[3..]
        .chunks(2)
        .map(|pair| {
            let off = as_int(&pair[0]).filter(|o| *o > 0).ok_or_else(|| bad_answer("offset", &v))?;
            let data = as_bytes(&pair[1]).ok_or_else(|| bad_answer("data", &v))?;
            Ok((off as u64, Bytes::copy_from_slice(data)))
        })
        .collect::<Result<_, RedisError>>()?;
    Ok(Page { epoch: epoch.to_owned(), top: top.max(0) as u64, recovered, entries })
}

impl Engine for RedisEngine {
    fn name(&self) -> &'static str {
        ENGINE
    }

    fn append(&self, channel: &Channel, batch: Vec<NewEntry>) -> EngineFuture<Appended> {
        let n = batch.len();
        let limit = self.limits.for_channel(channel.as_str());
        let mut args = Vec::with_capacity(3 + 2 * n);
        args.push(format!("{:016x}", rand::random::<u64>()).into_bytes());
        args.push(limit.size.to_string().into_bytes());
        args.push(ttl_ms(limit).to_string().into_bytes());
        for e in batch {
            args.push(e.data.to_vec());
            args.push(e.key.into_bytes());
        }
        let call = invoke(self.conn(), self.append.clone(), self.keys(channel), args);
        self.call("append", async move { parse_appended(call.await?, n) })
    }

    fn read(&self, channel: &Channel, query: ReadQuery) -> EngineFuture<Page> {
        let limit = self.limits.for_channel(channel.as_str());
        let count = match query.limit {
            0 => limit.size.max(1),
            n => n.min(limit.size.max(1)),
        };
        let (mode, epoch, offset) = match query.since {
            Some((e, o)) => ("s", e, o),
            None => ("o", String::new(), 0),
        };
        let args = vec![
            mode.as_bytes().to_vec(),
            epoch.into_bytes(),
            offset.to_string().into_bytes(),
            count.to_string().into_bytes(),
            ttl_ms(limit).to_string().into_bytes(),
        ];
        let call = invoke(self.conn(), self.read.clone(), self.keys(channel), args);
        self.call("read", async move { parse_page(call.await?) })
    }

    fn remove(&self, channel: &Channel) -> EngineFuture<()> {
        let mut del = redis::cmd("DEL");
        for k in self.keys(channel) {
            del.arg(k);
        }
        let call = query::<i64>(self.conn(), del);
        self.call("remove", async move { call.await.map(drop) })
    }

    fn status(&self) -> Result<(), EngineError> {
        if !self.state.is_down.load(Ordering::Relaxed) {
            return Ok(());
        }
        match &*self.state.down.lock().expect("engine state lock") {
            Some(reason) => Err(EngineError::Down { engine: ENGINE, reason: reason.clone() }),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_redacted_in_messages() {
        assert_eq!(redact("redis://:secret@host:6379/0"), "redis://…@host:6379/0");
        assert_eq!(redact("redis://host:6379"), "redis://host:6379");
    }

    #[test]
    fn script_answers_are_parsed_strictly() {
        let v = Value::Array(vec![Value::BulkString(b"e1".to_vec()), Value::Int(7), Value::Int(-3)]);
        assert_eq!(
            parse_appended(v.clone(), 2).unwrap(),
            Appended { epoch: "e1".into(), slots: vec![Slot::New(7), Slot::Duplicate(3)] }
        );
        assert!(parse_appended(v, 3).is_err(), "a slot count that differs from the batch is an error");
        let page = Value::Array(vec![
            Value::BulkString(b"e1".to_vec()),
            Value::Int(9),
            Value::Int(1),
            Value::Int(8),
            Value::BulkString(b"\"a\"".to_vec()),
        ]);
        assert_eq!(
            parse_page(page).unwrap(),
            Page { epoch: "e1".into(), top: 9, recovered: true, entries: vec![(8, Bytes::from_static(b"\"a\""))] }
        );
    }

    #[test]
    fn a_prefix_with_braces_is_refused() {
        let s = RedisSettings {
            urls: vec!["redis://127.0.0.1:1".into()],
            cluster: false,
            sentinel_master: None,
            password: None,
            tls_ca: None,
            prefix: "a{b}".into(),
            connections: 1,
            timeout: Duration::from_millis(100),
            limits: HistoryLimits::uniform(Limit { size: 10, ttl: Duration::from_secs(10) }),
        };
        let err = RedisEngine::new(s, HubMetrics::new()).err().expect("refused");
        assert!(err.to_string().contains("may not contain"), "{err}");
    }
}
