//! The command side of the gateway's hub links: which hubs this gateway
//! links to (they come and go with discovery), the interest changes sent
//! to them, their confirmations, the recovery history calls, and how many
//! are attached (which is what readiness means).
//!
//! The link *tasks* that hold the `Attach` streams live in `hubs`; this
//! module is what the rest of the gateway talks to, so the registry can
//! declare interest without knowing about streams, and `hubs` can depend on
//! the registry without a cycle.
//!
//! Every link also tells its hub which hubs this gateway is attached to
//! (`Links`, re-sent on all links whenever the set changes). Ingresses read
//! those declarations from the hubs and, for a gateway cut off from one hub
//! while the others still reach it (a partition), relay that hub's
//! publishes through a hub the gateway still has. A publish can then arrive
//! twice while the partition heals; `RecentIds` drops the second copy.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tonic::transport::Endpoint;

use pushmesh_common::health::Health;
use pushmesh_common::ids::Topic;
use pushmesh_common::proto::hub_client::HubClient;
use pushmesh_common::proto::{
    HistoryRequest, HistoryResponse, Links, PublishRequest, PublishResponse, publish_request,
};

/// Why a client's publish did not reach a hub.
#[derive(Debug, thiserror::Error)]
pub enum HubPublishError {
    /// A hub refused the message itself (any hub would).
    #[error("the hub refused the message: {0}")]
    Rejected(String),
    /// No attached hub took it.
    #[error("no hub took the message ({0}); retry")]
    Unavailable(&'static str),
}

use crate::dedupe::RecentIds;

/// Queued interest changes per link. While a link is down it discards them
/// (the snapshot on re-attach covers them), so this only fills if a hub
/// stalls while attached; then new subscribes fail with a clear error.
const COMMAND_QUEUE: usize = 8192;

pub enum LinkCmd {
    Subscribe { topics: Vec<String>, done: Option<oneshot::Sender<()>> },
    Unsubscribe { topics: Vec<String> },
}

impl LinkCmd {
    pub(crate) fn is_subscribe(&self) -> bool {
        matches!(self, LinkCmd::Subscribe { .. })
    }
}

/// Hub id per link index (while attached), and lost hub id → unix ns from
/// which its messages may be missing.
type HubIds = (Vec<Option<String>>, HashMap<String, u64>);

/// The hubs' confirmations of one interest change: one waiter per link
/// that took it.
#[must_use = "a subscription is live only once confirmed"]
pub struct Confirmation(Vec<oneshot::Receiver<()>>);

impl Confirmation {
    /// Nothing to wait for (no change was sent).
    pub fn none() -> Self {
        Self(Vec::new())
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Wait for every hub link that took the change to confirm it (a
    /// detached one drops its waiter at once and gets the topic in its
    /// re-attach snapshot). A hub that neither confirms nor drops within
    /// `timeout` is hung and delivers nothing anyway: what counts then is
    /// that some hub confirmed.
    pub async fn confirmed(self, timeout: Duration) -> bool {
        let mut waits: FuturesUnordered<_> = self.0.into_iter().collect();
        let mut ok = 0;
        let _ = tokio::time::timeout(timeout, async {
            while let Some(r) = waits.next().await {
                ok += usize::from(r.is_ok());
            }
        })
        .await;
        ok > 0
    }
}

/// The shared side of one hub link.
struct Slot {
    url: String,
    cmds: mpsc::Sender<LinkCmd>,
    /// The gRPC channel while attached (for unary calls such as `History`).
    channel: std::sync::Mutex<Option<tonic::transport::Channel>>,
    /// Cancelled when the hub left the discovered set: the link ends.
    stop: CancellationToken,
}

/// A link for `run` to drive, from `HubLinks::reconcile`.
pub struct NewLink {
    pub index: usize,
    pub url: String,
    pub cmds: mpsc::Receiver<LinkCmd>,
    pub stop: CancellationToken,
}

/// The command side of every hub link. Links come and go with the hub set
/// (DNS discovery); a link keeps its index for life, and a removed link's
/// index is not reused.
pub struct HubLinks {
    slots: std::sync::RwLock<Vec<Option<Arc<Slot>>>>,
    /// Each link's hub id while it is attached, by link index, and the hubs
    /// lost with when their messages may have started to go missing.
    hub_ids: std::sync::Mutex<HubIds>,
    /// The declaration every attached link sends to its hub.
    declared: watch::Sender<Links>,
    /// Publish ids already delivered here.
    pub recent: RecentIds,
}

impl HubLinks {
    pub fn new(recent_ids: usize) -> Self {
        let (declared, _) = watch::channel(Links::default());
        Self {
            slots: std::sync::RwLock::default(),
            hub_ids: std::sync::Mutex::default(),
            declared,
            recent: RecentIds::new(recent_ids),
        }
    }

    /// Make the links match `urls`: a link for each new URL (returned, to
    /// be run), and the links of URLs no longer there stopped and removed.
    pub fn reconcile(&self, urls: &[String], shutdown: &CancellationToken) -> Vec<NewLink> {
        let mut slots = self.slots.write().expect("slots lock");
        for slot in slots.iter_mut() {
            if slot.as_ref().is_some_and(|s| !urls.contains(&s.url)) {
                let gone = slot.take().expect("checked");
                tracing::info!(hub = %gone.url, "hub left the hub set; detaching");
                gone.stop.cancel();
            }
        }
        let mut added = Vec::new();
        for url in urls {
            if slots.iter().flatten().any(|s| s.url == *url) {
                continue;
            }
            let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
            let stop = shutdown.child_token();
            let slot = Slot { url: url.clone(), cmds: tx, channel: std::sync::Mutex::new(None), stop: stop.clone() };
            slots.push(Some(Arc::new(slot)));
            added.push(NewLink { index: slots.len() - 1, url: url.clone(), cmds: rx, stop });
        }
        added
    }

    /// How many hubs this gateway links to now.
    pub fn len(&self) -> usize {
        self.slots.read().expect("slots lock").iter().flatten().count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn current(&self) -> Vec<Arc<Slot>> {
        self.slots.read().expect("slots lock").iter().flatten().cloned().collect()
    }

    pub(crate) fn set_channel(&self, index: usize, channel: Option<tonic::transport::Channel>) {
        if let Some(Some(slot)) = self.slots.read().expect("slots lock").get(index) {
            *slot.channel.lock().expect("channel lock") = channel;
        }
    }

    /// Link `index` is attached to hub `hub_id` (or, with `None`, lost its
    /// hub, whose messages may be missing from `missing_since`, unix ns):
    /// declare the new set on every link.
    /// A hub that left the hub set (`removed`) is not declared lost.
    pub(crate) fn set_attached(&self, index: usize, hub_id: Option<String>, missing_since: u64, removed: bool) {
        let mut guard = self.hub_ids.lock().expect("hub ids lock");
        let (ids, lost) = &mut *guard;
        if ids.len() <= index {
            ids.resize(index + 1, None);
        }
        match &hub_id {
            Some(id) => {
                lost.remove(id);
            }
            None => {
                if let Some(old) = &ids[index] {
                    if removed {
                        lost.remove(old);
                    } else {
                        lost.insert(old.clone(), missing_since);
                    }
                }
            }
        }
        ids[index] = hub_id;
        let mut hub_ids: Vec<String> = ids.iter().flatten().cloned().collect();
        hub_ids.sort_unstable();
        hub_ids.dedup();
        // Nanoseconds of the wall clock: newer than any declaration of an
        // earlier run of this gateway too (its id may be a stable pod name).
        let version = unix_nanos(std::time::SystemTime::now());
        self.declared.send_replace(Links { version, hub_ids, lost_since: lost.clone() });
    }

    /// Ask every attached hub for `channel`'s messages after `since`; the
    /// answer that recovers from the client's epoch wins, else any answer
    /// that knows the channel (for its current position).
    pub async fn history(&self, channel: &str, epoch: &str, offset: u64) -> Option<HistoryResponse> {
        let attached: Vec<_> =
            self.current().iter().filter_map(|s| s.channel.lock().expect("channel lock").clone()).collect();
        let calls = attached.into_iter().map(|ch| {
            let req =
                HistoryRequest { channel: channel.to_owned(), epoch: epoch.to_owned(), offset, ..Default::default() };
            async move {
                let mut client = HubClient::new(ch).max_decoding_message_size(64 << 20);
                tokio::time::timeout(Duration::from_secs(2), client.history(req))
                    .await
                    .ok()?
                    .ok()
                    .map(|r| r.into_inner())
            }
        });
        let answers: Vec<HistoryResponse> = futures_util::future::join_all(calls).await.into_iter().flatten().collect();
        let recovered = answers.iter().position(|a| a.recovered && a.epoch == epoch);
        match recovered {
            Some(i) => answers.into_iter().nth(i),
            None => answers.into_iter().find(|a| !a.epoch.is_empty()),
        }
    }

    /// Publish a client's message to `channel` through the hub that owns
    /// it: the attached hubs in rendezvous order of the channel's topic
    /// (the order the ingresses use, so one channel keeps one hub, one
    /// order and one history), failing over to the next when one cannot
    /// be reached. A hub refusing the request itself is final.
    ///
    /// Unlike the ingress, the gateway does not relay the message through
    /// other hubs to gateways cut off from the owner during a partition
    /// (docs/proxy.md says so).
    pub async fn publish(
        &self,
        channel: &pushmesh_common::ids::Channel,
        data: bytes::Bytes,
        timeout: Duration,
    ) -> Result<PublishResponse, HubPublishError> {
        self.publish_to(channel, data, String::new(), Vec::new(), timeout).await
    }

    /// A channel event (`join`/`leave`, with `{"user","connection"}`) for
    /// the channel's subscribers everywhere but `exclude`: through the same
    /// hub as the channel's messages, unpositioned.
    pub async fn publish_event(
        &self,
        channel: &pushmesh_common::ids::Channel,
        event: &str,
        data: bytes::Bytes,
        exclude: Vec<String>,
        timeout: Duration,
    ) -> Result<PublishResponse, HubPublishError> {
        self.publish_to(channel, data, event.to_owned(), exclude, timeout).await
    }

    async fn publish_to(
        &self,
        channel: &pushmesh_common::ids::Channel,
        data: bytes::Bytes,
        event: String,
        exclude: Vec<String>,
        timeout: Duration,
    ) -> Result<PublishResponse, HubPublishError> {
        let key = Topic::Channel(channel.clone()).wire();
        let mut hubs: Vec<(u64, tonic::transport::Channel)> = self
            .current()
            .iter()
            .filter_map(|s| {
                let ch = s.channel.lock().expect("channel lock").clone()?;
                Some((pushmesh_common::rendezvous::score(&s.url, &key), ch))
            })
            .collect();
        hubs.sort_by_key(|h| std::cmp::Reverse(h.0));
        let req = PublishRequest {
            target: Some(publish_request::Target::Channel(channel.as_str().to_owned())),
            data,
            id: rand::random::<u64>() | 1,
            event,
            exclude,
            ..Default::default()
        };
        let mut last = "no hub is attached";
        for (_, ch) in hubs {
            let mut client = HubClient::new(ch);
            let status = match tokio::time::timeout(timeout, client.publish(req.clone())).await {
                Ok(Ok(resp)) => return Ok(resp.into_inner()),
                Ok(Err(status)) => status,
                Err(_) => tonic::Status::deadline_exceeded("no answer in time"),
            };
            match status.code() {
                tonic::Code::InvalidArgument | tonic::Code::OutOfRange => {
                    return Err(HubPublishError::Rejected(status.message().to_owned()));
                }
                tonic::Code::DeadlineExceeded => last = "timed out",
                _ => last = "unavailable",
            }
            tracing::warn!(code = ?status.code(), error = %status.message(), "client publish failed on a hub; trying the next");
        }
        Err(HubPublishError::Unavailable(last))
    }

    /// Who is subscribed to `channel` on every gateway, asked through one
    /// attached hub (each reaches every gateway): (connections, clients
    /// up to `limit`, partial).
    pub async fn presence(
        &self,
        channel: &str,
        limit: u32,
        timeout: Duration,
    ) -> Result<(u64, Vec<pushmesh_common::proto::Client>, bool), HubPublishError> {
        let attached: Vec<_> =
            self.current().iter().filter_map(|s| s.channel.lock().expect("channel lock").clone()).collect();
        let mut last = "no hub is attached";
        for ch in attached {
            let req = pushmesh_common::proto::QueryRequest {
                op: Some(pushmesh_common::proto::QueryOp {
                    op: Some(pushmesh_common::proto::query_op::Op::Presence(channel.to_owned())),
                }),
                gateway: String::new(),
                limit,
            };
            match tokio::time::timeout(timeout, HubClient::new(ch).query(req)).await {
                Ok(Ok(resp)) => {
                    let resp = resp.into_inner();
                    let partial = resp.answers.len() < resp.asked as usize;
                    let mut connections = 0;
                    let mut clients = Vec::new();
                    for reply in resp.answers.into_iter().filter_map(|a| a.reply) {
                        connections += u64::from(reply.matched);
                        clients.extend(reply.clients);
                    }
                    clients.truncate(limit as usize);
                    return Ok((connections, clients, partial));
                }
                Ok(Err(_)) => last = "unavailable",
                Err(_) => last = "timed out",
            }
        }
        Err(HubPublishError::Unavailable(last))
    }

    /// Ask every link to subscribe to `topics`; the confirmation completes
    /// as the hubs confirm.
    pub fn subscribe(&self, topics: &[Topic]) -> Confirmation {
        let wire: Vec<String> = topics.iter().map(Topic::wire).collect();
        let slots = self.current();
        let mut waits = Vec::with_capacity(slots.len());
        for slot in &slots {
            let (done, wait) = oneshot::channel();
            let cmd = LinkCmd::Subscribe { topics: wire.clone(), done: Some(done) };
            match slot.cmds.try_send(cmd) {
                Ok(()) => waits.push(wait),
                Err(_) => tracing::warn!(hub = %slot.url, "hub link command queue full; subscribe not sent"),
            }
        }
        Confirmation(waits)
    }

    pub fn unsubscribe(&self, topics: &[Topic]) {
        let wire: Vec<String> = topics.iter().map(Topic::wire).collect();
        for slot in self.current() {
            if slot.cmds.try_send(LinkCmd::Unsubscribe { topics: wire.clone() }).is_err() {
                // Harmless: the hub keeps sending a topic nobody here wants
                // until the next re-attach snapshot.
                tracing::warn!(hub = %slot.url, "hub link command queue full; unsubscribe not sent");
            }
        }
    }

    /// The declaration every attached link sends to its hub, as it changes.
    pub(crate) fn declarations(&self) -> watch::Receiver<Links> {
        self.declared.subscribe()
    }
}

/// Counts attached links and keeps readiness and the gauge in step.
///
/// Ready means "attached to a hub" — except just after start, when it
/// means "attached to every configured hub" until `grace` has passed: a
/// fresh gateway that took clients after reaching the first hub would
/// confirm their subscriptions before the other hubs knew about them, and
/// publishes routed through those hubs would miss it.
pub struct AttachedCount {
    n: AtomicUsize,
    /// Hubs in the current hub set.
    total: AtomicUsize,
    started: Instant,
    grace: Duration,
    health: Health,
    gauge: prometheus::IntGauge,
}

impl AttachedCount {
    pub fn new(total: usize, grace: Duration, health: Health, gauge: prometheus::IntGauge) -> Self {
        Self { n: AtomicUsize::new(0), total: AtomicUsize::new(total), started: Instant::now(), grace, health, gauge }
    }

    /// The hub set changed size.
    pub fn set_total(&self, total: usize) {
        self.total.store(total, Ordering::SeqCst);
        self.update();
    }

    pub(crate) fn up(&self) {
        let n = self.n.fetch_add(1, Ordering::SeqCst) + 1;
        self.gauge.set(n as i64);
        self.update();
    }

    pub(crate) fn down(&self) {
        let n = self.n.fetch_sub(1, Ordering::SeqCst) - 1;
        self.gauge.set(n as i64);
        self.update();
    }

    /// Re-evaluate readiness (also called once when the grace ends).
    pub fn update(&self) {
        let n = self.current();
        if n == 0 {
            self.health.set_not_ready("not attached to any hub");
        } else if n >= self.total.load(Ordering::SeqCst) || self.started.elapsed() >= self.grace {
            self.health.set_ready();
        } else {
            self.health.set_not_ready(&format!(
                "starting: attached to {n} of {} hubs (ready at all, or at one after {:?})",
                self.total.load(Ordering::SeqCst),
                self.grace
            ));
        }
    }

    pub fn current(&self) -> usize {
        self.n.load(Ordering::SeqCst)
    }

    /// What is left of the start-up grace.
    pub fn grace_left(&self) -> Duration {
        self.grace.saturating_sub(self.started.elapsed())
    }
}

pub fn endpoint(
    url: &str,
    keepalive: Duration,
    tls: Option<&tonic::transport::ClientTlsConfig>,
) -> anyhow::Result<Endpoint> {
    let e = Endpoint::from_shared(url.to_owned())
        .map_err(|e| {
            anyhow::anyhow!("hub endpoint {url:?} is not a valid URL ({e}); expected e.g. http://127.0.0.1:50051")
        })?
        .connect_timeout(Duration::from_secs(2))
        .http2_keep_alive_interval(keepalive)
        .keep_alive_timeout(keepalive)
        .keep_alive_while_idle(true)
        .tcp_nodelay(true);
    match tls {
        Some(tls) => Ok(e.tls_config(tls.clone())?),
        None => Ok(e),
    }
}

pub(crate) fn unix_nanos(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}
