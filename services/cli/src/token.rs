//! `pushmesh token`: mint the HS256 JWT a gateway started with
//! `--jwt-secret` accepts (`sub`, `channels`, `exp`), for testing.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::json;

use crate::cli::TokenArgs;
use crate::duration::human;
use crate::failure::{Failure, Result};

pub fn run(args: TokenArgs) -> Result<()> {
    if args.secret.is_empty() {
        return Err(Failure::usage("the secret is empty")
            .hint("pass the gateway's secret with --secret or PUSHMESH_JWT_SECRET"));
    }
    if args.user.is_empty() {
        return Err(Failure::usage("--user is empty").hint("the user id becomes the token's `sub`, e.g. --user alice"));
    }
    let token = mint(&args.secret, &args.user, &args.channel, args.ttl.as_secs())?;
    println!("{token}");
    let channels = if args.channel.is_empty() { "no channel".to_owned() } else { args.channel.join(", ") };
    eprintln!(
        "token for user {} (channels: {channels}), valid for {}; use it as ws://…/ws?token=TOKEN or pushmesh listen --token TOKEN",
        args.user,
        human(args.ttl)
    );
    Ok(())
}

pub fn mint(secret: &str, user: &str, channels: &[String], ttl_secs: u64) -> Result<String> {
    let now =
        SystemTime::now().duration_since(UNIX_EPOCH).map_err(|e| Failure::failed(format!("clock: {e}")))?.as_secs();
    let claims = json!({ "sub": user, "channels": channels, "iat": now, "exp": now + ttl_secs });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .map_err(|e| Failure::failed(format!("signing the token: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_carries_the_claims() {
        let t = mint("s3cret", "alice", &["chat:*".to_owned()], 60).unwrap();
        let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
        v.required_spec_claims = ["exp", "sub"].into_iter().map(String::from).collect();
        let data =
            jsonwebtoken::decode::<serde_json::Value>(&t, &jsonwebtoken::DecodingKey::from_secret(b"s3cret"), &v)
                .unwrap();
        assert_eq!(data.claims["sub"], "alice");
        assert_eq!(data.claims["channels"], json!(["chat:*"]));
        assert!(
            jsonwebtoken::decode::<serde_json::Value>(&t, &jsonwebtoken::DecodingKey::from_secret(b"other"), &v)
                .is_err()
        );
    }
}
