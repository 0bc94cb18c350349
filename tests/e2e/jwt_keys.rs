//! Token issuers and rotating keys (issue 13, item 6): `--jwt-issuer` and
//! `--jwt-audience` refuse tokens of another issuer or audience (4001,
//! saying which); a JSON Web Key Set, from a file or a URL, lets keys
//! rotate without a restart — a new `kid` is accepted, a removed one
//! refused, and tokens with made-up `kid`s cannot make the gateway hammer
//! the identity provider. A bystander keeps receiving throughout.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use pushmesh_tests::*;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs() as i64
}

fn claims(sub: &str) -> Value {
    json!({ "sub": sub, "channels": ["*"], "exp": unix_now() + 3600 })
}

/// An ES256 key of an identity provider: signs tokens, shows as a JWK.
struct Signer {
    kid: String,
    key: EncodingKey,
    jwk: Value,
}

impl Signer {
    fn new(kid: &str) -> anyhow::Result<Signer> {
        let pem = rcgen::KeyPair::generate()?.serialize_pem();
        let key = EncodingKey::from_ec_pem(pem.as_bytes())?;
        let mut jwk = Jwk::from_encoding_key(&key, Algorithm::ES256)?;
        jwk.common.key_id = Some(kid.to_owned());
        Ok(Signer { kid: kid.to_owned(), key, jwk: serde_json::to_value(jwk)? })
    }

    fn token(&self, claims: &Value) -> String {
        self.token_as(&self.kid, claims)
    }

    /// A token signed by this key but naming any `kid`.
    fn token_as(&self, kid: &str, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(kid.to_owned());
        jsonwebtoken::encode(&header, claims, &self.key).expect("encode")
    }
}

fn key_set(signers: &[&Signer]) -> String {
    json!({ "keys": signers.iter().map(|s| s.jwk.clone()).collect::<Vec<_>>() }).to_string()
}

/// Connect with `token`: `Ok` on a welcome, `Err((code, reason))` on a close.
async fn outcome(addr: std::net::SocketAddr, token: &str) -> anyhow::Result<Result<(), (u16, String)>> {
    use tokio_tungstenite::tungstenite::Message;
    let mut c = Client::connect_raw(addr, &format!("?token={token}")).await?;
    match c.next_message().await? {
        Message::Text(t) if t.as_str().contains("\"welcome\"") => Ok(Ok(())),
        Message::Close(Some(f)) => Ok(Err((u16::from(f.code), f.reason.as_str().to_owned()))),
        other => anyhow::bail!("expected a welcome or a close, got {other:?}"),
    }
}

async fn refused(addr: std::net::SocketAddr, token: &str) -> anyhow::Result<(u16, String)> {
    match outcome(addr, token).await? {
        Ok(()) => anyhow::bail!("the token was accepted"),
        Err(close) => Ok(close),
    }
}

async fn accepted(addr: std::net::SocketAddr, token: &str) -> bool {
    matches!(outcome(addr, token).await, Ok(Ok(())))
}

/// The bystander gets a fresh publish.
async fn bystander_receives(sys: &System, c: &mut Client, data: &str) -> anyhow::Result<()> {
    let (code, body) = post(sys.api(), "/publish", &json!({ "channel": "news", "data": data })).await?;
    assert_eq!(code, 200, "{body}");
    c.expect_data(&json!(data)).await?;
    Ok(())
}

#[tokio::test]
async fn tokens_of_another_issuer_or_audience_are_refused_with_4001() -> anyhow::Result<()> {
    let gw_args = ["--jwt-secret", SECRET, "--jwt-issuer", "https://id.example", "--jwt-audience", "pushmesh"];
    let sys = System::start_with(1, 1, &gw_args, &[]).await?;
    let hs = |c: Value| {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &c, &EncodingKey::from_secret(SECRET.as_bytes()))
            .expect("encode")
    };
    let good = |mut c: Value| {
        c["iss"] = json!("https://id.example");
        c["aud"] = json!(["other", "pushmesh"]);
        c
    };
    let mut bystander = Client::connect_as(sys.gw(0), &hs(good(claims("ann")))).await?;
    bystander.subscribe("news").await?;

    let cases = [
        (
            {
                let mut c = good(claims("bob"));
                c.as_object_mut().unwrap().remove("iss");
                c
            },
            "invalid token: missing claim \"iss\"",
        ),
        (
            {
                let mut c = good(claims("bob"));
                c["iss"] = json!("https://evil.example");
                c
            },
            "invalid token: wrong issuer (iss)",
        ),
        (
            {
                let mut c = good(claims("bob"));
                c["aud"] = json!("someone-else");
                c
            },
            "invalid token: wrong audience (aud)",
        ),
        (
            {
                let mut c = good(claims("bob"));
                c.as_object_mut().unwrap().remove("aud");
                c
            },
            "invalid token: missing claim \"aud\"",
        ),
    ];
    for (c, want) in cases {
        let (code, reason) = refused(sys.gw(0), &hs(c.clone())).await?;
        assert_eq!((code, reason.as_str()), (4001, want), "{c}");
    }
    assert!(accepted(sys.gw(0), &hs(good(claims("bob")))).await, "the right issuer and audience");
    bystander_receives(&sys, &mut bystander, "still here").await?;
    Ok(())
}

