//! Who is connected to this gateway, and which hub topics they need.
//!
//! One `RwLock` over three maps: connections by sequence number, channel
//! name → member connections, and user id → that user's connections. The
//! rest of the gateway asks questions of it ("who receives this?", "who is
//! in this channel?") and never sees the maps.
//!
//! Fan-out (`for_each_recipient`) holds the read lock while it hands one
//! shared, already framed buffer to each recipient's outbound queue, which
//! writes it straight into the socket when nothing is queued there (one
//! non-blocking `write`, no await, no allocation per connection); joins,
//! leaves, connects and disconnects take the write lock briefly, so they
//! wait for a broadcast in progress (about 8 µs per local recipient on the
//! project's machine).
//!
//! Interest changes are pushed to the hub links *while the write lock is
//! held*, so every link sees subscribe/unsubscribe for a topic in the order
//! the local member count crossed zero. Hub-side subscribe and unsubscribe
//! are idempotent set operations, so replaying that ordered log after a
//! snapshot (on re-attach) always converges to the current local state.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use pushmesh_common::ids::{Channel, Topic, UserId};

use crate::links::{Confirmation, HubLinks};
use crate::queue::{CloseSignal, Outbound};

/// The registry's handle on one connection: what the fan-out and the
/// server API need to reach it.
pub struct ConnEntry {
    pub out: Outbound,
    /// `?format=raw`: deliveries are the bare content.
    pub raw: bool,
    pub close: Arc<CloseSignal>,
    pub user: Option<UserId>,
    /// Set once the connection recovered a channel (subscribe with
    /// `since`): only then does the fan-out consult `recovery` for it.
    recovers: AtomicBool,
    channels: Vec<Channel>,
}

impl ConnEntry {
    pub fn new(out: Outbound, raw: bool, close: Arc<CloseSignal>, user: Option<UserId>) -> Self {
        Self { out, raw, close, user, recovers: AtomicBool::new(false), channels: Vec::new() }
    }

    /// The channels the connection is subscribed to.
    pub fn channels(&self) -> &[Channel] {
        &self.channels
    }

    pub fn recovers(&self) -> bool {
        self.recovers.load(Ordering::Relaxed)
    }
}

/// Whom one delivery is for, among this gateway's connections.
#[derive(Debug, Clone, Copy)]
pub enum Recipients<'a> {
    All,
    Channel(&'a str),
    User(&'a str),
    One(u64),
}

#[derive(Default)]
struct Inner {
    conns: HashMap<u64, ConnEntry>,
    /// Channel → member connection sequence numbers.
    channels: HashMap<Channel, HashSet<u64>>,
    /// User → that user's connections here.
    users: HashMap<UserId, HashSet<u64>>,
    /// Channel → the last stream position delivered here (an entry exactly
    /// while the channel has members; see `advance`).
    positions: HashMap<Channel, Mutex<Option<Position>>>,
}

/// A channel's last delivered stream position.
struct Position {
    epoch: String,
    offset: u64,
}

/// Where a positioned channel delivery stands against the last one
/// delivered here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Advance {
    /// The next offset, the first one seen, or a new epoch: deliver.
    Next,
    /// Later than the next offset: deliver; some offsets never came here.
    Gap,
    /// At or before the last offset delivered in this epoch: a repeat, or a
    /// late copy from a hub that routed the channel during a failover.
    /// Delivering it would break the per-channel order clients rely on.
    Stale,
}

/// Why a join was refused.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("a connection may subscribe to at most {0} channels")]
    TooManyChannels(usize),
    #[error("connection is closing")]
    Gone,
    #[error("no hub confirmed the subscription; try again")]
    Unconfirmed,
}

/// Why a connection could not be registered.
#[derive(Debug, thiserror::Error)]
pub enum InsertError {
    #[error("user {user} already has {limit} connections on this gateway, the limit")]
    TooManyForUser { user: String, limit: usize },
}

/// What a leave did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Left {
    NotConnected,
    NotMember,
    Left,
}

/// One member of a channel, or one connection of a user.
pub struct Member {
    pub seq: u64,
    pub user: Option<UserId>,
}

