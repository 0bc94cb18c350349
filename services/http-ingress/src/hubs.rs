//! The ingress's view of the hubs: which one a publish goes to, and which
//! are up.
//!
//! A publish for a target goes to the hub with the highest rendezvous score
//! for the target's topic, so one channel's messages all pass through one
//! hub (one order) while the hub set is stable, and only the channels of a
//! hub that left move when the set changes. Hubs that failed their last
//! health check are tried last. A hub that fails before accepting (cannot
//! connect, unavailable) is skipped for the next; `ok` is answered only
//! once some hub accepted.
//!
//! **Partitions.** Every gateway attaches to every hub and declares on each
//! stream which hubs it is attached to; the probe also reads those
//! declarations (`Members`). A gateway that lost its link to hub A while
//! this ingress still reaches A would miss everything routed through A, so
//! after A accepts a publish, a *relay* copy (same id, A's stream position)
//! goes to one hub that gateway still has, addressed to it alone. The plan
//! (owner hub → relay hub → gateways) is rebuilt at each probe; with no
//! partition it is empty and a publish costs one call as before. The relay
//! is sent before `ok` is answered, and a failed relay is counted. What
//! the hub accepted before the partition was noticed is replayed from a
//! short buffer of recent publishes (see `replay`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use pushmesh_common::health::Health;
use pushmesh_common::proto::hub_client::HubClient;
use pushmesh_common::proto::{
    HistoryRequest, HistoryResponse, Links, Member, MembersRequest, PublishRequest, PublishResponse, QueryRequest,
    QueryResponse, Relay,
};

use crate::metrics::IngressMetrics;
use crate::replay::ReplayRing;

pub struct HubHandle {
    url: String,
    channel: Channel,
    up: AtomicBool,
    /// The hub's id and its attached gateways, from its last `Members`.
    hub_id: Mutex<Option<String>>,
    members: Mutex<Vec<Member>>,
}

/// For each owner hub id: the relay hubs (by URL) and the gateways each
/// must relay to.
type RelayPlan = HashMap<String, Vec<(String, Vec<String>)>>;

pub struct HubPool {
    /// The current hub set; replaced whole when discovery changes it.
    hubs: RwLock<Arc<Vec<Arc<HubHandle>>>>,
    timeout: Duration,
    tls: Option<tonic::transport::ClientTlsConfig>,
    plan: RwLock<Arc<RelayPlan>>,
    metrics: IngressMetrics,
    replay: ReplayRing,
    /// (owner hub id, gateway) being replayed to: live relays to that
    /// gateway wait until its replay has caught up, so it gets the owner's
    /// messages in order (they are kept, and the replay sends them).
    replaying: Mutex<std::collections::HashSet<(String, String)>>,
}

/// Set by a hub on an UNAVAILABLE that comes from its channel state engine
/// (the hub's `service::ENGINE_ERROR_HEADER`).
const ENGINE_ERROR_HEADER: &str = "pushmesh-engine-error";

/// Why no hub took a publish.
#[derive(Debug)]
pub enum PublishError {
    /// A hub refused the request itself (it would refuse it anywhere).
    Rejected(Status),
    /// Every hub said the target does not exist.
    NotFound(String),
    /// No hub could be reached or accepted it.
    Unavailable(String),
}

impl HubPool {
    pub fn new(
        urls: &[String],
        timeout: Duration,
        tls: Option<tonic::transport::ClientTlsConfig>,
        metrics: IngressMetrics,
        replay: ReplayRing,
    ) -> anyhow::Result<Self> {
        let pool = Self {
            hubs: RwLock::default(),
            timeout,
            tls,
            plan: RwLock::default(),
            metrics,
            replay,
            replaying: Mutex::default(),
        };
        pool.set_hubs(urls)?;
        Ok(pool)
    }

