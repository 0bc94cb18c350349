//! A JSON Web Key Set (RFC 7517) for RS256/ES256 client tokens, kept
//! current so an identity provider can rotate its keys without a gateway
//! restart: a token names its key by `kid`, and the set is looked up by it.
//!
//! From a file (`--jwt-jwks-file`, e.g. a mounted ConfigMap): reloaded when
//! its modification time or size changes (checked every second: a `stat`).
//! From a URL (`--jwt-jwks-url`): fetched at start, every
//! `--jwt-jwks-refresh-secs`, and when a token names a `kid` the set does
//! not hold — at most once per `--jwt-jwks-min-interval-ms`, so a flood of
//! tokens with made-up `kid`s costs the identity provider one request per
//! interval, not one per token.
//!
//! A failed reload keeps the last good set (and is logged): an identity
//! provider that is briefly down must not lock every client out. Keys are
//! asymmetric only (RSA, EC): a symmetric key published in a key set would
//! be a shared secret published.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Where the key set comes from.
#[derive(Debug, Clone)]
pub enum Source {
    File(PathBuf),
    Url(String),
}

/// One usable key: what it verifies and with which algorithm.
#[derive(Clone)]
pub struct Key {
    pub key: DecodingKey,
    pub algorithm: Algorithm,
}

type KeyMap = HashMap<String, Key>;

pub struct Jwks {
    source: Source,
    keys: RwLock<Arc<KeyMap>>,
    /// When the last on-demand fetch (unknown `kid`) started; one at a time.
    on_demand: tokio::sync::Mutex<Option<Instant>>,
    min_interval: Duration,
    /// The file's (mtime, size) at the last load.
    stamp: Mutex<Option<(SystemTime, u64)>>,
    http: reqwest::Client,
}

impl Jwks {
    /// Load the set once. A file that cannot be read or parsed is a
    /// configuration error (start-up fails); an unreachable URL is not
    /// (the set starts empty and is fetched again on the first token).
    pub async fn load(source: Source, min_interval: Duration) -> anyhow::Result<Arc<Self>> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .context("building the JWKS HTTP client")?;
        let jwks = Arc::new(Self {
            source,
            keys: RwLock::default(),
            on_demand: tokio::sync::Mutex::new(None),
            min_interval,
            stamp: Mutex::new(None),
            http,
        });
        match (&jwks.source, jwks.reload().await) {
            (_, Ok(n)) => tracing::info!(source = ?jwks.source, keys = n, "JWKS loaded"),
            (Source::File(_), Err(e)) => return Err(e),
            (Source::Url(url), Err(e)) => {
                tracing::error!(%url, error = %format!("{e:#}"), "JWKS not fetched; tokens are refused until it is")
            }
        }
        Ok(jwks)
    }

    /// The key named `kid`, if the set holds it now.
    pub fn key(&self, kid: &str) -> Option<Key> {
        self.keys.read().expect("jwks lock").get(kid).cloned()
    }

    /// A token named a `kid` the set lacks: reload now, unless a reload
    /// started less than the minimum interval ago. True when it reloaded.
    pub async fn reload_for_unknown_kid(&self) -> bool {
        let mut last = self.on_demand.lock().await;
        if last.is_some_and(|t| t.elapsed() < self.min_interval) {
            return false;
        }
        *last = Some(Instant::now());
        match self.reload().await {
            Ok(_) => true,
            Err(e) => {
                tracing::warn!(source = ?self.source, error = %format!("{e:#}"), "JWKS reload failed; keeping the last good set");
                false
            }
        }
    }

    /// Keep the set current until `stop`: the file checked every second,
    /// the URL fetched every `refresh`.
    pub async fn keep_current(self: Arc<Self>, refresh: Duration, stop: CancellationToken) {
        let every = match self.source {
            Source::File(_) => Duration::from_secs(1),
            Source::Url(_) => refresh.max(Duration::from_secs(1)),
        };
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stop.cancelled() => return,
            }
            if let Err(e) = self.reload_if_changed().await {
                tracing::warn!(source = ?self.source, error = %format!("{e:#}"), "JWKS reload failed; keeping the last good set");
            }
        }
    }

    async fn reload_if_changed(&self) -> anyhow::Result<()> {
        if let Source::File(path) = &self.source {
            let meta = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
            let stamp = (meta.modified()?, meta.len());
            if *self.stamp.lock().expect("stamp lock") == Some(stamp) {
                return Ok(());
            }
        }
        let n = self.reload().await?;
        tracing::info!(source = ?self.source, keys = n, "JWKS reloaded");
        Ok(())
    }

    /// Read the set from its source and swap it in; the number of keys.
    async fn reload(&self) -> anyhow::Result<usize> {
        let (text, stamp) = match &self.source {
            Source::File(path) => {
                let meta = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
                let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
                (text, Some((meta.modified()?, meta.len())))
            }
            Source::Url(url) => {
                let resp = self.http.get(url).send().await.with_context(|| format!("fetching {url}"))?;
                let status = resp.status();
                anyhow::ensure!(status.is_success(), "fetching {url}: HTTP {status}");
                (resp.text().await.with_context(|| format!("reading {url}"))?, None)
            }
        };
        let keys = parse(&text)?;
        let n = keys.len();
        *self.keys.write().expect("jwks lock") = Arc::new(keys);
        if stamp.is_some() {
            *self.stamp.lock().expect("stamp lock") = stamp;
        }
        Ok(n)
    }
}

/// The usable keys of a JWKS document, by `kid`. Keys without a `kid`, of
/// an unsupported type, or symmetric, are skipped (and logged).
pub fn parse(text: &str) -> anyhow::Result<KeyMap> {
    let set: JwkSet = serde_json::from_str(text).context("not a JWKS document ({\"keys\":[…]})")?;
    let mut keys = KeyMap::new();
    for jwk in &set.keys {
        let Some(kid) = jwk.common.key_id.clone() else {
            tracing::warn!("JWKS: skipping a key without a kid");
            continue;
        };
        let by_type = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => Some(Algorithm::RS256),
            AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
                EllipticCurve::P256 => Some(Algorithm::ES256),
                EllipticCurve::P384 => Some(Algorithm::ES384),
                _ => None,
            },
            _ => None,
        };
        let declared = jwk.common.key_algorithm.and_then(|a| a.to_string().parse::<Algorithm>().ok());
        let algorithm = match (declared, by_type) {
            (_, None) => {
                tracing::warn!(%kid, "JWKS: skipping a key that is not RSA or EC P-256/P-384");
                continue;
            }
            (Some(alg), Some(natural)) if same_family(alg, natural) => alg,
            (Some(alg), Some(_)) => {
                tracing::warn!(%kid, ?alg, "JWKS: skipping a key whose alg does not fit its key type");
                continue;
            }
            (None, Some(alg)) => alg,
        };
        match DecodingKey::from_jwk(jwk) {
            Ok(key) => {
                keys.insert(kid, Key { key, algorithm });
            }
            Err(e) => tracing::warn!(%kid, error = %e, "JWKS: skipping an unusable key"),
        }
    }
    Ok(keys)
}

fn same_family(a: Algorithm, b: Algorithm) -> bool {
    use Algorithm::*;
    let rsa = |x| matches!(x, RS256 | RS384 | RS512 | PS256 | PS384 | PS512);
    let ec = |x| matches!(x, ES256 | ES384);
    (rsa(a) && rsa(b)) || (ec(a) && ec(b))
}
