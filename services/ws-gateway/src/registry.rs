//! Who is connected to this gateway, and which hub topics they need.
//!
//! One `RwLock` over two maps: connections by sequence number, and channel
//! topic → member connections. Fan-out holds the read lock while it
//! `try_send`s one shared frame into each member's bounded queue (no await,
//! no allocation per connection); joins, leaves, connects and disconnects
//! take the write lock briefly.
//!
//! Interest changes are pushed to the hub links *while the write lock is
//! held*, so every link sees subscribe/unsubscribe for a topic in the order
//! the local member count crossed zero. Hub-side subscribe and unsubscribe
//! are idempotent set operations, so replaying that ordered log after a
//! snapshot (on re-attach) always converges to the current local state.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, OnceLock, RwLock};

use tokio::sync::{Notify, mpsc};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::hubs::HubLinks;

/// One frame on its way to one client.
#[derive(Debug, Clone)]
pub struct Frame {
    pub text: Utf8Bytes,
    /// A published message (counted as a delivery or a drop), as opposed to
    /// a reply or the welcome.
    pub is_delivery: bool,
}

/// Asks a connection's writer to close the socket with a code and reason.
/// The first request wins.
#[derive(Default)]
pub struct CloseSignal {
    notify: Notify,
    reason: OnceLock<(u16, String, &'static str)>,
}

impl CloseSignal {
    /// `metric_reason` labels the disconnect and any frames left unsent.
    pub fn fire(&self, code: u16, reason: impl Into<String>, metric_reason: &'static str) {
        if self
            .reason
            .set((code, reason.into(), metric_reason))
            .is_ok()
        {
            self.notify.notify_one();
        }
    }

    pub async fn fired(&self) -> &(u16, String, &'static str) {
        loop {
            if let Some(r) = self.reason.get() {
                return r;
            }
            self.notify.notified().await;
        }
    }

    pub fn get(&self) -> Option<&(u16, String, &'static str)> {
        self.reason.get()
    }
}

/// The registry's handle on one connection.
pub struct ConnEntry {
    pub tx: mpsc::Sender<Frame>,
    pub raw: bool,
    pub close: Arc<CloseSignal>,
    channels: Vec<String>,
}

impl ConnEntry {
    pub fn new(tx: mpsc::Sender<Frame>, raw: bool, close: Arc<CloseSignal>) -> Self {
        Self {
            tx,
            raw,
            close,
            channels: Vec::new(),
        }
    }
}

#[derive(Default)]
pub struct Inner {
    pub conns: HashMap<u64, ConnEntry>,
    /// Channel topic ("c:<name>") → member connection sequence numbers.
    pub topics: HashMap<String, HashSet<u64>>,
}

/// Why a join was refused.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("this connection is already subscribed to {0} channels, the limit")]
    TooManyChannels(usize),
    #[error("connection is closing")]
    Gone,
}

pub struct Registry {
    inner: RwLock<Inner>,
    links: Arc<HubLinks>,
    topics_gauge: prometheus::IntGauge,
}

impl Registry {
    pub fn new(links: Arc<HubLinks>, topics_gauge: prometheus::IntGauge) -> Self {
        Self {
            inner: RwLock::default(),
            links,
            topics_gauge,
        }
    }

    pub fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().expect("registry lock")
    }

    pub fn insert(&self, seq: u64, entry: ConnEntry) {
        self.inner
            .write()
            .expect("registry lock")
            .conns
            .insert(seq, entry);
    }

    /// Remove a connection and leave all its channels.
    pub fn remove(&self, seq: u64) {
        let mut inner = self.inner.write().expect("registry lock");
        let Some(entry) = inner.conns.remove(&seq) else {
            return;
        };
        let mut gone = Vec::new();
        for topic in entry.channels {
            if Self::drop_member(&mut inner, &topic, seq) {
                gone.push(topic);
            }
        }
        if !gone.is_empty() {
            self.links.unsubscribe(gone);
        }
        self.topics_gauge.set(inner.topics.len() as i64);
    }

    /// Add `seq` to `topic` and ask every hub link to subscribe. Returns
    /// the receivers that complete when each hub confirmed.
    pub fn join(
        &self,
        seq: u64,
        topic: &str,
        max_channels: usize,
    ) -> Result<Vec<tokio::sync::oneshot::Receiver<()>>, JoinError> {
        let mut inner = self.inner.write().expect("registry lock");
        let entry = inner.conns.get_mut(&seq).ok_or(JoinError::Gone)?;
        if !entry.channels.iter().any(|t| t == topic) {
            if entry.channels.len() >= max_channels {
                return Err(JoinError::TooManyChannels(max_channels));
            }
            entry.channels.push(topic.to_owned());
            inner
                .topics
                .entry(topic.to_owned())
                .or_default()
                .insert(seq);
        }
        // Always ask the hubs, even when the topic already had members: an
        // earlier member's subscribe may still be in flight, and the reply
        // must not say "live" before it is.
        let waits = self.links.subscribe(vec![topic.to_owned()]);
        self.topics_gauge.set(inner.topics.len() as i64);
        Ok(waits)
    }

    /// Remove `seq` from `topic`; unsubscribe at the hubs if it was the last.
    pub fn leave(&self, seq: u64, topic: &str) {
        let mut inner = self.inner.write().expect("registry lock");
        let Some(entry) = inner.conns.get_mut(&seq) else {
            return;
        };
        let before = entry.channels.len();
        entry.channels.retain(|t| t != topic);
        if entry.channels.len() == before {
            return;
        }
        if Self::drop_member(&mut inner, topic, seq) {
            self.links.unsubscribe(vec![topic.to_owned()]);
        }
        self.topics_gauge.set(inner.topics.len() as i64);
    }

    /// Every channel topic with local members (for a re-attach snapshot).
    /// Called by a link while no command of its own is being applied.
    pub fn channel_topics(&self) -> Vec<String> {
        self.inner
            .read()
            .expect("registry lock")
            .topics
            .keys()
            .cloned()
            .collect()
    }

    pub fn connection_count(&self) -> usize {
        self.inner.read().expect("registry lock").conns.len()
    }

    /// Returns true when `topic` lost its last member.
    fn drop_member(inner: &mut Inner, topic: &str, seq: u64) -> bool {
        if let Some(members) = inner.topics.get_mut(topic) {
            members.remove(&seq);
            if members.is_empty() {
                inner.topics.remove(topic);
                return true;
            }
        }
        false
    }
}