    fn handle(&self, url: &str) -> anyhow::Result<HubHandle> {
        let endpoint = Endpoint::from_shared(url.to_owned())
            .map_err(|e| {
                anyhow::anyhow!("hub endpoint {url:?} is not a valid URL ({e}); expected e.g. http://127.0.0.1:50051")
            })?
            .connect_timeout(Duration::from_millis(500).min(self.timeout))
            .timeout(self.timeout)
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5))
            .tcp_nodelay(true);
        let endpoint = match &self.tls {
            Some(tls) => endpoint.tls_config(tls.clone())?,
            None => endpoint,
        };
        Ok(HubHandle {
            url: url.to_owned(),
            channel: endpoint.connect_lazy(),
            up: AtomicBool::new(false),
            hub_id: Mutex::new(None),
            members: Mutex::new(Vec::new()),
        })
    }

    /// Make the hub set `urls`: hubs already known keep their connection
    /// and state; new ones start down until their first health check.
    pub fn set_hubs(&self, urls: &[String]) -> anyhow::Result<()> {
        let old = self.current();
        let mut next = Vec::with_capacity(urls.len());
        for url in urls {
            match old.iter().find(|h| h.url == *url) {
                Some(h) => next.push(h.clone()),
                None => next.push(Arc::new(self.handle(url)?)),
            }
        }
        *self.hubs.write().expect("hubs lock") = Arc::new(next);
        Ok(())
    }

    fn current(&self) -> Arc<Vec<Arc<HubHandle>>> {
        self.hubs.read().expect("hubs lock").clone()
    }

    fn by_url(&self, url: &str) -> Option<Arc<HubHandle>> {
        self.current().iter().find(|h| h.url == url).cloned()
    }

    /// Hubs in the order to try for `key`: by rendezvous score, hubs that
    /// are up first.
    fn order(&self, key: &str) -> Vec<Arc<HubHandle>> {
        let mut hubs: Vec<(Arc<HubHandle>, bool, u64)> =
            self.current().iter().map(|h| (h.clone(), h.up.load(Ordering::Relaxed), score(&h.url, key))).collect();
        hubs.sort_by(|a, b| b.1.cmp(&a.1).then(b.2.cmp(&a.2)));
        hubs.into_iter().map(|(h, ..)| h).collect()
    }

    /// Publish through the owner hub of `key` (or the next that accepts),
    /// then relay to gateways cut off from it. `gateways` in the answer
    /// counts the relay hubs' queued copies too.
    pub async fn publish(&self, key: &str, mut req: PublishRequest) -> Result<PublishResponse, PublishError> {
        req.id = random_id();
        let (owner, mut resp) = self
            .call(key, "publish", |mut c| {
                let req = req.clone();
                async move { c.publish(req).await }
            })
            .await?;
        if !resp.duplicate {
            if self.current().len() > 1 && self.replay.enabled() {
                let mut kept = req.clone();
                kept.relay = Some(Relay { gateways: Vec::new(), epoch: resp.epoch.clone(), offset: resp.offset });
                let bytes = self.replay.keep(&owner.url, kept);
                self.metrics.replay_bytes.set(bytes as i64);
            }
            resp.gateways += self.relay(&owner, req, &resp).await;
        }
        Ok(resp)
    }

    /// Send relay copies of a publish hub `owner` accepted; answers how
    /// many gateway streams they were queued to.
    async fn relay(&self, owner: &HubHandle, req: PublishRequest, accepted: &PublishResponse) -> u32 {
        // Without a partition the plan is empty: nothing to look up or copy.
        let plan = self.plan.read().expect("plan lock").clone();
        if plan.is_empty() {
            return 0;
        }
        let Some(owner_id) = owner.hub_id.lock().expect("hub id lock").clone() else { return 0 };
        let Some(routes) = plan.get(&owner_id) else { return 0 };
        let replaying = self.replaying.lock().expect("replaying lock").clone();
        let calls = routes.iter().filter(|(via, _)| *via != owner.url).filter_map(|(via, gateways)| {
            let via = self.by_url(via)?;
            let mut gateways = gateways.clone();
            if !replaying.is_empty() {
                gateways.retain(|g| !replaying.contains(&(owner_id.clone(), g.clone())));
                if gateways.is_empty() {
                    return None;
                }
            }
            let mut req = req.clone();
            req.relay = Some(Relay { gateways, epoch: accepted.epoch.clone(), offset: accepted.offset });
            Some(async move { self.send_relay(&via, req).await })
        });
        futures_util::future::join_all(calls).await.into_iter().flatten().sum()
    }

    /// Send one relay (or replayed) copy through `via`, counting the
    /// outcome; answers how many gateway streams it was queued to.
    async fn send_relay(&self, via: &HubHandle, req: PublishRequest) -> Option<u32> {
        match HubClient::new(via.channel.clone()).publish(req).await {
            Ok(r) => {
                self.metrics.relays.with_label_values(&["ok"]).inc();
                Some(r.into_inner().gateways)
            }
            Err(status) => {
                self.metrics.relays.with_label_values(&["failed"]).inc();
                tracing::warn!(hub = %via.url, error = %status.message(), "relay failed");
                None
            }
        }
    }

    /// A channel's history from its owner hub (or the next that answers:
    /// with the Redis engine every hub reads the same streams).
    pub async fn history(&self, key: &str, req: HistoryRequest) -> Result<HistoryResponse, PublishError> {
        let (_, resp) = self
            .call(key, "history", |mut c| {
                let req = req.clone();
                async move { c.history(req).await }
            })
            .await?;
        Ok(resp)
    }

    pub async fn query(&self, key: &str, req: QueryRequest) -> Result<QueryResponse, PublishError> {
        let (_, resp) = self
            .call(key, "query", |mut c| {
                let req = req.clone();
                async move { c.query(req).await }
            })
            .await?;
        Ok(resp)
    }

    /// Call the hubs in `key`'s order until one answers. A hub that fails
    /// before answering (cannot connect, unavailable, deadline) is marked
    /// down and the next is tried; a refusal of the request itself is final.
    async fn call<T, F, Fut>(&self, key: &str, what: &str, f: F) -> Result<(Arc<HubHandle>, T), PublishError>
    where
        F: Fn(HubClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let mut not_found = None;
        let mut last_error = String::from("no hub configured");
        for hub in self.order(key) {
            match f(HubClient::new(hub.channel.clone())).await {
                Ok(resp) => {
                    hub.up.store(true, Ordering::Relaxed);
                    return Ok((hub, resp.into_inner()));
                }
                Err(status) => match status.code() {
                    Code::InvalidArgument => return Err(PublishError::Rejected(status)),
                    // The target's gateway may still be re-attaching to this
                    // hub: ask the next before saying "not found".
                    Code::NotFound => not_found = Some(status.message().to_owned()),
                    // The hub is fine, its channel state engine is not (it
                    // still takes broadcasts and sends): do not mark it down;
                    // the next hub may reach the engine.
                    Code::Unavailable if status.metadata().contains_key(ENGINE_ERROR_HEADER) => {
                        tracing::warn!(hub = %hub.url, error = %status.message(), "{what} refused: channel state engine unavailable");
                        last_error = format!("hub {}: {}", hub.url, status.message());
                    }
                    _ => {
                        hub.up.store(false, Ordering::Relaxed);
                        tracing::warn!(hub = %hub.url, code = ?status.code(), error = %status.message(), "{what} failed; trying the next hub");
                        last_error = format!("hub {}: {}", hub.url, status.message());
                    }
                },
            }
        }
        match not_found {
            Some(msg) => Err(PublishError::NotFound(msg)),
            None => Err(PublishError::Unavailable(last_error)),
        }
    }

    /// Check every hub's `grpc.health.v1` each `interval` until `stop`;
    /// keep readiness ("at least one hub up") and the gauge in step.
    pub async fn probe(
        self: Arc<Self>,
        interval: Duration,
        health: Health,
        metrics: IngressMetrics,
        stop: tokio_util::sync::CancellationToken,
    ) {
        loop {
            let mut up = 0;
            for hub in self.current().iter() {
                let mut client = HealthClient::new(hub.channel.clone());
                let req = HealthCheckRequest { service: "pushmesh.v1.Hub".to_owned() };
                let ok = matches!(
                    tokio::time::timeout(self.timeout, client.check(req)).await,
                    Ok(Ok(r)) if r.get_ref().status == tonic_health::pb::health_check_response::ServingStatus::Serving as i32
                );
                let was = hub.up.swap(ok, Ordering::Relaxed);
                if was != ok {
                    tracing::info!(hub = %hub.url, up = ok, "hub health changed");
                }
                up += usize::from(ok);
                self.read_members(hub, ok).await;
            }
            metrics.hubs_up.set(up as i64);
            self.replan();
            if up > 0 {
                health.set_ready();
            } else {
                health.set_not_ready("no hub reachable");
            }
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = stop.cancelled() => return,
            }
        }
    }
}

