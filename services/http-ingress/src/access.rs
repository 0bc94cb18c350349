//! Who may call the API, and how much: the API keys and their scopes, the
//! per-client-IP rate limit, and the size limits. One check for both
//! transports (HTTP and gRPC), so neither can be used to get around what
//! the other enforces.

use std::net::IpAddr;
use std::num::NonZeroU32;

use crate::config::Config;
use crate::error::ApiError;
use crate::keys::{ApiKeys, KeyError, Scope};

type Limiter = governor::DefaultKeyedRateLimiter<IpAddr>;

/// Where the credentials were looked for, to say so in the error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Http,
    Grpc,
}

pub struct Access {
    /// `None`: no API keys configured (every caller is admin).
    keys: Option<ApiKeys>,
    /// Requests per second per client IP (`None`: unlimited).
    limiter: Option<Limiter>,
    /// Largest request body, in bytes.
    pub max_body: u64,
    /// Most commands in one batch.
    pub max_batch: usize,
}

impl Access {
    /// Load the keys (flag and file) and build the limiter; a bad key or
    /// an unreadable key file is an error here, before anything is bound.
    pub fn from_config(config: &Config) -> anyhow::Result<Self> {
        let keys = ApiKeys::load(&config.api_keys, config.api_keys_file.as_deref())?;
        let limiter = NonZeroU32::new(config.rate_limit_per_sec).map(|rate| {
            let burst = NonZeroU32::new(config.rate_limit_burst).unwrap_or(rate);
            governor::RateLimiter::keyed(governor::Quota::per_second(rate).allow_burst(burst))
        });
        Ok(Self { keys, limiter, max_body: config.max_body_bytes, max_batch: config.max_batch })
    }

    pub fn has_keys(&self) -> bool {
        self.keys.is_some()
    }

    /// The caller's rate limit (when its address is known) and API key,
    /// against the scope the call needs; the key's scope when it may
    /// (admin when no keys are configured).
    pub fn check(
        &self,
        authorization: Option<&str>,
        peer: Option<IpAddr>,
        needs: Scope,
        transport: Transport,
    ) -> Result<Scope, ApiError> {
        if let Some(ip) = peer {
            self.charge(ip, 1)?;
        }
        let Some(keys) = &self.keys else { return Ok(Scope::Admin) };
        keys.check(authorization, needs).map_err(|e| match e {
            KeyError::Missing => ApiError::Unauthorized(match transport {
                Transport::Http => "missing API key: send the header Authorization: Bearer <key>".to_owned(),
                Transport::Grpc => "missing API key: send the metadata authorization: Bearer <key>".to_owned(),
            }),
            KeyError::Invalid => ApiError::Unauthorized("invalid API key".to_owned()),
            KeyError::Forbidden => ApiError::Forbidden(match transport {
                Transport::Http => {
                    "this API key may only publish (publish, broadcast, send); this route needs an admin key".to_owned()
                }
                Transport::Grpc => "this RPC needs an admin key".to_owned(),
            }),
        })
    }

    /// Take `weight` tokens from `ip`'s rate limit: a batch costs one per
    /// operation (its first was taken by `check`), so batching is not a way
    /// around the limit.
    pub fn charge(&self, ip: IpAddr, weight: u32) -> Result<(), ApiError> {
        let (Some(limiter), Some(n)) = (&self.limiter, NonZeroU32::new(weight)) else { return Ok(()) };
        match limiter.check_key_n(&ip, n) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => {
                use governor::clock::Clock;
                let wait = not_until.wait_time_from(governor::clock::DefaultClock::default().now());
                Err(ApiError::RateLimited(wait.as_secs().max(1)))
            }
            Err(_) => Err(ApiError::LimitExceeded(format!(
                "{weight} operations at once exceed this ingress's rate-limit burst; send smaller batches"
            ))),
        }
    }

    /// Forget idle client IPs so the limiter's memory stays bounded.
    pub fn sweep(&self) {
        if let Some(l) = &self.limiter {
            l.retain_recent();
        }
    }
}