pub struct Registry {
    inner: RwLock<Inner>,
    links: Arc<HubLinks>,
    topics_gauge: prometheus::IntGauge,
}

impl Registry {
    pub fn new(links: Arc<HubLinks>, topics_gauge: prometheus::IntGauge) -> Self {
        Self { inner: RwLock::default(), links, topics_gauge }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().expect("registry lock")
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().expect("registry lock")
    }

    /// Register a connection; for a user's first connection here, subscribe
    /// the user's topic at the hubs (the confirmation says when it is live).
    pub fn insert(&self, seq: u64, entry: ConnEntry, max_per_user: usize) -> Result<Confirmation, InsertError> {
        let mut inner = self.write();
        let mut confirmation = Confirmation::none();
        if let Some(user) = &entry.user {
            let conns = inner.users.entry(user.clone()).or_default();
            if max_per_user > 0 && conns.len() >= max_per_user {
                if conns.is_empty() {
                    inner.users.remove(user.as_str());
                }
                return Err(InsertError::TooManyForUser { user: user.to_string(), limit: max_per_user });
            }
            conns.insert(seq);
            confirmation = self.links.subscribe(&[Topic::User(user.clone())]);
        }
        inner.conns.insert(seq, entry);
        self.update_gauge(&inner);
        Ok(confirmation)
    }

    /// Remove a connection and leave all its channels (and its user topic).
    pub fn remove(&self, seq: u64) {
        let mut inner = self.write();
        let Some(entry) = inner.conns.remove(&seq) else {
            return;
        };
        let mut gone = Vec::new();
        for channel in entry.channels {
            if drop_member(&mut inner.channels, channel.as_str(), seq) {
                inner.positions.remove(channel.as_str());
                gone.push(Topic::Channel(channel));
            }
        }
        if let Some(user) = entry.user
            && drop_member(&mut inner.users, user.as_str(), seq)
        {
            gone.push(Topic::User(user));
        }
        if !gone.is_empty() {
            self.links.unsubscribe(&gone);
        }
        self.update_gauge(&inner);
    }

    /// Add `seq` to `channel`, and return once the hubs confirmed the
    /// subscription is live (or say why not; the join is undone then).
    /// `Ok(true)` when the connection was not a member before.
    pub async fn join(
        &self,
        seq: u64,
        channel: &Channel,
        max_channels: usize,
        timeout: Duration,
    ) -> Result<bool, JoinError> {
        let (confirmation, added) = {
            let mut inner = self.write();
            let entry = inner.conns.get_mut(&seq).ok_or(JoinError::Gone)?;
            let added = !entry.channels.contains(channel);
            if added {
                if entry.channels.len() >= max_channels {
                    return Err(JoinError::TooManyChannels(max_channels));
                }
                entry.channels.push(channel.clone());
                inner.channels.entry(channel.clone()).or_default().insert(seq);
                inner.positions.entry(channel.clone()).or_default();
            }
            // Always ask the hubs, even when the channel already had
            // members: an earlier member's subscribe may still be in
            // flight, and the answer must not say "live" before it is.
            let confirmation = self.links.subscribe(&[Topic::Channel(channel.clone())]);
            self.update_gauge(&inner);
            (confirmation, added)
        };
        if confirmation.confirmed(timeout).await {
            Ok(added)
        } else {
            if added {
                self.leave(seq, channel);
            }
            Err(JoinError::Unconfirmed)
        }
    }

    /// Remove `seq` from `channel`; unsubscribe at the hubs if it was the
    /// last member here.
    pub fn leave(&self, seq: u64, channel: &Channel) -> Left {
        let mut inner = self.write();
        let Some(entry) = inner.conns.get_mut(&seq) else {
            return Left::NotConnected;
        };
        let before = entry.channels.len();
        entry.channels.retain(|c| c != channel);
        if entry.channels.len() == before {
            return Left::NotMember;
        }
        if drop_member(&mut inner.channels, channel.as_str(), seq) {
            inner.positions.remove(channel.as_str());
            self.links.unsubscribe(&[Topic::Channel(channel.clone())]);
        }
        self.update_gauge(&inner);
        Left::Left
    }

