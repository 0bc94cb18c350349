//! The memory engine: channel streams in the owning hub's memory. Every
//! channel publish gets a stream position (epoch + offset) and is kept in a
//! bounded, time-limited history, so a client that resubscribes with the
//! last position it saw gets exactly what it missed, or is told that
//! recovery was not possible.
//!
//! The epoch is per channel stream and random: it changes whenever the
//! stream's state is lost (hub restart, the channel moving to another hub,
//! the stream expiring after `ttl` without publishes), so a client never
//! mistakes offsets of another run for its own. Offsets are assigned under
//! the stream's mutex; the [`crate::sequencer`] routes each batch before
//! the next one of the channel is positioned, so one channel's messages
//! enter every gateway queue in offset order. Every call completes before
//! it returns (the future it hands back is already ready).
//!
//! Memory is bounded three ways: entries per channel, entry age, and a
//! global byte budget (the sweeper trims the oldest entries while over it).
//! The first two are per channel ([`super::limits`]: the flags, or the
//! channel's namespace); a stream looks its limits up once, when it is
//! created, and keeps them, so a publish pays nothing for namespaces.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use futures_util::FutureExt;
use pushmesh_common::ids::Channel;

use super::limits::{HistoryLimits, Limit};
use super::{Appended, Engine, EngineError, EngineFuture, NewEntry, Page, ReadQuery, Slot};
use crate::metrics::HubMetrics;

#[derive(Debug, Clone)]
pub struct HistoryConfig {
    /// Entries kept per channel (0: positions only, no recovery) and their
    /// age, per channel.
    pub limits: HistoryLimits,
    pub max_bytes: usize,
}

struct Entry {
    offset: u64,
    data: Bytes,
    at: Instant,
    key: Option<String>,
}

pub struct Stream {
    pub epoch: String,
    pub top: u64,
    entries: VecDeque<Entry>,
    keys: HashMap<String, u64>,
    last_publish: Instant,
    /// This channel's limits, looked up when the stream was created.
    limit: Limit,
}

/// What appending a publish decided.
pub enum Append {
    /// Deliver with this position.
    New { epoch: String, offset: u64 },
    /// The idempotency key was seen: do not deliver again.
    Duplicate { epoch: String, offset: u64 },
}

pub struct Streams {
    inner: RwLock<HashMap<String, Arc<Mutex<Stream>>>>,
    bytes: AtomicUsize,
    cfg: HistoryConfig,
    metrics: HubMetrics,
}

fn new_epoch() -> String {
    format!("{:016x}", rand::random::<u64>())
}

impl Streams {
    pub fn new(cfg: HistoryConfig, metrics: HubMetrics) -> Self {
        Self { inner: RwLock::default(), bytes: AtomicUsize::new(0), cfg, metrics }
    }

    pub fn stream(&self, channel: &str) -> Arc<Mutex<Stream>> {
        if let Some(s) = self.inner.read().expect("streams lock").get(channel) {
            return s.clone();
        }
        let limit = self.cfg.limits.for_channel(channel);
        let mut inner = self.inner.write().expect("streams lock");
        inner
            .entry(channel.to_owned())
            .or_insert_with(|| {
                Arc::new(Mutex::new(Stream {
                    epoch: new_epoch(),
                    top: 0,
                    entries: VecDeque::new(),
                    keys: HashMap::new(),
                    last_publish: Instant::now(),
                    limit,
                }))
            })
            .clone()
    }

    /// Assign the next position to a publish (call with the stream locked,
    /// and route before unlocking).
    pub fn position(&self, st: &mut Stream, data: &Bytes, key: Option<&str>) -> Append {
        if let Some(k) = key
            && let Some(&offset) = st.keys.get(k)
        {
            return Append::Duplicate { epoch: st.epoch.clone(), offset };
        }
        st.top += 1;
        st.last_publish = Instant::now();
        if st.limit.size > 0 {
            st.entries.push_back(Entry {
                offset: st.top,
                data: data.clone(),
                at: st.last_publish,
                key: key.map(str::to_owned),
            });
            if let Some(k) = key {
                st.keys.insert(k.to_owned(), st.top);
            }
            self.add_bytes(data.len());
            while st.entries.len() > st.limit.size {
                self.pop_front(st);
            }
        }
        Append::New { epoch: st.epoch.clone(), offset: st.top }
    }

