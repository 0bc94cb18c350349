//! The ingress's view of the hubs: which one a call goes to, and which are
//! up.
//!
//! A publish for a target goes to the hub with the highest rendezvous score
//! for the target's topic, so one channel's messages all pass through one
//! hub (one order) while the hub set is stable, and only the channels of a
//! hub that left move when the set changes. Hubs that failed their last
//! health check are tried last. A hub that fails before accepting (cannot
//! connect, unavailable) is skipped for the next; `ok` is answered only
//! once some hub accepted.
//!
//! The probe checks every hub's `grpc.health.v1` and reads its `Members`
//! (the gateways attached to it and the hubs each says it has); what to do
//! about gateways cut off from a hub is `relay`'s business.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use pushmesh_common::health::Health;
use pushmesh_common::proto::hub_client::HubClient;
use pushmesh_common::proto::{
    HistoryRequest, HistoryResponse, Member, MembersRequest, PublishRequest, PublishResponse, QueryRequest,
    QueryResponse,
};
use pushmesh_common::rendezvous::score;
use pushmesh_hub::publish::Publisher;

use crate::metrics::IngressMetrics;
use crate::stream::{ENGINE_ERROR_HEADER, PublishStream};

pub struct HubHandle {
    pub url: String,
    channel: Channel,
    /// Publishes go over one long-lived stream (see `stream`).
    pub publisher: PublishStream,
    up: AtomicBool,
    /// The hub's id and its attached gateways, from its last `Members`.
    hub_id: Mutex<Option<String>>,
    members: Mutex<Vec<Member>>,
    /// Set when this hub runs in this process: publishes are handed to it
    /// directly (everything else still goes over gRPC).
    local: Option<Arc<Publisher>>,
}

impl HubHandle {
    /// A publish, answered like the hub's `Publish`.
    pub async fn publish(&self, req: PublishRequest) -> Result<PublishResponse, Status> {
        match &self.local {
            Some(hub) => hub.publish(req).await,
            None => self.publisher.publish(req).await,
        }
    }

    pub fn is_local(&self) -> bool {
        self.local.is_some()
    }

    pub fn client(&self) -> HubClient<Channel> {
        HubClient::new(self.channel.clone())
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// The hub's own id, once a probe read it.
    pub fn id(&self) -> Option<String> {
        self.hub_id.lock().expect("hub id lock").clone()
    }

    /// The gateways attached to it at the last probe (none while it is down).
    pub fn members(&self) -> Vec<Member> {
        self.members.lock().expect("members lock").clone()
    }
}

pub struct HubPool {
    /// The current hub set; replaced whole when discovery changes it.
    hubs: RwLock<Arc<Vec<Arc<HubHandle>>>>,
    timeouts: Timeouts,
    /// Most bytes of publishes packed into one publish stream frame.
    frame_bytes: usize,
    tls: Option<tonic::transport::ClientTlsConfig>,
    /// Owns the publish streams' tasks, and ends them.
    tasks: TaskTracker,
    stop: CancellationToken,
    /// The hub running in this process, by its URL in the hub set.
    local: Option<(String, Arc<Publisher>)>,
}

/// How long each kind of hub call may take.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// A publish (and the health and member probes).
    pub publish: Duration,
    /// A query: longer than the hub's own query deadline, so the hub always
    /// answers first (with whichever gateways answered: `partial`).
    pub query: Duration,
}

/// Why no hub took a call.
#[derive(Debug)]
pub enum PublishError {
    /// A hub refused the request itself (it would refuse it anywhere).
    Rejected(Status),
    /// The message is larger than the hubs take.
    TooLarge(String),
    /// Every hub said the target does not exist.
    NotFound(String),
    /// No hub could be reached or accepted it (what happened, without
    /// internal addresses).
    Unavailable(String),
}

/// What kind of hub call, for its timeout and what a failure means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    Publish,
    Query,
}

impl HubPool {
    pub fn new(
        urls: &[String],
        timeouts: Timeouts,
        frame_bytes: usize,
        tls: Option<tonic::transport::ClientTlsConfig>,
        tasks: TaskTracker,
        stop: CancellationToken,
        local: Option<(String, Arc<Publisher>)>,
    ) -> anyhow::Result<Self> {
        let pool = Self { hubs: RwLock::default(), timeouts, frame_bytes, tls, tasks, stop, local };
        pool.set_hubs(urls)?;
        Ok(pool)
    }

