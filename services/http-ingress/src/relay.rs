//! Partitions: relaying a hub's publishes to gateways cut off from it.
//!
//! Every gateway attaches to every hub and declares on each stream which
//! hubs it is attached to; the pool's probe reads those declarations
//! (`Members`). A gateway that lost its link to hub A while this ingress
//! still reaches A would miss everything routed through A, so after A
//! accepts a publish, a *relay* copy (same id, A's stream position) goes to
//! one hub that gateway still has, addressed to it alone. The plan (owner
//! hub → relay hub → gateways) is rebuilt after each probe round; with no
//! partition it is empty and a publish costs one call. The relay is sent
//! before `ok` is answered, and a failed relay is counted. What the hub
//! accepted before the partition was noticed is replayed from a short
//! buffer of recent publishes (see `replay`).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};

use tokio_util::task::TaskTracker;

use pushmesh_common::proto::{Links, PublishRequest, PublishResponse, Relay};

use crate::hubs::{Call, HubHandle, HubPool, PublishError};
use crate::metrics::IngressMetrics;
use crate::replay::ReplayRing;

/// For each owner hub id: the relay hubs (by URL) and the gateways each
/// must relay to.
type RelayPlan = HashMap<String, Vec<(String, Vec<String>)>>;

/// Publishing through the pool, with relays for cut-off gateways.
pub struct Relays {
    pool: Arc<HubPool>,
    plan: RwLock<Arc<RelayPlan>>,
    metrics: IngressMetrics,
    replay: ReplayRing,
    /// (owner hub id, gateway) being replayed to: live relays to that
    /// gateway wait until its replay has caught up, so it gets the owner's
    /// messages in order (they are kept, and the replay sends them).
    replaying: Mutex<HashSet<(String, String)>>,
    /// Owns the replay tasks.
    tasks: TaskTracker,
}

impl Relays {
    pub fn new(pool: Arc<HubPool>, metrics: IngressMetrics, replay: ReplayRing, tasks: TaskTracker) -> Self {
        Self { pool, plan: RwLock::default(), metrics, replay, replaying: Mutex::default(), tasks }
    }

    pub fn pool(&self) -> &Arc<HubPool> {
        &self.pool
    }

    /// Publish through the owner hub of `key` (or the next that accepts),
    /// then relay to gateways cut off from it. `gateways` in the answer
    /// counts the relay hubs' queued copies too.
    pub async fn publish(&self, key: &str, mut req: PublishRequest) -> Result<PublishResponse, PublishError> {
        req.id = random_id();
        let (owner, mut resp) = self
            .pool
            .call(key, Call::Publish, |hub| {
                let req = req.clone();
                async move { hub.publish(req).await }
            })
            .await?;
        if owner.is_local() {
            self.metrics.colocated.inc();
        }
        if !resp.duplicate {
            if self.pool.current().len() > 1 && self.replay.enabled() {
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
        let Some(owner_id) = owner.id() else { return 0 };
        let Some(routes) = plan.get(&owner_id) else { return 0 };
        let replaying = self.replaying.lock().expect("replaying lock").clone();
        let calls = routes.iter().filter(|(via, _)| *via != owner.url).filter_map(|(via, gateways)| {
            let via = self.pool.by_url(via)?;
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
        match via.client().publish(req).await {
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

    /// Rebuild the relay plan from the hubs' member lists: every gateway's
    /// newest declaration decides which live hubs it lacks, and one live hub
    /// it has relays to it.
    pub fn replan(self: &Arc<Self>) {
        let mut declared: HashMap<String, Links> = HashMap::new();
        let mut live: Vec<(String, String)> = Vec::new();
        for hub in self.pool.current().iter() {
            if !hub.is_up() {
                continue;
            }
            if let Some(id) = hub.id() {
                live.push((hub.url.clone(), id));
            }
            for m in hub.members().iter() {
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
            let Some(owner) = self.pool.by_id(owner_id) else {
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
        let Some(via) = self.pool.by_url(&via) else {
            self.replaying.lock().expect("replaying lock").remove(&key);
            return;
        };
        // Positions up to `top` older than `since` are not for this gateway.
        let top = self.replay.top();
        let first = self.replay.of(&owner, since);
        tracing::info!(%gateway, hub = %owner_id, publishes = first.len(), "replaying to a gateway cut off from a hub");
        let pool = self.clone();
        self.tasks.spawn(async move {
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

#[cfg(test)]
mod tests {
    use super::relay_plan;
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
}