impl HubPool {
    /// Refresh a hub's id and member list (forgotten while it is down).
    async fn read_members(&self, hub: &HubHandle, up: bool) {
        let members = if up {
            let mut client = HubClient::new(hub.channel.clone());
            match tokio::time::timeout(self.timeout, client.members(MembersRequest {})).await {
                Ok(Ok(r)) => {
                    let r = r.into_inner();
                    *hub.hub_id.lock().expect("hub id lock") = Some(r.hub_id);
                    r.gateways
                }
                _ => Vec::new(),
            }
        } else {
            Vec::new()
        };
        *hub.members.lock().expect("members lock") = members;
    }

    /// Rebuild the relay plan from the hubs' member lists: every gateway's
    /// newest declaration decides which live hubs it lacks, and one live hub
    /// it has relays to it.
    fn replan(self: &Arc<Self>) {
        let mut declared: HashMap<String, Links> = HashMap::new();
        let mut live: Vec<(String, String)> = Vec::new();
        for hub in self.current().iter() {
            if !hub.up.load(Ordering::Relaxed) {
                continue;
            }
            if let Some(id) = hub.hub_id.lock().expect("hub id lock").clone() {
                live.push((hub.url.clone(), id));
            }
            for m in hub.members.lock().expect("members lock").iter() {
                let Some(links) = &m.links else { continue };
                let e = declared.entry(m.gateway_id.clone()).or_default();
                if links.version >= e.version {
                    *e = links.clone();
                }
            }
        }
        let plan = relay_plan(&live, &declared);
        let partitioned = declared
            .values()
            .filter(|l| !l.hub_ids.is_empty() && live.iter().any(|(_, id)| !l.hub_ids.contains(id)))
            .count();
        if !plan.is_empty() {
            tracing::info!(?plan, "relaying for gateways cut off from hubs");
        }
        // Gateways new to the plan are marked as replaying *before* the plan
        // is in force, so no live relay overtakes their replay.
        let old = self.plan.read().expect("plan lock").clone();
        let replays = self.newly_cut(&old, &plan, &declared);
        *self.plan.write().expect("plan lock") = Arc::new(plan);
        // After the plan is in force: whoever reads the gauge sees it applied.
        self.metrics.partitioned_gateways.set(partitioned as i64);
        for r in replays {
            self.replay_to(r);
        }
    }

