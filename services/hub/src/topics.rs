//! The topic table: topic → the gateway streams that want it.
//!
//! Publishing takes a read lock, looks one topic up, and `try_send`s a clone
//! of the delivery (a few small strings and a shared `Bytes` payload) into
//! each interested gateway's bounded queue: no await and no allocation per
//! connection, one push per gateway. Writers (subscribe, unsubscribe,
//! attach, detach) are rare next to publishes and hold the lock briefly.
//!
//! A full gateway queue drops the delivery for that gateway only, and counts
//! it: a slow gateway must not stall publishers or the other gateways.
//!
//! Each link also keeps the gateway's latest `Links` declaration (which hubs
//! it is attached to), so ingresses can find gateways cut off from a hub
//! (`members`) and relays reach exactly those (`route_to`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use pushmesh_common::proto::{Delivery, Links, Member};

use crate::metrics::HubMetrics;

/// What the hub queues to one gateway stream, in order.
#[derive(Debug)]
pub enum Outbound {
    Delivery(Delivery),
    /// A subscribe/unsubscribe is in force; echo its request id.
    Ack(u64),
    /// A question for the gateway (see `query`).
    Query(pushmesh_common::proto::GatewayQuery),
}

/// One attached gateway stream.
#[derive(Debug)]
pub struct Link {
    pub id: u64,
    pub gateway: String,
    /// The gateway process's `Hello.instance` token.
    pub instance: String,
    pub queue: mpsc::Sender<Outbound>,
    /// Cancelled when the link is replaced by a newer stream from the same
    /// gateway, or the hub shuts down.
    pub closed: CancellationToken,
    /// The gateway's newest declaration of the hubs it is attached to.
    pub declared: Mutex<Option<Links>>,
}

#[derive(Default)]
struct Inner {
    topics: HashMap<String, Vec<Arc<Link>>>,
    gateways: HashMap<String, Arc<Link>>,
}

/// An Attach refused: a live stream from another instance holds the id.
#[derive(Debug, thiserror::Error)]
#[error(
    "gateway id {gateway} is attached from another gateway instance; a second stream with a live gateway's id is refused (ids must be unique; a restarted gateway is admitted once its old stream ends)"
)]
pub struct Taken {
    pub gateway: String,
}

/// The outcome of routing one publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Routed {
    pub queued: u32,
    pub dropped: u32,
}

pub struct TopicTable {
    inner: RwLock<Inner>,
    next_link: AtomicU64,
    metrics: HubMetrics,
}

impl TopicTable {
    pub fn new(metrics: HubMetrics) -> Self {
        Self { inner: RwLock::default(), next_link: AtomicU64::new(1), metrics }
    }

    /// Register a gateway stream.
    ///
    /// A live stream of the same gateway id is replaced (removed and closed)
    /// only when the new one carries the same instance token: that is the
    /// same process, reconnected before the hub noticed its old stream died,
    /// and it must not receive everything twice. Anyone else asking for a
    /// live id is refused: taking it over would take that gateway's direct
    /// sends and channel messages. A gateway restarted under the same id
    /// (a new process, a new token) is refused until its old stream ends,
    /// which the hub sees at once when the old process's socket closes, or
    /// after the keepalive timeout when its node vanished.
    pub fn attach(&self, gateway: String, instance: String, queue: mpsc::Sender<Outbound>) -> Result<Arc<Link>, Taken> {
        let link = Arc::new(Link {
            id: self.next_link.fetch_add(1, Ordering::Relaxed),
            gateway: gateway.clone(),
            instance,
            queue,
            closed: CancellationToken::new(),
            declared: Mutex::new(None),
        });
        let old = {
            let mut inner = self.inner.write().expect("topic table lock");
            if let Some(live) = inner.gateways.get(&gateway) {
                let same_process = !live.instance.is_empty() && live.instance == link.instance;
                let alive = !live.closed.is_cancelled() && !live.queue.is_closed();
                if alive && !same_process {
                    return Err(Taken { gateway });
                }
            }
            let old = inner.gateways.insert(gateway, link.clone());
            if let Some(old) = &old {
                Self::remove_link_topics(&mut inner, old.id);
            }
            self.update_gauges(&inner);
            old
        };
        if let Some(old) = old {
            tracing::info!(gateway = %old.gateway, "gateway re-attached; closing its previous stream");
            old.closed.cancel();
        }
        Ok(link)
    }

    /// Remove a stream and every subscription it held.
    pub fn detach(&self, link: &Link) {
        let mut inner = self.inner.write().expect("topic table lock");
        Self::remove_link_topics(&mut inner, link.id);
        if inner.gateways.get(&link.gateway).is_some_and(|l| l.id == link.id) {
            inner.gateways.remove(&link.gateway);
        }
        self.update_gauges(&inner);
    }

