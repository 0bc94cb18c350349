//! API keys: `Authorization: Bearer <key>` on every API route when keys are
//! configured. Several keys may be valid at once (rotation: add the new
//! one, move clients, remove the old one). A key is either `admin` (every
//! route) or `publish` (publish, broadcast, send, and batches of those).
//!
//! Keys are compared as SHA-256 digests in constant time, and every
//! configured key is compared on every request, so neither the length nor
//! the position of a match leaks through timing. Keys never appear in logs
//! or metrics.

use std::path::Path;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Publish,
    Admin,
}

pub struct ApiKeys {
    keys: Vec<([u8; 32], Scope)>,
}

/// Why a request was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum KeyError {
    Missing,
    Invalid,
    Forbidden,
}

impl ApiKeys {
    /// Entries are `KEY` (admin) or `KEY:admin` / `KEY:publish`, from the
    /// flag/env list and from a file (one per line, `#` comments).
    pub fn load(list: &[String], file: Option<&Path>) -> anyhow::Result<Option<Self>> {
        let mut entries: Vec<String> = list.iter().map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).collect();
        if let Some(f) = file {
            let text = std::fs::read_to_string(f)
                .map_err(|e| anyhow::anyhow!("reading --api-keys-file {}: {e}", f.display()))?;
            entries.extend(
                text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(str::to_owned),
            );
        }
        if entries.is_empty() {
            return Ok(None);
        }
        let keys = entries
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let (key, scope) = match e.rsplit_once(':') {
                    Some((k, "admin")) => (k, Scope::Admin),
                    Some((k, "publish")) => (k, Scope::Publish),
                    _ => (e.as_str(), Scope::Admin),
                };
                if key.len() < 16 {
                    anyhow::bail!("API key #{} is shorter than 16 characters; use a long random key", i + 1);
                }
                Ok((digest(key), scope))
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Some(Self { keys }))
    }

    /// Check an `Authorization` header value against the scope a route
    /// needs; the key's own scope when it may.
    pub fn check(&self, header: Option<&str>, needs: Scope) -> Result<Scope, KeyError> {
        let presented = header
            .and_then(|h| h.strip_prefix("Bearer ").or_else(|| h.strip_prefix("bearer ")))
            .map(str::trim)
            .ok_or(KeyError::Missing)?;
        let d = digest(presented);
        let mut found: Option<Scope> = None;
        for (k, scope) in &self.keys {
            if bool::from(k.ct_eq(&d)) {
                found = Some(*scope);
            }
        }
        match (found, needs) {
            (None, _) => Err(KeyError::Invalid),
            (Some(Scope::Publish), Scope::Admin) => Err(KeyError::Forbidden),
            (Some(scope), _) => Ok(scope),
        }
    }
}

fn digest(s: &str) -> [u8; 32] {
    Sha256::digest(s.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_and_rotation() {
        let keys = ApiKeys::load(
            &["old-key-0123456789".into(), "new-key-0123456789:admin".into(), "pub-key-0123456789:publish".into()],
            None,
        )
        .unwrap()
        .unwrap();
        assert_eq!(keys.check(Some("Bearer old-key-0123456789"), Scope::Admin), Ok(Scope::Admin));
        assert_eq!(keys.check(Some("Bearer new-key-0123456789"), Scope::Admin), Ok(Scope::Admin));
        assert_eq!(keys.check(Some("Bearer pub-key-0123456789"), Scope::Publish), Ok(Scope::Publish));
        assert_eq!(keys.check(Some("Bearer pub-key-0123456789"), Scope::Admin), Err(KeyError::Forbidden));
        assert_eq!(keys.check(Some("Bearer nope-0123456789012"), Scope::Publish), Err(KeyError::Invalid));
        assert_eq!(keys.check(Some("Basic abc"), Scope::Publish), Err(KeyError::Missing));
        assert_eq!(keys.check(None, Scope::Publish), Err(KeyError::Missing));
        assert!(ApiKeys::load(&["short".into()], None).is_err());
        assert!(ApiKeys::load(&[], None).unwrap().is_none());
    }
}