    /// The entries after (epoch, offset) if the history still has all of
    /// them, or from the oldest kept; at most `limit` (0: all).
    pub fn read_now(&self, channel: &str, query: &ReadQuery) -> Page {
        let Some(stream) = self.inner.read().expect("streams lock").get(channel).cloned() else {
            return Page { recovered: query.since.is_none(), ..Page::default() };
        };
        let st = stream.lock().expect("stream lock");
        let mut page = Page { epoch: st.epoch.clone(), top: st.top, ..Default::default() };
        let after = match &query.since {
            None => 0,
            Some((epoch, offset)) => {
                if *epoch != st.epoch || *offset > st.top {
                    return page;
                }
                let oldest = st.entries.front().map_or(st.top + 1, |e| e.offset);
                if offset + 1 < oldest {
                    return page; // trimmed
                }
                *offset
            }
        };
        page.recovered = true;
        let limit = if query.limit == 0 { usize::MAX } else { query.limit };
        page.entries =
            st.entries.iter().filter(|e| e.offset > after).take(limit).map(|e| (e.offset, e.data.clone())).collect();
        page
    }

    /// Drop a channel's stream (its next publish starts a new epoch).
    pub fn remove_now(&self, channel: &str) {
        let removed = self.inner.write().expect("streams lock").remove(channel);
        if let Some(stream) = removed {
            let mut st = stream.lock().expect("stream lock");
            while !st.entries.is_empty() {
                self.pop_front(&mut st);
            }
        }
        self.metrics.history_streams.set(self.inner.read().expect("streams lock").len() as i64);
    }

    fn add_bytes(&self, n: usize) {
        let total = self.bytes.fetch_add(n, Ordering::Relaxed) + n;
        self.metrics.history_bytes.set(total as i64);
    }

    fn pop_front(&self, st: &mut Stream) {
        if let Some(e) = st.entries.pop_front() {
            let total = self.bytes.fetch_sub(e.data.len(), Ordering::Relaxed) - e.data.len();
            self.metrics.history_bytes.set(total as i64);
            if let Some(k) = e.key {
                st.keys.remove(&k);
            }
        }
    }

    /// Expire old entries and idle streams; trim to the byte budget.
    pub fn sweep(&self) {
        let now = Instant::now();
        let streams: Vec<(String, Arc<Mutex<Stream>>)> =
            self.inner.read().expect("streams lock").iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let mut idle = Vec::new();
        for (name, stream) in &streams {
            let mut st = stream.lock().expect("stream lock");
            let ttl = st.limit.ttl;
            while st.entries.front().is_some_and(|e| now.duration_since(e.at) > ttl) {
                self.pop_front(&mut st);
            }
            if st.entries.is_empty() && now.duration_since(st.last_publish) > ttl {
                idle.push(name.clone());
            }
        }
        // Over budget: trim the oldest entry of each stream in turn.
        'budget: while self.bytes.load(Ordering::Relaxed) > self.cfg.max_bytes {
            let mut trimmed = false;
            for (_, stream) in &streams {
                let mut st = stream.lock().expect("stream lock");
                if !st.entries.is_empty() {
                    self.pop_front(&mut st);
                    trimmed = true;
                }
                if self.bytes.load(Ordering::Relaxed) <= self.cfg.max_bytes {
                    break 'budget;
                }
            }
            if !trimmed {
                break;
            }
        }
        if !idle.is_empty() {
            let mut inner = self.inner.write().expect("streams lock");
            for name in idle {
                // Re-check under the write lock: a publish may have come in.
                let still_idle = inner.get(&name).is_some_and(|s| {
                    let st = s.lock().expect("stream lock");
                    st.entries.is_empty() && now.duration_since(st.last_publish) > st.limit.ttl
                });
                if still_idle {
                    inner.remove(&name);
                }
            }
        }
        self.metrics.history_streams.set(self.inner.read().expect("streams lock").len() as i64);
    }

    /// Sweep every second until shutdown.
    pub async fn sweeper(self: Arc<Self>, stop: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = tick.tick() => self.sweep(),
                _ = stop.cancelled() => return,
            }
        }
    }
}

impl Engine for Streams {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn append(&self, channel: &Channel, batch: Vec<NewEntry>) -> EngineFuture<Appended> {
        let stream = self.stream(channel.as_str());
        let mut st = stream.lock().expect("stream lock");
        let mut slots = Vec::with_capacity(batch.len());
        let mut epoch = String::new();
        for entry in &batch {
            let key = (!entry.key.is_empty()).then_some(entry.key.as_str());
            slots.push(match self.position(&mut st, &entry.data, key) {
                Append::New { epoch: e, offset } => {
                    epoch = e;
                    Slot::New(offset)
                }
                Append::Duplicate { epoch: e, offset } => {
                    epoch = e;
                    Slot::Duplicate(offset)
                }
            });
        }
        drop(st);
        futures_util::future::ready(Ok(Appended { epoch, slots })).boxed()
    }

    fn read(&self, channel: &Channel, query: ReadQuery) -> EngineFuture<Page> {
        futures_util::future::ready(Ok(self.read_now(channel.as_str(), &query))).boxed()
    }

    fn remove(&self, channel: &Channel) -> EngineFuture<()> {
        self.remove_now(channel.as_str());
        futures_util::future::ready(Ok(())).boxed()
    }

    fn status(&self) -> Result<(), EngineError> {
        Ok(())
    }
}
