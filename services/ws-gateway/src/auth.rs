//! Client authentication: a JWT (HS256 by default; RS256 or ES256 with a
//! public key) whose `sub` is the user id bound to the connection, whose
//! `channels` claim lists the channel patterns the client may subscribe to
//! (`*` matches any run of characters: `chat:*`, `user:42:*`, `*`), and
//! whose `exp` is enforced: at connect, and on the live connection, which
//! is closed (4002) once `exp` passes unless the client presented a newer
//! token with the `refresh` command. A `nbf` in the future is refused.
//! With `--jwt-issuer` / `--jwt-audience`, a token must carry that `iss` /
//! an `aud` naming this audience. Keys: one HS256 secret, one public key
//! (RS256/ES256), or a key set (JWKS, by file or URL, see `jwks`) whose
//! keys rotate without a restart, the token's `kid` choosing the key.
//!
//! With no key configured, every client is anonymous and may subscribe to
//! any channel: convenient for local development, wrong for production (the
//! docs and the startup log say so).

use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use pushmesh_common::ids::UserId;

use crate::config::Config;
use crate::jwks::{self, Jwks};

/// Why a token was refused; each maps to a documented close code.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("token expired")]
    Expired,
    #[error("invalid token: {0}")]
    Invalid(String),
    #[error("authentication required: pass ?token=JWT or send {{\"op\":\"auth\",\"token\":\"JWT\"}} first")]
    Missing,
    /// The connect proxy refused the connection: its close code and reason.
    #[error("{}", .0.1)]
    Refused(Box<(u16, String)>),
    /// The connect proxy failed (timeout, error, unavailable).
    #[error("{0}")]
    Backend(String),
}

/// What a valid token grants.
#[derive(Debug, Clone, Default)]
pub struct Grant {
    pub user: Option<UserId>,
    /// `None`: any channel (anonymous mode).
    /// Shared: a grant lives in every connection's task, so it stays small.
    pub channels: Option<std::sync::Arc<[String]>>,
    /// The token's `exp` (seconds since the epoch); `None` in anonymous mode.
    pub expires: Option<u64>,
    /// Claims and backend info; one pointer, as a grant lives in every
    /// connection's task.
    pub extra: Option<std::sync::Arc<GrantExtra>>,
}

/// The rarer parts of a grant.
#[derive(Debug, Default)]
pub struct GrantExtra {
    /// The token's other claims (or the connect proxy's `claims`), checked
    /// against a namespace's `require_claims`.
    pub claims: Option<serde_json::Map<String, serde_json::Value>>,
    /// Channels the connect proxy's answer subscribes the connection to.
    pub channels: Vec<pushmesh_common::ids::Channel>,
    /// The connect proxy's `info` for this connection, sent back to the
    /// backend with the connection's later calls.
    pub info: Option<serde_json::Value>,
}

impl Grant {
    pub fn anonymous() -> Self {
        Self { user: None, channels: None, expires: None, extra: None }
    }

    /// How long until a connection holding this grant must close: `exp`
    /// plus the leeway the token was checked with at connect (a token that
    /// was accepted must not be cut off at once). `None`: never.
    pub fn expires_in(&self) -> Option<std::time::Duration> {
        let exp = self.expires?;
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs();
        Some(std::time::Duration::from_secs((exp + LEEWAY_SECS).saturating_sub(now)))
    }

    pub fn claims(&self) -> Option<&serde_json::Map<String, serde_json::Value>> {
        self.extra.as_ref()?.claims.as_ref()
    }

    pub fn info(&self) -> Option<&serde_json::Value> {
        self.extra.as_ref()?.info.as_ref()
    }

    pub fn may_subscribe(&self, channel: &str) -> bool {
        match &self.channels {
            None => true,
            Some(patterns) => patterns.iter().any(|p| glob_match(p, channel)),
        }
    }
}

/// Clock skew tolerated on `exp` and `nbf`, in seconds.
pub const LEEWAY_SECS: u64 = 5;

