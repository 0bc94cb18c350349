//! A small client for the http-ingress API: JSON in, JSON out, and every
//! way a call can fail turned into a `Failure` whose hint says what to do
//! (start pushmesh, fix the channel name, pass an API key…).

use serde_json::Value;

use crate::cli::IngressArgs;
use crate::failure::{Exit, Failure, Result};

pub struct Api {
    base: reqwest::Url,
    client: reqwest::Client,
    api_key: Option<String>,
}

impl Api {
    pub fn new(args: &IngressArgs) -> Result<Self> {
        let base = parse_base(&args.url)?;
        let client = reqwest::Client::builder()
            .timeout(args.timeout)
            .build()
            .map_err(|e| Failure::failed(format!("cannot build an HTTP client: {e}")))?;
        Ok(Self { base, client, api_key: args.api_key.clone() })
    }

    pub fn base(&self) -> &str {
        self.base.as_str().trim_end_matches('/')
    }

    /// `base` joined with path segments (each percent-encoded) and a query.
    pub fn url(&self, segments: &[&str], query: &[(&str, String)]) -> reqwest::Url {
        let mut url = self.base.clone();
        {
            let mut path = url.path_segments_mut().expect("http(s) URLs have a path");
            path.pop_if_empty();
            path.extend(segments);
        }
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query.iter().map(|(k, v)| (*k, v.as_str())));
        }
        url
    }

    pub async fn post(&self, route: &str, body: &Value) -> Result<Value> {
        let req = self.client.post(self.url(&[route], &[])).json(body);
        self.send(req).await
    }

    pub async fn get(&self, segments: &[&str], query: &[(&str, String)]) -> Result<Value> {
        self.send(self.client.get(self.url(segments, query))).await
    }

    async fn send(&self, mut req: reqwest::RequestBuilder) -> Result<Value> {
        if let Some(key) = &self.api_key {
            req = req.bearer_auth(key);
        }
        let resp = req.send().await.map_err(|e| self.transport_failure(&e))?;
        let status = resp.status().as_u16();
        let text = resp.text().await.map_err(|e| self.transport_failure(&e))?;
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if (200..300).contains(&status) {
            return Ok(body);
        }
        Err(api_failure(self.base(), status, &body, self.api_key.is_some()))
    }

    fn transport_failure(&self, e: &reqwest::Error) -> Failure {
        let base = self.base();
        if e.is_timeout() {
            return Failure::unreachable(format!("the ingress at {base} did not answer in time"))
                .hint("check that it is healthy (curl {base}/readyz), or allow longer with --request-timeout 30s");
        }
        Failure::unreachable(format!("cannot reach the ingress at {base}: {}", root_cause(e))).hint(format!(
            "is pushmesh running? Start a local one with `pushmesh dev` (or `make run`), \
             or point --ingress / PUSHMESH_INGRESS_URL at your ingress (now {base})"
        ))
    }
}

/// Accept `http://host:port`, `host:port` and a trailing slash.
pub fn parse_base(url: &str) -> Result<reqwest::Url> {
    let with_scheme = if url.contains("://") { url.to_owned() } else { format!("http://{url}") };
    let parsed = reqwest::Url::parse(&with_scheme).map_err(|e| {
        Failure::usage(format!("--ingress {url:?} is not a URL ({e})")).hint("write it like http://127.0.0.1:8081")
    })?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(Failure::usage(format!("--ingress {url:?} must be an http:// URL"))
            .hint("the ingress speaks HTTP; the ws:// URL is the gateway's (for `pushmesh listen`)"));
    }
    Ok(parsed)
}