#[tokio::test]
async fn a_jwks_file_rotates_keys_without_a_restart() -> anyhow::Result<()> {
    let dir = bin_dir().parent().unwrap().join("test-logs").join(format!("jwks-{}", rand::random::<u32>()));
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("jwks.json");
    let (a, b) = (Signer::new("key-a")?, Signer::new("key-b")?);
    std::fs::write(&file, key_set(&[&a]))?;
    let path = file.display().to_string();
    let gw_args = ["--jwt-algorithm", "ES256", "--jwt-jwks-file", &path, "--jwt-jwks-min-interval-ms", "0"];
    let sys = System::start_with(1, 1, &gw_args, &[]).await?;
    let mut bystander = Client::connect_as(sys.gw(0), &a.token(&claims("ann"))).await?;
    bystander.subscribe("news").await?;

    let (code, reason) = refused(sys.gw(0), &b.token(&claims("bob"))).await?;
    assert_eq!((code, reason.as_str()), (4001, "invalid token: unknown key id (kid)"));
    // A key signing under another key's kid is refused (bad signature).
    let (code, reason) = refused(sys.gw(0), &b.token_as("key-a", &claims("bob"))).await?;
    assert_eq!((code, reason.as_str()), (4001, "invalid token: bad signature"));

    // Rotation: B added, then A removed; no restart.
    std::fs::write(&file, key_set(&[&a, &b]))?;
    assert!(accepted(sys.gw(0), &b.token(&claims("bob"))).await, "key-b accepted once the file holds it");
    // The bystander moves to key B before A goes: a refresh on the live connection.
    let r = bystander.command(json!({ "op": "refresh", "token": b.token(&claims("ann")) })).await?;
    assert_eq!(r["ok"], json!(true), "{r}");
    // A rewrite within the same second and of the same size must still be
    // seen: the gateway compares mtime and size, so make the size differ.
    std::fs::write(&file, format!("{}\n", key_set(&[&b])))?;
    eventually("key-a refused after its removal", || async {
        matches!(outcome(sys.gw(0), &a.token(&claims("cid"))).await, Ok(Err((4001, _)))).then_some(())
    })
    .await?;
    assert!(accepted(sys.gw(0), &b.token(&claims("bob"))).await);
    bystander_receives(&sys, &mut bystander, "rotated").await?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// A one-route HTTP server standing for an identity provider's jwks_uri:
/// serves the current set and counts the fetches.
struct Idp {
    addr: std::net::SocketAddr,
    set: Arc<Mutex<String>>,
    fetches: Arc<AtomicUsize>,
}

impl Idp {
    async fn start(set: String) -> anyhow::Result<Idp> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let set = Arc::new(Mutex::new(set));
        let fetches = Arc::new(AtomicUsize::new(0));
        let (s, f) = (set.clone(), fetches.clone());
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let (s, f) = (s.clone(), f.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    f.fetch_add(1, Ordering::SeqCst);
                    let body = s.lock().unwrap().clone();
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = sock.write_all(resp.as_bytes()).await;
                });
            }
        });
        Ok(Idp { addr, set, fetches })
    }

    fn serve(&self, set: String) {
        *self.set.lock().unwrap() = set;
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

#[tokio::test]
async fn a_jwks_url_is_fetched_for_a_new_kid_at_a_bounded_rate() -> anyhow::Result<()> {
    let (a, b) = (Signer::new("key-a")?, Signer::new("key-b")?);
    let idp = Idp::start(key_set(&[&a])).await?;
    let url = format!("http://{}/jwks", idp.addr);
    let gw_args = [
        "--jwt-algorithm",
        "ES256",
        "--jwt-jwks-url",
        &url,
        "--jwt-jwks-refresh-secs",
        "2",
        "--jwt-jwks-min-interval-ms",
        "600000",
    ];
    let sys = System::start_with(1, 1, &gw_args, &[]).await?;
    let mut bystander = Client::connect_as(sys.gw(0), &a.token(&claims("ann"))).await?;
    bystander.subscribe("news").await?;

    // The provider adds key B: the first token naming it makes the gateway
    // fetch the set at once, and it is accepted.
    idp.serve(key_set(&[&a, &b]));
    assert!(accepted(sys.gw(0), &b.token(&claims("bob"))).await, "key-b accepted on first sight");

    // Made-up kids: refused, and no fetch each (the on-demand fetch just
    // happened, the next is allowed only after the minimum interval; the
    // 2 s periodic refresh may add one).
    let before = idp.fetches();
    for i in 0..10 {
        let (code, reason) = refused(sys.gw(0), &a.token_as(&format!("made-up-{i}"), &claims("eve"))).await?;
        assert_eq!((code, reason.as_str()), (4001, "invalid token: unknown key id (kid)"));
    }
    let extra = idp.fetches() - before;
    assert!(extra <= 1, "{extra} fetches for 10 tokens with made-up kids");

    // The provider removes key A: refused after the next periodic refresh.
    idp.serve(key_set(&[&b]));
    eventually("key-a refused after its removal", || async {
        matches!(outcome(sys.gw(0), &a.token(&claims("cid"))).await, Ok(Err((4001, _)))).then_some(())
    })
    .await?;
    bystander_receives(&sys, &mut bystander, "rotated").await?;
    Ok(())
}
