//! The open-loop publisher: POSTs to the ingress on a fixed schedule,
//! whether or not earlier requests have been answered (a closed loop would
//! slow down exactly when the system queues, and hide the queueing). Each
//! message carries its *scheduled* time, so a publisher that falls behind
//! shows up as latency rather than as a quietly lower rate.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::wire;

/// What to publish to.
#[derive(Debug, Clone)]
pub enum Target {
    Broadcast,
    Channel(String),
}

#[derive(Debug, Default)]
pub struct Outcome {
    /// Per message: accepted by the ingress (200 with ok).
    pub accepted: Vec<bool>,
    pub errors: u64,
    pub first_error: Option<String>,
    pub start_ns: u64,
    /// Largest delay between a message's scheduled and actual send.
    pub max_lag_ms: f64,
}

/// Most requests in flight: past this the publisher waits (and the lag is
/// reported).
const IN_FLIGHT: usize = 1024;

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(IN_FLIGHT)
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(10))
        .build()
        .expect("http client")
}

/// Publish `count` messages numbered from `first` at `per_sec`.
pub async fn run(
    http: &reqwest::Client,
    ingress: std::net::SocketAddr,
    target: &Target,
    first: u64,
    count: u64,
    per_sec: f64,
    pad: usize,
) -> Result<Outcome> {
    let (url, prefix) = match target {
        Target::Broadcast => (format!("http://{ingress}/broadcast"), r#"{"data":"#.to_owned()),
        Target::Channel(c) => (format!("http://{ingress}/publish"), format!(r#"{{"channel":"{c}","data":"#)),
    };
    let url = Arc::new(url);
    let gap_ns = 1e9 / per_sec.max(0.001);
    let sem = Arc::new(Semaphore::new(IN_FLIGHT));
    let start = Instant::now() + Duration::from_millis(20);
    let start_ns = wire::now_ns() + 20_000_000;
    let mut handles = Vec::with_capacity(count as usize);
    let mut max_lag = Duration::ZERO;
    for i in 0..count {
        let offset = Duration::from_nanos((i as f64 * gap_ns) as u64);
        tokio::time::sleep_until(start + offset).await;
        let permit = sem.clone().acquire_owned().await.expect("semaphore open");
        max_lag = max_lag.max(Instant::now().saturating_duration_since(start + offset));
        let t_ns = start_ns + offset.as_nanos() as u64;
        let body = format!("{prefix}{}}}", wire::data_json(first + i, t_ns, pad));
        let (http, url) = (http.clone(), url.clone());
        handles.push(tokio::spawn(async move {
            let r = http.post(url.as_str()).header("content-type", "application/json").body(body).send().await;
            drop(permit);
            match r {
                Ok(r) if r.status().is_success() => Ok(()),
                Ok(r) => {
                    let status = r.status();
                    Err(format!("{status}: {}", r.text().await.unwrap_or_default()))
                }
                Err(e) => Err(e.to_string()),
            }
        }));
    }
    let mut out = Outcome { start_ns, max_lag_ms: max_lag.as_secs_f64() * 1e3, ..Default::default() };
    for h in handles {
        match h.await? {
            Ok(()) => out.accepted.push(true),
            Err(e) => {
                out.accepted.push(false);
                out.errors += 1;
                out.first_error.get_or_insert(e);
            }
        }
    }
    Ok(out)
}