    fn handle(&self, url: &str) -> anyhow::Result<HubHandle> {
        let endpoint = Endpoint::from_shared(url.to_owned())
            .map_err(|e| {
                anyhow::anyhow!("hub endpoint {url:?} is not a valid URL ({e}); expected e.g. http://127.0.0.1:50051")
            })?
            .connect_timeout(Duration::from_millis(500).min(self.timeouts.publish))
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5))
            .tcp_nodelay(true);
        let endpoint = match &self.tls {
            Some(tls) => endpoint.tls_config(tls.clone())?,
            None => endpoint,
        };
        let channel = endpoint.connect_lazy();
        Ok(HubHandle {
            url: url.to_owned(),
            publisher: PublishStream::new(channel.clone(), self.frame_bytes, self.tasks.clone(), self.stop.clone()),
            channel,
            up: AtomicBool::new(false),
            hub_id: Mutex::new(None),
            members: Mutex::new(Vec::new()),
            local: self.local.as_ref().filter(|(local, _)| local == url).map(|(_, hub)| hub.clone()),
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

    pub fn current(&self) -> Arc<Vec<Arc<HubHandle>>> {
        self.hubs.read().expect("hubs lock").clone()
    }

    pub fn by_url(&self, url: &str) -> Option<Arc<HubHandle>> {
        self.current().iter().find(|h| h.url == url).cloned()
    }

    pub fn by_id(&self, id: &str) -> Option<Arc<HubHandle>> {
        self.current().iter().find(|h| h.id().as_deref() == Some(id)).cloned()
    }

    /// Hubs in the order to try for `key`: by rendezvous score, hubs that
    /// are up first.
    fn order(&self, key: &str) -> Vec<Arc<HubHandle>> {
        let mut hubs: Vec<(Arc<HubHandle>, bool, u64)> =
            self.current().iter().map(|h| (h.clone(), h.is_up(), score(&h.url, key))).collect();
        hubs.sort_by(|a, b| b.1.cmp(&a.1).then(b.2.cmp(&a.2)));
        hubs.into_iter().map(|(h, ..)| h).collect()
    }

    /// A query, through the hubs in `key`'s order. A query that fails does
    /// not mark its hub down: a slow gateway makes a slow query, and must
    /// not move any channel's publishes to another hub (a new epoch); the
    /// health probe decides who is down.
    pub async fn query(&self, key: &str, req: QueryRequest) -> Result<QueryResponse, PublishError> {
        let (_, resp) = self
            .call(key, Call::Query, |hub| {
                let req = req.clone();
                async move { hub.client().query(req).await.map(tonic::Response::into_inner) }
            })
            .await?;
        Ok(resp)
    }

    /// A channel's history from its owner hub (or the next that answers:
    /// with the Redis engine every hub reads the same streams). Like a
    /// query, a failure does not mark the hub down.
    pub async fn history(&self, key: &str, req: HistoryRequest) -> Result<HistoryResponse, PublishError> {
        let (_, resp) = self
            .call(key, Call::Query, |hub| {
                let req = req.clone();
                async move { hub.client().history(req).await.map(tonic::Response::into_inner) }
            })
            .await?;
        Ok(resp)
    }

    /// Call the hubs in `key`'s order until one answers, each within the
    /// call's timeout. A hub that fails a publish before answering (cannot
    /// connect, unavailable, deadline) is marked down and the next is
    /// tried; a refusal of the request itself is final. What went wrong is
    /// logged with the hub's address; the error the API answers with names
    /// no internal address.
    pub async fn call<T, F, Fut>(&self, key: &str, kind: Call, f: F) -> Result<(Arc<HubHandle>, T), PublishError>
    where
        F: Fn(Arc<HubHandle>) -> Fut,
        Fut: std::future::Future<Output = Result<T, Status>>,
    {
        let timeout = match kind {
            Call::Publish => self.timeouts.publish,
            Call::Query => self.timeouts.query,
        };
        let mut not_found = None;
        let mut engine_error = None;
        let (mut tried, mut last_error) = (0, "no hub is configured");
        for hub in self.order(key) {
            tried += 1;
            let status = match tokio::time::timeout(timeout, f(hub.clone())).await {
                Ok(Ok(resp)) => {
                    hub.up.store(true, Ordering::Relaxed);
                    return Ok((hub, resp));
                }
                Ok(Err(status)) => status,
                Err(_) => Status::deadline_exceeded(format!("no answer within {timeout:?}")),
            };
            match status.code() {
                Code::InvalidArgument => return Err(PublishError::Rejected(status)),
                Code::OutOfRange => return Err(PublishError::TooLarge(status.message().to_owned())),
                // The target's gateway may still be re-attaching to this
                // hub: ask the next before saying "not found".
                Code::NotFound => not_found = Some(status.message().to_owned()),
                // The hub is fine, its channel state engine is not (it still
                // takes broadcasts and sends): not marked down; the next hub
                // may reach the engine. The hub's message names no address.
                Code::Unavailable if status.metadata().contains_key(ENGINE_ERROR_HEADER) => {
                    tracing::warn!(hub = %hub.url, error = %status.message(), "{kind:?} refused: channel state engine unavailable");
                    engine_error = Some(status.message().to_owned());
                }
                code => {
                    if kind == Call::Publish {
                        hub.up.store(false, Ordering::Relaxed);
                    }
                    last_error = if code == Code::DeadlineExceeded { "timed out" } else { "unavailable" };
                    tracing::warn!(hub = %hub.url, ?code, error = %status.message(), "{kind:?} failed; trying the next hub");
                }
            }
        }
        match (not_found, engine_error) {
            (Some(msg), _) => Err(PublishError::NotFound(msg)),
            (None, Some(msg)) => Err(PublishError::Unavailable(format!("{msg} ({tried} hubs tried)"))),
            (None, None) => Err(PublishError::Unavailable(format!(
                "{last_error} ({tried} hubs tried; the ingress log has details)"
            ))),
        }
    }

    /// Check every hub's `grpc.health.v1` each `interval` until `stop`,
    /// reading the members of those that are up; keep readiness ("at least
    /// one hub up") and the gauge in step, and call `after_round` after
    /// each round.
    pub async fn probe(
        self: Arc<Self>,
        interval: Duration,
        health: Health,
        metrics: IngressMetrics,
        stop: tokio_util::sync::CancellationToken,
        after_round: impl Fn(),
    ) {
        loop {
            let mut up = 0;
            for hub in self.current().iter() {
                let mut client = HealthClient::new(hub.channel.clone());
                let req = HealthCheckRequest { service: "pushmesh.v1.Hub".to_owned() };
                let ok = matches!(
                    tokio::time::timeout(self.timeouts.publish, client.check(req)).await,
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
            after_round();
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

    /// Refresh a hub's id and member list (forgotten while it is down).
    async fn read_members(&self, hub: &HubHandle, up: bool) {
        let members = if up {
            match tokio::time::timeout(self.timeouts.publish, hub.client().members(MembersRequest {})).await {
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
}