    /// Gateways that joined the plan for an owner hub since the last poll
    /// missed what that hub accepted while the partition went unnoticed:
    /// send them this ingress's kept publishes of that hub, in order, on a
    /// task of their own (the poll goes on).
    fn newly_cut(&self, old: &RelayPlan, new: &RelayPlan, declared: &HashMap<String, Links>) -> Vec<Replay> {
        let mut replays = Vec::new();
        let mut replaying = self.replaying.lock().expect("replaying lock");
        for (owner_id, routes) in new {
            let Some(owner) = self
                .current()
                .iter()
                .find(|h| h.hub_id.lock().expect("hub id lock").as_deref() == Some(owner_id))
                .cloned()
            else {
                continue;
            };
            let had: Vec<&String> =
                old.get(owner_id).map(|r| r.iter().flat_map(|(_, g)| g).collect()).unwrap_or_default();
            for (via, gateways) in routes {
                for gateway in gateways.iter().filter(|g| !had.contains(g)) {
                    // Not twice at once: a replay to it may still be running.
                    if !replaying.insert((owner_id.clone(), gateway.clone())) {
                        continue;
                    }
                    // From when it may have missed messages (0: unknown, all kept).
                    let since = declared.get(gateway).and_then(|l| l.lost_since.get(owner_id)).copied().unwrap_or(0);
                    replays.push(Replay {
                        gateway: gateway.clone(),
                        owner: owner.url.clone(),
                        owner_id: owner_id.clone(),
                        via: via.clone(),
                        since,
                    });
                }
            }
        }
        replays
    }

