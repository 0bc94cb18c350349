//! Channel streams: every channel publish gets a stream position (epoch +
//! offset) and is kept in a bounded, time-limited history, so a client that
//! resubscribes with the last position it saw gets exactly what it missed,
//! or is told that recovery was not possible.
//!
//! The epoch is per channel stream and random: it changes whenever the
//! stream's state is lost (hub restart, the channel moving to another hub,
//! the stream expiring after `ttl` without publishes), so a client never
//! mistakes offsets of another run for its own. Offsets are assigned under
//! the stream's mutex and the publish is routed while it is held, so one
//! channel's messages enter every gateway queue in offset order.
//!
//! Memory is bounded three ways: entries per channel, entry age, and a
//! global byte budget (the sweeper trims the oldest entries while over it).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use pushmesh_common::proto::{Delivery, HistoryResponse};

use crate::metrics::HubMetrics;

#[derive(Debug, Clone, Copy)]
pub struct HistoryConfig {
    /// Entries kept per channel (0: positions only, no recovery).
    pub size: usize,
    pub ttl: Duration,
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
                }))
            })
            .clone()
    }

    /// Assign the next position to a publish (call with the stream locked,
    /// and route before unlocking).
    pub fn append(&self, st: &mut Stream, data: &Bytes, key: Option<&str>) -> Append {
        if let Some(k) = key
            && let Some(&offset) = st.keys.get(k)
        {
            return Append::Duplicate { epoch: st.epoch.clone(), offset };
        }
        st.top += 1;
        st.last_publish = Instant::now();
        if self.cfg.size > 0 {
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
            while st.entries.len() > self.cfg.size {
                self.pop_front(st);
            }
        }
        Append::New { epoch: st.epoch.clone(), offset: st.top }
    }

    /// The messages after (epoch, offset), if the history still has all of them.
    pub fn since(&self, channel: &str, epoch: &str, offset: u64) -> HistoryResponse {
        let Some(stream) = self.inner.read().expect("streams lock").get(channel).cloned() else {
            return HistoryResponse::default();
        };
        let st = stream.lock().expect("stream lock");
        let mut resp = HistoryResponse { epoch: st.epoch.clone(), top: st.top, ..Default::default() };
        if epoch != st.epoch || offset > st.top {
            return resp;
        }
        let oldest = st.entries.front().map_or(st.top + 1, |e| e.offset);
        if offset + 1 < oldest {
            return resp; // trimmed
        }
        resp.recovered = true;
        resp.messages = st
            .entries
            .iter()
            .filter(|e| e.offset > offset)
            .map(|e| Delivery {
                topic: format!("{}{channel}", pushmesh_common::ids::topic::CHANNEL_PREFIX),
                channel: channel.to_owned(),
                data: e.data.clone(),
                epoch: st.epoch.clone(),
                offset: e.offset,
                ..Default::default()
            })
            .collect();
        resp
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
            while st.entries.front().is_some_and(|e| now.duration_since(e.at) > self.cfg.ttl) {
                self.pop_front(&mut st);
            }
            if st.entries.is_empty() && now.duration_since(st.last_publish) > self.cfg.ttl {
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
                    st.entries.is_empty() && now.duration_since(st.last_publish) > self.cfg.ttl
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
