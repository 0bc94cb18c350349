//! The gateway's links to the hubs: one task per hub endpoint, each holding
//! one `Attach` stream, reconnecting with capped exponential backoff (with
//! jitter, so a restarted hub is not stampeded) when it breaks.
//!
//! On every (re)attach a link sends `Hello`, then one subscribe carrying a
//! snapshot of everything this gateway needs (broadcast, its own topic,
//! every channel with local members), and counts as attached (and the
//! gateway as ready) only once the hub acked that snapshot. Later interest
//! changes arrive as commands from the registry, in order, are coalesced
//! into as few stream messages as possible, and their acks release the
//! clients waiting for "subscription live".
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

use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::Endpoint;

use pushmesh_common::ids::topic;
use pushmesh_common::proto::hub_client::HubClient;
use pushmesh_common::proto::{
    AttachRequest, Hello, HistoryRequest, HistoryResponse, Links, TopicsChange, attach_request, attach_response,
};

use crate::dedupe::RecentIds;
use crate::fanout;
use crate::server::Shared;

/// Queued interest changes per link. While a link is down it discards them
/// (the snapshot on re-attach covers them), so this only fills if a hub
/// stalls while attached; then new subscribes fail with a clear error.
const COMMAND_QUEUE: usize = 8192;

pub enum LinkCmd {
    Subscribe { topics: Vec<String>, done: Option<oneshot::Sender<()>> },
    Unsubscribe { topics: Vec<String> },
}

impl LinkCmd {
    fn is_subscribe(&self) -> bool {
        matches!(self, LinkCmd::Subscribe { .. })
    }
}