#[derive(Deserialize)]
struct Claims {
    sub: Option<String>,
    #[serde(default)]
    channels: Vec<String>,
    exp: u64,
    #[serde(flatten)]
    extra: serde_json::Map<String, serde_json::Value>,
}

/// Where the verifying key comes from.
enum Keys {
    One(DecodingKey),
    Set(Arc<Jwks>),
}

pub struct Authenticator {
    keys: Keys,
    /// For `Keys::One`: its algorithm only. For a key set, a template
    /// whose algorithm is set per key.
    validation: Validation,
}

/// A JWKS token's `kid` the set does not hold (yet).
const UNKNOWN_KID: &str = "unknown key id (kid)";

impl Authenticator {
    /// `None` when no key is configured (anonymous mode).
    pub async fn from_config(config: &Config) -> anyhow::Result<Option<Self>> {
        let algorithm = config.jwt_algorithm.as_str();
        let alg: Algorithm = algorithm
            .parse()
            .map_err(|_| anyhow::anyhow!("unknown JWT algorithm {algorithm:?}; expected HS256, RS256 or ES256"))?;
        let given = [
            config.jwt_secret.is_some(),
            config.jwt_secret_file.is_some(),
            config.jwt_public_key_file.is_some(),
            config.jwt_jwks_file.is_some(),
            config.jwt_jwks_url.is_some(),
        ];
        match given.iter().filter(|g| **g).count() {
            0 => {
                anyhow::ensure!(
                    config.jwt_issuer.is_none() && config.jwt_audience.is_none(),
                    "--jwt-issuer/--jwt-audience need a JWT key (--jwt-secret, --jwt-public-key-file, --jwt-jwks-file or --jwt-jwks-url)"
                );
                return Ok(None);
            }
            1 => {}
            _ => anyhow::bail!(
                "give exactly one of --jwt-secret, --jwt-secret-file, --jwt-public-key-file, --jwt-jwks-file and --jwt-jwks-url"
            ),
        }
        let min_interval = Duration::from_millis(config.jwt_jwks_min_interval_ms);
        let keys = if let Some(s) = &config.jwt_secret {
            Keys::One(DecodingKey::from_secret(s.as_bytes()))
        } else if let Some(f) = &config.jwt_secret_file {
            let s = std::fs::read_to_string(f)
                .map_err(|e| anyhow::anyhow!("reading --jwt-secret-file {}: {e}", f.display()))?;
            Keys::One(DecodingKey::from_secret(s.trim_end_matches(['\n', '\r']).as_bytes()))
        } else if let Some(f) = &config.jwt_public_key_file {
            let pem =
                std::fs::read(f).map_err(|e| anyhow::anyhow!("reading --jwt-public-key-file {}: {e}", f.display()))?;
            match alg {
                Algorithm::RS256 | Algorithm::RS384 | Algorithm::RS512 => Keys::One(DecodingKey::from_rsa_pem(&pem)?),
                Algorithm::ES256 | Algorithm::ES384 => Keys::One(DecodingKey::from_ec_pem(&pem)?),
                other => anyhow::bail!("a public key file needs --jwt-algorithm RS256 or ES256, not {other:?}"),
            }
        } else if let Some(f) = &config.jwt_jwks_file {
            Keys::Set(Jwks::load(jwks::Source::File(f.clone()), min_interval).await?)
        } else if let Some(u) = &config.jwt_jwks_url {
            anyhow::ensure!(
                u.starts_with("https://") || u.starts_with("http://"),
                "--jwt-jwks-url must be an http(s):// URL, got {u:?}"
            );
            Keys::Set(Jwks::load(jwks::Source::Url(u.clone()), min_interval).await?)
        } else {
            unreachable!("exactly one key source was counted")
        };
        let mut validation = Validation::new(alg);
        let mut required = vec!["exp"];
        if let Some(iss) = &config.jwt_issuer {
            validation.set_issuer(&[iss]);
            required.push("iss");
        }
        if let Some(aud) = &config.jwt_audience {
            validation.set_audience(&[aud]);
            required.push("aud");
        } else {
            validation.validate_aud = false;
        }
        validation.set_required_spec_claims(&required);
        validation.leeway = LEEWAY_SECS;
        validation.validate_nbf = true;
        Ok(Some(Self { keys, validation }))
    }