    pub fn subscribe(&self, link: &Arc<Link>, topics: &[String]) {
        let mut inner = self.inner.write().expect("topic table lock");
        // A link replaced meanwhile must not resurrect its subscriptions.
        if inner.gateways.get(&link.gateway).is_none_or(|l| l.id != link.id) {
            return;
        }
        for t in topics {
            let links = inner.topics.entry(t.clone()).or_default();
            if !links.iter().any(|l| l.id == link.id) {
                links.push(link.clone());
            }
        }
        self.update_gauges(&inner);
    }

    pub fn unsubscribe(&self, link: &Link, topics: &[String]) {
        let mut inner = self.inner.write().expect("topic table lock");
        for t in topics {
            if let Some(links) = inner.topics.get_mut(t) {
                links.retain(|l| l.id != link.id);
                if links.is_empty() {
                    inner.topics.remove(t);
                }
            }
        }
        self.update_gauges(&inner);
    }

    /// Every attached gateway's current stream.
    pub fn links(&self) -> Vec<Arc<Link>> {
        self.inner.read().expect("topic table lock").gateways.values().cloned().collect()
    }

    pub fn link(&self, gateway: &str) -> Option<Arc<Link>> {
        self.inner.read().expect("topic table lock").gateways.get(gateway).cloned()
    }

    /// Is a stream of this gateway attached?
    pub fn has_gateway(&self, gateway: &str) -> bool {
        self.inner.read().expect("topic table lock").gateways.contains_key(gateway)
    }

    /// Record a gateway's declaration on its stream (an older one, from a
    /// reordered or stale message, is ignored).
    pub fn declare(&self, link: &Link, links: Links) {
        let mut declared = link.declared.lock().expect("declared lock");
        if declared.as_ref().is_none_or(|d| d.version <= links.version) {
            *declared = Some(links);
        }
    }

    /// Every attached gateway with its latest declaration.
    pub fn members(&self) -> Vec<Member> {
        self.links()
            .into_iter()
            .map(|l| Member { gateway_id: l.gateway.clone(), links: l.declared.lock().expect("declared lock").clone() })
            .collect()
    }

    /// Queue `delivery` to every gateway subscribed to its topic.
    pub fn route(&self, delivery: Delivery) -> Routed {
        self.route_filtered(delivery, |_| true)
    }

    /// Queue `delivery` to those of `gateways` that are subscribed to its
    /// topic here (a relay).
    pub fn route_to(&self, delivery: Delivery, gateways: &[String]) -> Routed {
        self.route_filtered(delivery, |l| gateways.contains(&l.gateway))
    }

    fn route_filtered(&self, delivery: Delivery, wanted: impl Fn(&Link) -> bool) -> Routed {
        let inner = self.inner.read().expect("topic table lock");
        let mut routed = Routed { queued: 0, dropped: 0 };
        let Some(links) = inner.topics.get(&delivery.topic) else {
            return routed;
        };
        let mut targets = links.iter().filter(|l| wanted(l));
        if let Some(mut current) = targets.next() {
            // Clone for all but the last target, which takes the original.
            for next in targets {
                Self::push(current, Outbound::Delivery(delivery.clone()), &mut routed);
                current = next;
            }
            Self::push(current, Outbound::Delivery(delivery), &mut routed);
        }
        drop(inner);
        self.metrics.deliveries.inc_by(u64::from(routed.queued));
        if routed.dropped > 0 {
            self.metrics.dropped.with_label_values(&["gateway_queue_full"]).inc_by(u64::from(routed.dropped));
        }
        routed
    }

    fn push(link: &Link, item: Outbound, routed: &mut Routed) {
        match link.queue.try_send(item) {
            Ok(()) => routed.queued += 1,
            // Closed: the stream is going away and detach will follow; the
            // delivery is lost with it, which is what a gateway that left means.
            Err(mpsc::error::TrySendError::Closed(_)) => {}
            Err(mpsc::error::TrySendError::Full(_)) => routed.dropped += 1,
        }
    }

    fn remove_link_topics(inner: &mut Inner, link_id: u64) {
        inner.topics.retain(|_, links| {
            links.retain(|l| l.id != link_id);
            !links.is_empty()
        });
    }

    fn update_gauges(&self, inner: &Inner) {
        self.metrics.gateways.set(inner.gateways.len() as i64);
        self.metrics.topics.set(inner.topics.len() as i64);
    }
}