    /// Replay, in order, what `owner` accepted since `since`, then what it
    /// accepts meanwhile, until caught up; only then do live relays to the
    /// gateway start, and a last pass sends what slipped in between.
    /// (The gateway is already marked as replaying, by `newly_cut`.)
    fn replay_to(self: &Arc<Self>, r: Replay) {
        let Replay { gateway, owner, owner_id, via, since } = r;
        let key = (owner_id.clone(), gateway.clone());
        let Some(via) = self.by_url(&via) else {
            self.replaying.lock().expect("replaying lock").remove(&key);
            return;
        };
        // Positions up to `top` older than `since` are not for this gateway.
        let top = self.replay.top();
        let first = self.replay.of(&owner, since);
        tracing::info!(%gateway, hub = %owner_id, publishes = first.len(), "replaying to a gateway cut off from a hub");
        let pool = self.clone();
        tokio::spawn(async move {
            let mut last = top;
            let mut batch = first;
            // Catch up (bounded: at most 100 passes, each shorter than the last).
            for _ in 0..100 {
                if batch.is_empty() {
                    break;
                }
                last = pool.send_replay(&via, &gateway, batch, last).await;
                batch = pool.replay.after(&owner, last);
            }
            pool.replaying.lock().expect("replaying lock").remove(&key);
            // Accepted between the last pass and the line above: sent live
            // or here (the gateway drops a second copy by id).
            let rest = pool.replay.after(&owner, last);
            pool.send_replay(&via, &gateway, rest, last).await;
        });
    }

    async fn send_replay(
        &self,
        via: &HubHandle,
        gateway: &str,
        batch: Vec<(u64, PublishRequest)>,
        mut last: u64,
    ) -> u64 {
        for (seq, mut req) in batch {
            if let Some(r) = req.relay.as_mut() {
                r.gateways = vec![gateway.to_owned()];
            }
            self.send_relay(via, req).await;
            self.metrics.replayed.inc();
            last = last.max(seq);
        }
        last
    }
}

/// A replay to start: to `gateway`, of what hub `owner` (URL; id
/// `owner_id`) accepted since `since` (unix ns), through hub `via` (URL).
struct Replay {
    gateway: String,
    owner: String,
    owner_id: String,
    via: String,
    since: u64,
}