    /// The key set to keep current, when keys come from one.
    pub fn jwks(&self) -> Option<Arc<Jwks>> {
        match &self.keys {
            Keys::Set(j) => Some(j.clone()),
            Keys::One(_) => None,
        }
    }

    /// Check a token with the keys held now. With a key set, a `kid` it
    /// lacks is refused here; [`Self::check_fresh`] reloads the set first.
    pub fn check(&self, token: &str) -> Result<Grant, AuthError> {
        match &self.keys {
            Keys::One(key) => self.decode(token, key, &self.validation),
            Keys::Set(set) => {
                let kid = jsonwebtoken::decode_header(token)
                    .map_err(|_| AuthError::Invalid("malformed token".to_owned()))?
                    .kid
                    .ok_or_else(|| AuthError::Invalid("the token names no key (kid)".to_owned()))?;
                let Some(k) = set.key(&kid) else {
                    return Err(AuthError::Invalid(UNKNOWN_KID.to_owned()));
                };
                let mut validation = self.validation.clone();
                validation.algorithms = vec![k.algorithm];
                self.decode(token, &k.key, &validation)
            }
        }
    }

    /// Like [`Self::check`], but a token whose `kid` the key set lacks
    /// makes it reload the set (rate-limited) and try again: a key the
    /// identity provider just added is accepted on first sight.
    pub async fn check_fresh(&self, token: &str) -> Result<Grant, AuthError> {
        match self.check(token) {
            Err(AuthError::Invalid(m)) if m == UNKNOWN_KID => {
                let Keys::Set(set) = &self.keys else { unreachable!("only key sets have kids") };
                if set.reload_for_unknown_kid().await { self.check(token) } else { Err(AuthError::Invalid(m)) }
            }
            other => other,
        }
    }

    fn decode(&self, token: &str, key: &DecodingKey, validation: &Validation) -> Result<Grant, AuthError> {
        let data = jsonwebtoken::decode::<Claims>(token, key, validation).map_err(|e| match e.kind() {
            ErrorKind::ExpiredSignature => AuthError::Expired,
            ErrorKind::InvalidSignature => AuthError::Invalid("bad signature".to_owned()),
            ErrorKind::InvalidAlgorithm => AuthError::Invalid("algorithm not allowed".to_owned()),
            ErrorKind::ImmatureSignature => AuthError::Invalid("token not valid yet (nbf is in the future)".to_owned()),
            ErrorKind::InvalidIssuer => AuthError::Invalid("wrong issuer (iss)".to_owned()),
            ErrorKind::InvalidAudience => AuthError::Invalid("wrong audience (aud)".to_owned()),
            ErrorKind::MissingRequiredClaim(c) => AuthError::Invalid(format!("missing claim {c:?}")),
            _ => AuthError::Invalid("malformed token".to_owned()),
        })?;
        let user = match data.claims.sub {
            Some(sub) => Some(UserId::new(sub).map_err(|e| AuthError::Invalid(format!("sub: {e}")))?),
            None => None,
        };
        Ok(Grant {
            user,
            channels: Some(data.claims.channels.into()),
            expires: Some(data.claims.exp),
            extra: (!data.claims.extra.is_empty())
                .then(|| std::sync::Arc::new(GrantExtra { claims: Some(data.claims.extra), ..Default::default() })),
        })
    }
}

/// `*` matches any run of characters (including none); everything else
/// matches itself.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    #[test]
    fn globs() {
        assert!(glob_match("*", "anything"));
        assert!(glob_match("news", "news"));
        assert!(!glob_match("news", "news2"));
        assert!(glob_match("chat:*", "chat:room-1"));
        assert!(!glob_match("chat:*", "chats"));
        assert!(glob_match("user:*:inbox", "user:42:inbox"));
        assert!(!glob_match("user:*:inbox", "user:42:outbox"));
        assert!(glob_match("a*b*c", "aXXbYYc"));
        assert!(!glob_match("", "x"));
    }
}