/// Hub id per link index (while attached), and lost hub id → unix ns from
/// which its messages may be missing.
type HubIds = (Vec<Option<String>>, HashMap<String, u64>);

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
    recent: RecentIds,
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

    fn set_channel(&self, index: usize, channel: Option<tonic::transport::Channel>) {
        if let Some(Some(slot)) = self.slots.read().expect("slots lock").get(index) {
            *slot.channel.lock().expect("channel lock") = channel;
        }
    }

    /// Link `index` is attached to hub `hub_id` (or, with `None`, lost its
    /// hub, whose messages may be missing from `missing_since`, unix ns):
    /// declare the new set on every link.
    /// A hub that left the hub set (`removed`) is not declared lost.
    fn set_attached(&self, index: usize, hub_id: Option<String>, missing_since: u64, removed: bool) {
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

    /// Ask every link to subscribe; one receiver per link that took the
    /// command, completing when that hub confirmed.
    pub fn subscribe(&self, topics: Vec<String>) -> Vec<oneshot::Receiver<()>> {
        let slots = self.current();
        let mut waits = Vec::with_capacity(slots.len());
        for slot in &slots {
            let (done, wait) = oneshot::channel();
            let cmd = LinkCmd::Subscribe { topics: topics.clone(), done: Some(done) };
            let endpoint = &slot.url;
            match slot.cmds.try_send(cmd) {
                Ok(()) => waits.push(wait),
                Err(_) => {
                    tracing::warn!(hub = %endpoint, "hub link command queue full; subscribe not sent")
                }
            }
        }
        waits
    }

    pub fn unsubscribe(&self, topics: Vec<String>) {
        for slot in self.current() {
            let endpoint = &slot.url;
            if slot.cmds.try_send(LinkCmd::Unsubscribe { topics: topics.clone() }).is_err() {
                // Harmless: the hub keeps sending a topic nobody here wants
                // until the next re-attach snapshot.
                tracing::warn!(hub = %endpoint, "hub link command queue full; unsubscribe not sent");
            }
        }
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
}

impl AttachedCount {
    pub fn new(total: usize, grace: Duration) -> Self {
        Self { n: AtomicUsize::new(0), total: AtomicUsize::new(total), started: Instant::now(), grace }
    }

    /// The hub set changed size.
    pub fn set_total(&self, shared: &Shared, total: usize) {
        self.total.store(total, Ordering::SeqCst);
        self.update(shared, self.current());
    }

    fn up(&self, shared: &Shared) {
        let n = self.n.fetch_add(1, Ordering::SeqCst) + 1;
        shared.metrics.hubs_attached.set(n as i64);
        self.update(shared, n);
    }

    fn down(&self, shared: &Shared) {
        let n = self.n.fetch_sub(1, Ordering::SeqCst) - 1;
        shared.metrics.hubs_attached.set(n as i64);
        self.update(shared, n);
    }

    /// Re-evaluate readiness (also called once when the grace ends).
    pub fn update(&self, shared: &Shared, n: usize) {
        if n == 0 {
            shared.health.set_not_ready("not attached to any hub");
        } else if n >= self.total.load(Ordering::SeqCst) || self.started.elapsed() >= self.grace {
            shared.health.set_ready();
        } else {
            shared.health.set_not_ready(&format!(
                "starting: attached to {n} of {} hubs (ready at all, or at one after {:?})",
                self.total.load(Ordering::SeqCst),
                self.grace
            ));
        }
    }

    pub fn current(&self) -> usize {
        self.n.load(Ordering::SeqCst)
    }

    pub fn grace(&self) -> Duration {
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

/// Keep one hub attached until shutdown, or until it leaves the hub set.
pub async fn run(link: NewLink, endpoint: Endpoint, shared: Arc<Shared>) {
    let NewLink { index, url, mut cmds, stop } = link;
    let min = Duration::from_millis(100);
    let max = Duration::from_millis(shared.config.reconnect_max_ms.max(100));
    let mut backoff = min;
    loop {
        let ended = session(index, &endpoint, &mut cmds, &stop, &shared).await;
        if stop.is_cancelled() {
            return;
        }
        let Some(error) = ended.error else { return };
        if ended.was_attached {
            backoff = min;
            tracing::warn!(hub = %url, %error, "hub link lost; re-attaching");
        } else {
            tracing::debug!(hub = %url, %error, "hub not reachable; retrying");
        }
        // Jitter in [backoff/2, backoff].
        let wait = backoff.mul_f64(0.5 + rand::random::<f64>() * 0.5);
        let sleep = tokio::time::sleep(wait);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = &mut sleep => break,
                _ = stop.cancelled() => return,
                c = cmds.recv() => if c.is_none() { return },
            }
        }
        backoff = (backoff * 2).min(max);
    }
}

struct Ended {
    error: Option<String>,
    was_attached: bool,
}

async fn session(
    index: usize,
    endpoint: &Endpoint,
    cmds: &mut mpsc::Receiver<LinkCmd>,
    stop: &CancellationToken,
    shared: &Arc<Shared>,
) -> Ended {
    let fail = |e: String| Ended { error: Some(e), was_attached: false };
    // Connect, discarding interest changes meanwhile: the snapshot taken
    // right after covers them (waiting clients see their waiter dropped).
    let connect = endpoint.connect();
    tokio::pin!(connect);
    let channel = loop {
        tokio::select! {
            r = &mut connect => match r {
                Ok(c) => break c,
                Err(e) => return fail(format!("connect: {e}")),
            },
            c = cmds.recv() => if c.is_none() { return Ended { error: None, was_attached: false } },
            _ = stop.cancelled() => return Ended { error: None, was_attached: false },
        }
    };
    let mut client = HubClient::new(channel.clone()).max_decoding_message_size(64 << 20);
    let (out, out_rx) = mpsc::channel::<AttachRequest>(256);
    let mut snapshot = shared.registry.topics_snapshot();
    snapshot.push(topic::BROADCAST.to_owned());
    snapshot.push(shared.gateway.topic());
    let hello =
        AttachRequest { kind: Some(attach_request::Kind::Hello(Hello { gateway_id: shared.gateway.to_string() })) };
    let snapshot_id = 1;
    let sub = AttachRequest {
        kind: Some(attach_request::Kind::Subscribe(TopicsChange { request_id: snapshot_id, topics: snapshot })),
    };
    // Capacity 256, nothing sent yet: these cannot fail.
    let _ = out.try_send(hello);
    let _ = out.try_send(sub);
    let response = tokio::select! {
        r = client.attach(ReceiverStream::new(out_rx)) => r,
        _ = stop.cancelled() => return Ended { error: None, was_attached: false },
    };
    let mut inbound = match response {
        Ok(r) => r.into_inner(),
        Err(status) => return fail(format!("attach refused: {}", status.message())),
    };

    let mut next_id = snapshot_id + 1;
    let mut pending: HashMap<u64, Vec<oneshot::Sender<()>>> = HashMap::new();
    let mut attached = false;
    let mut hub_id = None;
    let mut last_heard = Instant::now();
    let mut declared = shared.links.declared.subscribe();
    let started = Instant::now();
    let error = loop {
        tokio::select! {
            _ = stop.cancelled() => break None,
            msg = inbound.message() => {
                let msg = match msg {
                    Ok(Some(m)) => {
                        last_heard = Instant::now();
                        m
                    }
                    Ok(None) => break Some("hub closed the stream".to_owned()),
                    Err(status) => break Some(format!("stream: {}", status.message())),
                };
                match msg.kind {
                    Some(attach_response::Kind::Deliveries(mut batch)) => {
                        shared.metrics.hub_deliveries.inc_by(batch.items.len() as u64);
                        let dups = shared.links.recent.retain_new(&mut batch.items);
                        if dups > 0 {
                            shared.metrics.duplicates.inc_by(dups as u64);
                        }
                        for d in batch.items {
                            fanout::deliver(shared, d);
                        }
                    }
                    Some(attach_response::Kind::TopicsAck(ack)) => {
                        if ack.request_id == snapshot_id && !attached {
                            attached = true;
                            shared.links.set_channel(index, Some(channel.clone()));
                            // The hub's id comes in its greeting, before any ack;
                            // a hub too old to greet is named by its endpoint.
                            let id = hub_id.take().unwrap_or_else(|| endpoint.uri().to_string());
                            shared.links.set_attached(index, Some(id), 0, false);
                            shared.attached.up(shared);
                            tracing::info!(hub = ?endpoint.uri(), after_ms = started.elapsed().as_millis() as u64, "attached to hub");
                        } else if let Some(waiters) = pending.remove(&ack.request_id) {
                            for w in waiters {
                                let _ = w.send(());
                            }
                        }
                    }
                    Some(attach_response::Kind::Attached(a)) => {
                        tracing::debug!(hub_id = %a.hub_id, "hub greeted");
                        hub_id = (!a.hub_id.is_empty()).then_some(a.hub_id);
                    }
                    Some(attach_response::Kind::Query(q)) => {
                        // Answered on its own task: a server-side subscribe
                        // waits for this very stream's acks.
                        let (shared, out) = (shared.clone(), out.clone());
                        tokio::spawn(async move {
                            let reply = crate::queries::answer(&shared, q).await;
                            let _ = out.send(AttachRequest { kind: Some(attach_request::Kind::QueryReply(reply)) }).await;
                        });
                    }
                    None => {}
                }
            }
            // Only once attached: the declaration includes this hub then.
            changed = declared.changed(), if attached => {
                if changed.is_err() {
                    break None;
                }
                let links = declared.borrow_and_update().clone();
                let msg = AttachRequest { kind: Some(attach_request::Kind::Links(links)) };
                if out.send(msg).await.is_err() {
                    break Some("attach stream closed".to_owned());
                }
            }
            cmd = cmds.recv() => {
                let Some(cmd) = cmd else { break None };
                let mut batch = vec![cmd];
                while batch.len() < 1024 {
                    match cmds.try_recv() {
                        Ok(c) => batch.push(c),
                        Err(_) => break,
                    }
                }
                if let Err(e) = send_commands(batch, &out, &mut next_id, &mut pending).await {
                    break Some(e);
                }
            }
        }
    };
    if attached {
        shared.links.set_channel(index, None);
        // Silence on the link for up to two keepalive intervals went
        // unnoticed: messages may be missing from then (or from the last
        // thing heard, if later), with a margin for clock differences.
        let keepalive = Duration::from_secs(shared.config.keepalive_secs.max(1));
        let unnoticed = last_heard.elapsed().min(keepalive * 2) + Duration::from_millis(250);
        let since = unix_nanos(std::time::SystemTime::now().checked_sub(unnoticed).unwrap_or(std::time::UNIX_EPOCH));
        let removed = stop.is_cancelled() && !shared.shutdown.is_cancelled();
        shared.links.set_attached(index, None, since, removed);
        shared.attached.down(shared);
    }
    // Waiters still pending are dropped here: their clients learn the
    // subscription was not confirmed by this hub.
    Ended { error, was_attached: attached }
}

fn unix_nanos(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

/// Send `batch` in order, one stream message per run of same-kind commands.
async fn send_commands(
    batch: Vec<LinkCmd>,
    out: &mpsc::Sender<AttachRequest>,
    next_id: &mut u64,
    pending: &mut HashMap<u64, Vec<oneshot::Sender<()>>>,
) -> Result<(), String> {
    let mut iter = batch.into_iter().peekable();
    while let Some(first) = iter.next() {
        let subscribe = first.is_subscribe();
        let mut topics = Vec::new();
        let mut waiters = Vec::new();
        let mut take = |cmd: LinkCmd| match cmd {
            LinkCmd::Subscribe { topics: t, done } => {
                topics.extend(t);
                waiters.extend(done);
            }
            LinkCmd::Unsubscribe { topics: t } => topics.extend(t),
        };
        take(first);
        while iter.peek().is_some_and(|c| c.is_subscribe() == subscribe) {
            take(iter.next().expect("peeked"));
        }
        let request_id = *next_id;
        *next_id += 1;
        let change = TopicsChange { request_id, topics };
        let kind =
            if subscribe { attach_request::Kind::Subscribe(change) } else { attach_request::Kind::Unsubscribe(change) };
        if !waiters.is_empty() {
            pending.insert(request_id, waiters);
        }
        out.send(AttachRequest { kind: Some(kind) }).await.map_err(|_| "attach stream closed".to_owned())?;
    }
    Ok(())
}