/// The innermost error, which is the useful one ("Connection refused").
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// An error answer `{"error":{"code","message"}}` as a failure with a hint;
/// `sent_key`: whether the request carried an API key (the 401/403 hint
/// differs: a missing key versus one the ingress does not accept).
pub fn api_failure(base: &str, status: u16, body: &Value, sent_key: bool) -> Failure {
    let code = body["error"]["code"].as_str().unwrap_or("");
    let message = body["error"]["message"].as_str().map(str::to_owned).unwrap_or_else(|| match body {
        Value::String(s) if !s.is_empty() => crate::truncate(s, 200),
        _ => "no error message".to_owned(),
    });
    let what = if code.is_empty() { format!("HTTP {status}") } else { format!("{status} {code}") };
    let f = Failure::new(if status == 503 { Exit::Unreachable } else { Exit::Failed }, format!("{what}: {message}"));
    match (status, code) {
        (503, _) => f.hint(format!(
            "no hub could take the request; check `curl {base}/readyz` and the hub's logs, then retry (hubs come back within seconds)"
        )),
        (401 | 403, _) if sent_key => f.hint(
            "the ingress did not accept the API key given (--api-key / PUSHMESH_API_KEY): \
             check it against the ingress's keys (its --api-key / PUSHMESH_API_KEYS or --api-keys-file)",
        ),
        (401 | 403, _) => f.hint("this ingress requires an API key: pass --api-key KEY or set PUSHMESH_API_KEY"),
        (_, "invalid_channel") => f.hint(
            "channel names are 1–255 bytes of letters, digits and _ - : . @ # (e.g. news, chat:42, user@example.com)",
        ),
        (_, "unknown_connection") => f.hint(
            "the connection id is the \"connection\" of the client's welcome frame (`pushmesh listen` prints it); \
             the client may have disconnected",
        ),
        (413, _) => f.hint("the message is larger than the ingress's --max-body-bytes"),
        (429, _) => f.hint("a limit was reached; see the message, or raise the limit in the service's flags"),
        (404, _) => f.hint(format!(
            "is {base} really a pushmesh http-ingress? (GET {base}/stats should answer JSON)"
        )),
        _ => f,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::IngressArgs;
    use std::time::Duration;

    fn api(url: &str) -> Api {
        Api::new(&IngressArgs { url: url.to_owned(), api_key: None, timeout: Duration::from_secs(1) }).unwrap()
    }

    #[test]
    fn urls_are_joined_and_encoded() {
        let a = api("127.0.0.1:8081/");
        assert_eq!(a.base(), "http://127.0.0.1:8081");
        assert_eq!(a.url(&["publish"], &[]).as_str(), "http://127.0.0.1:8081/publish");
        assert_eq!(
            a.url(&["presence", "chat#1 x"], &[("limit", "5".into())]).as_str(),
            "http://127.0.0.1:8081/presence/chat%231%20x?limit=5"
        );
        let prefixed = api("http://example.invalid/pushmesh");
        assert_eq!(prefixed.url(&["stats"], &[]).as_str(), "http://example.invalid/pushmesh/stats");
    }

    #[test]
    fn refuses_a_websocket_url() {
        let e = parse_base("ws://127.0.0.1:8080").unwrap_err();
        assert_eq!(e.exit, Exit::Usage);
        assert!(e.hint.unwrap().contains("pushmesh listen"));
    }

    #[test]
    fn error_answers_become_hints() {
        let body = serde_json::json!({"error":{"code":"invalid_channel","message":"channel name has a space"}});
        let f = api_failure("http://x", 400, &body, false);
        assert_eq!(f.exit, Exit::Failed);
        assert_eq!(f.message, "400 invalid_channel: channel name has a space");
        assert!(f.hint.unwrap().contains("1–255 bytes"));
        let f = api_failure(
            "http://x",
            503,
            &serde_json::json!({"error":{"code":"unavailable","message":"no hub"}}),
            false,
        );
        assert_eq!(f.exit, Exit::Unreachable);
        let denied = serde_json::json!({"error":{"code":"forbidden","message":"bad key"}});
        assert!(api_failure("http://x", 403, &denied, false).hint.unwrap().contains("pass --api-key"));
        let hint = api_failure("http://x", 403, &denied, true).hint.unwrap();
        assert!(hint.contains("did not accept the API key given") && !hint.contains("pass --api-key"), "{hint}");
    }
}