    /// Mark a connection as one that recovered a channel (see `recovery`).
    pub fn mark_recovering(&self, seq: u64) {
        if let Some(c) = self.read().conns.get(&seq) {
            c.recovers.store(true, Ordering::Relaxed);
        }
    }

    /// Record a positioned delivery for `channel` and say whether it moves
    /// the channel forward (one uncontended lock per delivery, under the
    /// read lock). Offsets within an epoch only grow; a new epoch starts
    /// over (epochs are not ordered: a hub that lost the channel's state
    /// starts a new one, and its clients are told so when they recover).
    pub fn advance(&self, channel: &str, epoch: &str, offset: u64) -> Advance {
        let inner = self.read();
        let Some(slot) = inner.positions.get(channel) else {
            return Advance::Next; // no members: nothing is delivered anyway
        };
        let mut last = slot.lock().expect("position lock");
        let verdict = match last.as_ref() {
            Some(p) if p.epoch == epoch && offset <= p.offset => return Advance::Stale,
            Some(p) if p.epoch == epoch && offset > p.offset + 1 => Advance::Gap,
            _ => Advance::Next,
        };
        match last.as_mut() {
            Some(p) if p.epoch == epoch => p.offset = offset,
            _ => *last = Some(Position { epoch: epoch.to_owned(), offset }),
        }
        verdict
    }

    /// Call `f` for every connection `to` names, under the read lock (no
    /// await, no allocation: `f` hands frames to outbound queues).
    pub fn for_each_recipient(&self, to: Recipients<'_>, mut f: impl FnMut(u64, &ConnEntry)) {
        let inner = self.read();
        let members = match to {
            Recipients::All => {
                for (seq, conn) in &inner.conns {
                    f(*seq, conn);
                }
                return;
            }
            Recipients::One(seq) => {
                if let Some(conn) = inner.conns.get(&seq) {
                    f(seq, conn);
                }
                return;
            }
            Recipients::Channel(name) => inner.channels.get(name),
            Recipients::User(id) => inner.users.get(id),
        };
        for seq in members.into_iter().flatten() {
            if let Some(conn) = inner.conns.get(seq) {
                f(*seq, conn);
            }
        }
    }

    /// `f` on one connection, if it is here.
    pub fn with_connection<T>(&self, seq: u64, f: impl FnOnce(&ConnEntry) -> T) -> Option<T> {
        self.read().conns.get(&seq).map(f)
    }

    pub fn is_connected(&self, seq: u64) -> bool {
        self.read().conns.contains_key(&seq)
    }

    /// How many connections `of` names, and the first `limit` of them.
    pub fn members(&self, of: Recipients<'_>, limit: usize) -> (usize, Vec<Member>) {
        let mut count = 0;
        let mut list = Vec::new();
        self.for_each_recipient(of, |seq, conn| {
            count += 1;
            if list.len() < limit {
                list.push(Member { seq, user: conn.user.clone() });
            }
        });
        (count, list)
    }

    /// Connections held, and (at most `max`) channel names with members.
    pub fn stats(&self, max: usize) -> (usize, Vec<String>) {
        let inner = self.read();
        (inner.conns.len(), inner.channels.keys().take(max).map(|c| c.as_str().to_owned()).collect())
    }

    /// Every channel and user topic with local members (for a re-attach
    /// snapshot).
    pub fn interest(&self) -> Vec<Topic> {
        let inner = self.read();
        let channels = inner.channels.keys().cloned().map(Topic::Channel);
        let users = inner.users.keys().cloned().map(Topic::User);
        channels.chain(users).collect()
    }

    pub fn connection_count(&self) -> usize {
        self.read().conns.len()
    }

    fn update_gauge(&self, inner: &Inner) {
        self.topics_gauge.set((inner.channels.len() + inner.users.len()) as i64);
    }
}

/// Remove `seq` from `name`'s members; true when that was the last one.
fn drop_member<K: std::hash::Hash + Eq + std::borrow::Borrow<str>>(
    map: &mut HashMap<K, HashSet<u64>>,
    name: &str,
    seq: u64,
) -> bool {
    if let Some(members) = map.get_mut(name) {
        members.remove(&seq);
        if members.is_empty() {
            map.remove(name);
            return true;
        }
    }
    false
}