/// Owner hub id → [(relay hub URL, gateways)]: for each live hub (URL, id),
/// the gateways whose declaration lacks it, each assigned to the first live
/// hub it does have (gateways attached to no live hub are left out).
fn relay_plan(live: &[(String, String)], declared: &HashMap<String, Links>) -> RelayPlan {
    let mut plan = RelayPlan::new();
    for (_, owner) in live {
        let mut routes: Vec<(String, Vec<String>)> = Vec::new();
        for (gateway, links) in declared {
            let has = &links.hub_ids;
            if has.contains(owner) {
                continue;
            }
            let Some((via, _)) = live.iter().find(|(_, id)| has.contains(id)) else { continue };
            match routes.iter_mut().find(|(u, _)| u == via) {
                Some((_, gws)) => gws.push(gateway.clone()),
                None => routes.push((via.clone(), vec![gateway.clone()])),
            }
        }
        if !routes.is_empty() {
            for (_, gws) in &mut routes {
                gws.sort_unstable();
            }
            routes.sort_unstable();
            plan.insert(owner.clone(), routes);
        }
    }
    plan
}

/// A publish id: random, never 0 (0 means "no id" to gateways).
fn random_id() -> u64 {
    loop {
        let id = rand::random::<u64>();
        if id != 0 {
            return id;
        }
    }
}

/// Rendezvous score of (hub, key): FNV-1a over both, then a 64-bit mixer
/// (murmur3's fmix64) so near-identical hub names still spread well.
/// Stable across processes and versions: every ingress replica agrees.
fn score(hub: &str, key: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in hub.as_bytes().iter().chain(&[0xff]).chain(key.as_bytes()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

#[cfg(test)]
mod tests {
    use super::{relay_plan, score};
    use pushmesh_common::proto::Links;
    use std::collections::HashMap;

    #[test]
    fn relays_go_to_gateways_that_lack_the_owner_through_a_hub_they_have() {
        let u = |s: &str| s.to_owned();
        let live = vec![(u("a:1"), u("hub-a")), (u("b:1"), u("hub-b")), (u("c:1"), u("hub-c"))];
        let d = |v: &[&str]| Links { hub_ids: v.iter().map(|s| s.to_string()).collect(), ..Default::default() };
        let declared: HashMap<String, Links> = [
            ("gw-full".to_owned(), d(&["hub-a", "hub-b", "hub-c"])),
            ("gw-cut-a".to_owned(), d(&["hub-b", "hub-c"])),
            ("gw-only-c".to_owned(), d(&["hub-c"])),
            ("gw-none".to_owned(), d(&[])),
        ]
        .into();
        let plan = relay_plan(&live, &declared);
        assert_eq!(plan["hub-a"], vec![(u("b:1"), vec![u("gw-cut-a")]), (u("c:1"), vec![u("gw-only-c")])]);
        assert_eq!(plan["hub-b"], vec![(u("c:1"), vec![u("gw-only-c")])]);
        assert!(!plan.contains_key("hub-c"), "every gateway with a hub has hub-c");
        // Fully meshed: nothing to relay.
        let meshed: HashMap<_, _> = [("gw".to_owned(), d(&["hub-a", "hub-b", "hub-c"]))].into();
        assert!(relay_plan(&live, &meshed).is_empty());
    }

    #[test]
    fn rendezvous_moves_only_the_departed_hubs_keys() {
        let hubs = ["http://hub-0:50051", "http://hub-1:50051", "http://hub-2:50051"];
        fn pick<'a>(set: &[&'a str], key: &str) -> &'a str {
            set.iter().copied().max_by_key(|h| score(h, key)).unwrap()
        }
        let mut counts = [0usize; 3];
        for i in 0..3000 {
            let key = format!("c:channel-{i}");
            let before = pick(&hubs, &key);
            counts[hubs.iter().position(|h| *h == before).unwrap()] += 1;
            let after = pick(&hubs[..2], &key);
            if before != hubs[2] {
                assert_eq!(before, after, "key {key} moved although its hub stayed");
            }
        }
        // Roughly even spread: each hub gets 1000 ± 150 of 3000 keys.
        for c in counts {
            assert!((850..=1150).contains(&c), "uneven spread: {counts:?}");
        }
    }
}
