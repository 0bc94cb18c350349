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

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use pushmesh_common::health::Health;
use pushmesh_common::proto::hub_client::HubClient;
use pushmesh_common::proto::{PublishRequest, PublishResponse, QueryRequest, QueryResponse};

use crate::metrics::IngressMetrics;

struct HubHandle {
    url: String,
    channel: Channel,
    up: AtomicBool,
}

pub struct HubPool {
    hubs: Vec<HubHandle>,
    timeout: Duration,
}

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
    ) -> anyhow::Result<Self> {
        if urls.is_empty() {
            anyhow::bail!("no hub endpoints: pass --hub http://HOST:PORT (or PUSHMESH_HUBS)");
        }
        let hubs = urls
            .iter()
            .map(|url| {
                let endpoint = Endpoint::from_shared(url.clone())
                    .map_err(|e| {
                        anyhow::anyhow!(
                            "hub endpoint {url:?} is not a valid URL ({e}); expected e.g. http://127.0.0.1:50051"
                        )
                    })?
                    .connect_timeout(Duration::from_millis(500).min(timeout))
                    .timeout(timeout)
                    .http2_keep_alive_interval(Duration::from_secs(5))
                    .keep_alive_timeout(Duration::from_secs(5))
                    .tcp_nodelay(true);
                let endpoint = match &tls {
                    Some(tls) => endpoint.tls_config(tls.clone())?,
                    None => endpoint,
                };
                Ok(HubHandle { url: url.clone(), channel: endpoint.connect_lazy(), up: AtomicBool::new(false) })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Self { hubs, timeout })
    }

    /// Hubs in the order to try for `key`: by rendezvous score, hubs that
    /// are up first.
    fn order(&self, key: &str) -> Vec<&HubHandle> {
        let mut hubs: Vec<(&HubHandle, u64)> = self.hubs.iter().map(|h| (h, score(&h.url, key))).collect();
        hubs.sort_by(|a, b| {
            let (ua, ub) = (a.0.up.load(Ordering::Relaxed), b.0.up.load(Ordering::Relaxed));
            ub.cmp(&ua).then(b.1.cmp(&a.1))
        });
        hubs.into_iter().map(|(h, _)| h).collect()
    }

    pub async fn publish(&self, key: &str, req: PublishRequest) -> Result<PublishResponse, PublishError> {
        self.call(key, "publish", |mut c| {
            let req = req.clone();
            async move { c.publish(req).await }
        })
        .await
    }

    pub async fn query(&self, key: &str, req: QueryRequest) -> Result<QueryResponse, PublishError> {
        self.call(key, "query", |mut c| {
            let req = req.clone();
            async move { c.query(req).await }
        })
        .await
    }

    /// Call the hubs in `key`'s order until one answers. A hub that fails
    /// before answering (cannot connect, unavailable, deadline) is marked
    /// down and the next is tried; a refusal of the request itself is final.
    async fn call<T, F, Fut>(&self, key: &str, what: &str, f: F) -> Result<T, PublishError>
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
                    return Ok(resp.into_inner());
                }
                Err(status) => match status.code() {
                    Code::InvalidArgument => return Err(PublishError::Rejected(status)),
                    // The target's gateway may still be re-attaching to this
                    // hub: ask the next before saying "not found".
                    Code::NotFound => not_found = Some(status.message().to_owned()),
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
            for hub in &self.hubs {
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
            }
            metrics.hubs_up.set(up as i64);
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
    use super::score;

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
