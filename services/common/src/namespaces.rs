//! Channel namespaces: options per channel prefix (`chat:`), read once at
//! start-up from the TOML file given with `--namespaces`, and the backend
//! proxy's settings (`[proxy]`) in the same file.
//!
//! One definition for every service that reads the file: the ws-gateway
//! uses the client-facing options and `[proxy]`, the hub uses the history
//! options (`history_size`, `history_ttl_secs`). Both read the same file,
//! so both accept every valid key and refuse the same mistakes.
//!
//! The file is checked whole before a service binds a port: unknown keys,
//! wrong types, a duplicate prefix, a namespace asking for a proxy that is
//! not configured, an endpoint that is not a URL: each error names its line
//! (toml's errors carry spans; ours are computed from `Spanned` fields), so
//! a bad ConfigMap fails the rollout at once instead of misbehaving later.
//!
//! A channel takes the options of the namespace with the longest matching
//! prefix; `""` is the default namespace. With no file, or no match, a
//! channel gets the defaults: no client publish, no proxies, no join/leave,
//! no client presence, recovery on, no claims required, the hub's own
//! history flags — exactly what the services did before namespaces existed.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use toml::Spanned;

/// Why the namespaces file was refused (the message names the line).
#[derive(Debug, thiserror::Error)]
#[error("namespaces file {path}: {message}")]
pub struct NamespacesError {
    path: String,
    message: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    proxy: Option<ProxyFile>,
    #[serde(default)]
    namespace: Vec<Spanned<Namespace>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProxyFile {
    endpoint: Spanned<String>,
    #[serde(default = "default_timeout_ms")]
    timeout_ms: Spanned<u64>,
    #[serde(default = "default_max_in_flight")]
    max_in_flight: Spanned<usize>,
    #[serde(default)]
    connect: bool,
    #[serde(default)]
    rpc: bool,
    #[serde(default)]
    disconnect_notice: bool,
    #[serde(default)]
    connect_first_message: bool,
    #[serde(default = "default_retries")]
    retries: u32,
    #[serde(default = "default_breaker_failures")]
    breaker_failures: u32,
    #[serde(default = "default_breaker_open_ms")]
    breaker_open_ms: u64,
    #[serde(default = "default_max_answer_bytes")]
    max_answer_bytes: usize,
}

fn default_timeout_ms() -> Spanned<u64> {
    Spanned::new(0..0, 1000)
}
fn default_max_in_flight() -> Spanned<usize> {
    Spanned::new(0..0, 256)
}
fn default_retries() -> u32 {
    1
}
fn default_breaker_failures() -> u32 {
    5
}
fn default_breaker_open_ms() -> u64 {
    5000
}
fn default_max_answer_bytes() -> usize {
    64 << 10
}
fn yes() -> bool {
    true
}

/// How the gateway reaches the application's backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// `http://…` or `https://…` (verified against the system's roots): a JSON POST to `{base}/{connect|subscribe|publish|rpc|disconnect}`.
    Http(String),
    /// `grpc://host:port` (plain HTTP/2): the `pushmesh.v1.Proxy` service.
    Grpc(String),
}

/// The backend proxy's settings (`[proxy]`).
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    pub endpoint: Endpoint,
    /// Per call; a call never waits longer (retries get their own).
    pub timeout: std::time::Duration,
    /// Backend calls in flight on this gateway, per kind; a call beyond it
    /// fails at once (`backend_unavailable`) rather than queueing.
    pub max_in_flight: usize,
    pub connect: bool,
    pub rpc: bool,
    pub disconnect_notice: bool,
    /// The connect proxy waits (up to the auth timeout) for the client's
    /// first frame, `{"op":"connect","data":…}`, and sends its `data` too.
    pub connect_first_message: bool,
    /// Extra attempts for connect, subscribe and rpc when the backend could
    /// not be reached or said 502/503/504 (never for publish: it is not
    /// idempotent; never after a timeout: the backend may be working).
    pub retries: u32,
    /// Consecutive failures of one kind that open its circuit breaker…
    pub breaker_failures: u32,
    /// …for this long; then one call probes (half-open).
    pub breaker_open: std::time::Duration,
    /// Largest backend answer taken, in bytes.
    pub max_answer_bytes: usize,
}

/// The options of one channel namespace.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Namespace {
    /// Channels starting with this belong here (the longest match wins).
    pub prefix: String,
    /// Clients may publish (`{"op":"publish"}`).
    #[serde(default)]
    pub client_publish: bool,
    /// Each client subscribe is asked of the backend first.
    #[serde(default)]
    pub proxy_subscribe: bool,
    /// Each client publish is asked of the backend first (it may change it).
    #[serde(default)]
    pub proxy_publish: bool,
    /// Subscribers get `join`/`leave` frames when others subscribe or leave.
    #[serde(default)]
    pub join_leave: bool,
    /// Clients may ask for the channel's presence (`{"op":"presence"}`).
    #[serde(default)]
    pub presence: bool,
    /// A subscribe with `since` recovers missed messages; off: it answers
    /// `recovered: false` at once.
    #[serde(default = "yes")]
    pub recover: bool,
    /// JWT claims (name → exact value) a client needs to subscribe or publish.
    #[serde(default)]
    pub require_claims: BTreeMap<String, serde_json::Value>,
    /// Messages the hub keeps per channel (the hub's `--history-size` when
    /// absent; 0: positions only, no recovery, no idempotency keys).
    #[serde(default)]
    history_size: Option<usize>,
    /// Seconds a message stays in the hub's history, and a channel stream
    /// without publishes lives (the hub's `--history-ttl-secs` when absent).
    #[serde(default)]
    history_ttl_secs: Option<Spanned<u64>>,
}

impl Namespace {
    /// What a channel gets when no namespace matches.
    fn fallback() -> Self {
        Self {
            prefix: String::new(),
            client_publish: false,
            proxy_subscribe: false,
            proxy_publish: false,
            join_leave: false,
            presence: false,
            recover: true,
            require_claims: BTreeMap::new(),
            history_size: None,
            history_ttl_secs: None,
        }
    }

    /// The hub's history size for this namespace, if the file sets one.
    pub fn history_size(&self) -> Option<usize> {
        self.history_size
    }

    /// The hub's history TTL for this namespace, if the file sets one.
    pub fn history_ttl(&self) -> Option<std::time::Duration> {
        self.history_ttl_secs.as_ref().map(|s| std::time::Duration::from_secs(*s.get_ref()))
    }

    /// Whether `claims` hold every claim this namespace requires.
    pub fn claims_allow(&self, claims: Option<&serde_json::Map<String, serde_json::Value>>) -> bool {
        self.require_claims.iter().all(|(k, want)| claims.and_then(|c| c.get(k)) == Some(want))
    }
}

/// Every namespace, and the proxy settings.
#[derive(Debug, Clone)]
pub struct Namespaces {
    /// Longest prefix first.
    list: Vec<Namespace>,
    fallback: Namespace,
    pub proxy: Option<ProxyConfig>,
}

impl Default for Namespaces {
    fn default() -> Self {
        Self { list: Vec::new(), fallback: Namespace::fallback(), proxy: None }
    }
}

impl Namespaces {
    pub fn load(path: &Path) -> Result<Self, NamespacesError> {
        let text = std::fs::read_to_string(path).map_err(|e| NamespacesError {
            path: path.display().to_string(),
            message: format!("cannot read it: {e}"),
        })?;
        Self::parse(&text).map_err(|message| NamespacesError { path: path.display().to_string(), message })
    }

    /// Parse and check the file's text; the error names the line.
    pub fn parse(text: &str) -> Result<Self, String> {
        let file: File = toml::from_str(text).map_err(|e| {
            let at = e.span().map(|s| format!("line {}: ", line_of(text, s.start))).unwrap_or_default();
            format!("{at}{}", e.message())
        })?;
        let proxy = file.proxy.map(|p| proxy_config(p, text)).transpose()?;
        let mut list: Vec<Namespace> = Vec::with_capacity(file.namespace.len());
        for spanned in file.namespace {
            let line = line_of(text, spanned.span().start);
            let ns = spanned.into_inner();
            if !ns.prefix.is_empty()
                && let Err(e) = crate::ids::Channel::new(ns.prefix.clone())
            {
                return Err(format!("line {line}: prefix {:?} cannot start a channel name: {e}", ns.prefix));
            }
            if list.iter().any(|n| n.prefix == ns.prefix) {
                return Err(format!("line {line}: prefix {:?} is declared twice", ns.prefix));
            }
            if (ns.proxy_subscribe || ns.proxy_publish) && proxy.is_none() {
                return Err(format!(
                    "line {line}: namespace {:?} uses proxy_subscribe/proxy_publish but there is no [proxy] with an endpoint",
                    ns.prefix
                ));
            }
            if ns.proxy_publish && !ns.client_publish {
                return Err(format!(
                    "line {line}: namespace {:?} has proxy_publish without client_publish: clients cannot publish there",
                    ns.prefix
                ));
            }
            if let Some(ttl) = &ns.history_ttl_secs
                && !(1..=MAX_TTL_SECS).contains(ttl.get_ref())
            {
                return Err(format!(
                    "line {}: history_ttl_secs must be 1..={MAX_TTL_SECS} (one year), not {}",
                    line_of(text, ttl.span().start),
                    ttl.get_ref()
                ));
            }
            list.push(ns);
        }
        list.sort_by_key(|n| std::cmp::Reverse(n.prefix.len()));
        let fallback = list.iter().find(|n| n.prefix.is_empty()).cloned().unwrap_or_else(Namespace::fallback);
        Ok(Self { list, fallback, proxy })
    }

    /// The options for `channel`.
    pub fn for_channel(&self, channel: &str) -> &Namespace {
        self.list.iter().find(|n| channel.starts_with(&n.prefix)).unwrap_or(&self.fallback)
    }

    /// Every namespace declared, longest prefix first (the order
    /// [`Self::for_channel`] tries them in).
    pub fn iter(&self) -> impl Iterator<Item = &Namespace> {
        self.list.iter()
    }

    /// What a channel no namespace matches gets (the `""` namespace if
    /// declared, else the defaults).
    pub fn fallback(&self) -> &Namespace {
        &self.fallback
    }

    /// Whether any namespace asks for a per-request proxy.
    pub fn any_proxied(&self) -> bool {
        self.list.iter().any(|n| n.proxy_subscribe || n.proxy_publish)
    }
}

fn proxy_config(p: ProxyFile, text: &str) -> Result<ProxyConfig, String> {
    let line = |span: std::ops::Range<usize>| line_of(text, span.start);
    let raw = p.endpoint.get_ref().trim_end_matches('/');
    let endpoint = if let Some(rest) = raw.strip_prefix("grpc://") {
        Endpoint::Grpc(format!("http://{rest}"))
    } else if let Some(rest) = raw.strip_prefix("grpc+http://") {
        Endpoint::Grpc(format!("http://{rest}"))
    } else if raw.starts_with("http://") || raw.starts_with("https://") {
        Endpoint::Http(raw.to_owned())
    } else {
        return Err(format!(
            "line {}: endpoint {:?} is not supported; expected http(s)://host:port/path (JSON) or grpc://host:port (pushmesh.v1.Proxy)",
            line(p.endpoint.span()),
            raw
        ));
    };
    let url_ok = match &endpoint {
        Endpoint::Http(u) | Endpoint::Grpc(u) => u.parse::<http::Uri>().is_ok_and(|u| u.host().is_some()),
    };
    if !url_ok {
        return Err(format!("line {}: endpoint {raw:?} is not a valid URL", line(p.endpoint.span())));
    }
    let timeout_ms = *p.timeout_ms.get_ref();
    if !(1..=60_000).contains(&timeout_ms) {
        return Err(format!("line {}: timeout_ms must be 1..=60000, not {timeout_ms}", line(p.timeout_ms.span())));
    }
    let max_in_flight = *p.max_in_flight.get_ref();
    if max_in_flight == 0 {
        return Err(format!("line {}: max_in_flight must be at least 1", line(p.max_in_flight.span())));
    }
    Ok(ProxyConfig {
        endpoint,
        timeout: std::time::Duration::from_millis(timeout_ms),
        max_in_flight,
        connect: p.connect,
        rpc: p.rpc,
        disconnect_notice: p.disconnect_notice,
        connect_first_message: p.connect_first_message,
        retries: p.retries.min(3),
        breaker_failures: p.breaker_failures.max(1),
        breaker_open: std::time::Duration::from_millis(p.breaker_open_ms.max(1)),
        max_answer_bytes: p.max_answer_bytes.clamp(1024, 16 << 20),
    })
}

/// The longest history TTL a namespace may ask for (a year): beyond it a
/// typo (`history_ttl_secs = 3600000000`) would overflow Redis's `PEXPIRE`.
const MAX_TTL_SECS: u64 = 365 * 24 * 3600;

/// The 1-based line of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())].iter().filter(|&&b| b == b'\n').count() + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[proxy]
endpoint = "http://127.0.0.1:3000/pushmesh"
connect = true

[[namespace]]
prefix = ""

[[namespace]]
prefix = "chat:"
client_publish = true
proxy_publish = true
require_claims = { role = "member" }

[[namespace]]
prefix = "chat:vip:"
recover = false
"#;

    #[test]
    fn the_longest_prefix_wins_and_the_empty_prefix_is_the_default() {
        let ns = Namespaces::parse(GOOD).unwrap();
        assert!(ns.for_channel("chat:room").client_publish);
        assert!(!ns.for_channel("chat:vip:x").client_publish);
        assert!(!ns.for_channel("chat:vip:x").recover);
        assert!(ns.for_channel("news").recover);
        assert_eq!(ns.proxy.as_ref().unwrap().endpoint, Endpoint::Http("http://127.0.0.1:3000/pushmesh".into()));
        let claims: serde_json::Map<_, _> = serde_json::from_str(r#"{"role":"member"}"#).unwrap();
        assert!(ns.for_channel("chat:a").claims_allow(Some(&claims)));
        assert!(!ns.for_channel("chat:a").claims_allow(None));
        assert!(ns.for_channel("news").claims_allow(None));
    }

    #[test]
    fn errors_name_the_line() {
        let unknown = "[[namespace]]\nprefix = \"a:\"\nclient_publsh = true\n";
        let e = Namespaces::parse(unknown).unwrap_err();
        assert!(e.starts_with("line 3: ") && e.contains("client_publsh"), "{e}");
        let twice = "[[namespace]]\nprefix = \"a:\"\n\n[[namespace]]\nprefix = \"a:\"\n";
        assert_eq!(Namespaces::parse(twice).unwrap_err(), "line 4: prefix \"a:\" is declared twice");
        let no_proxy = "[[namespace]]\nprefix = \"a:\"\nproxy_subscribe = true\n";
        assert!(Namespaces::parse(no_proxy).unwrap_err().starts_with("line 1: "));
        assert!(Namespaces::parse("[proxy]\nendpoint = \"https://backend/pushmesh\"\n").is_ok());
        let scheme = "[proxy]\nendpoint = \"ftp://x\"\n";
        assert!(Namespaces::parse(scheme).unwrap_err().starts_with("line 2: endpoint"));
        let timeout = "[proxy]\nendpoint = \"http://x\"\ntimeout_ms = 0\n";
        assert!(Namespaces::parse(timeout).unwrap_err().starts_with("line 3: timeout_ms"));
        let kind = "[[namespace]]\nprefix = 3\n";
        assert!(Namespaces::parse(kind).unwrap_err().starts_with("line 2: "));
    }

    #[test]
    fn history_options_are_read_per_namespace_and_absent_means_the_hub_flags() {
        let text = "[[namespace]]\nprefix = \"chat:\"\nhistory_size = 3\nhistory_ttl_secs = 2\n\n[[namespace]]\nprefix = \"chat:vip:\"\n";
        let ns = Namespaces::parse(text).unwrap();
        let chat = ns.for_channel("chat:room");
        assert_eq!((chat.history_size(), chat.history_ttl()), (Some(3), Some(std::time::Duration::from_secs(2))));
        // A longer prefix is its own namespace: it does not inherit chat:'s history.
        let vip = ns.for_channel("chat:vip:1");
        assert_eq!((vip.history_size(), vip.history_ttl()), (None, None));
        assert_eq!(ns.for_channel("news").history_size(), None);
        let prefixes: Vec<&str> = ns.iter().map(|n| n.prefix.as_str()).collect();
        assert_eq!(prefixes, ["chat:vip:", "chat:"], "longest first");
        assert_eq!(ns.fallback().prefix, "");
    }

    #[test]
    fn history_errors_name_the_line_of_the_key() {
        let zero = "[[namespace]]\nprefix = \"a:\"\nhistory_ttl_secs = 0\n";
        assert_eq!(
            Namespaces::parse(zero).unwrap_err(),
            "line 3: history_ttl_secs must be 1..=31536000 (one year), not 0"
        );
        let negative = "[[namespace]]\nprefix = \"a:\"\n\nhistory_size = -1\n";
        assert!(
            Namespaces::parse(negative).unwrap_err().starts_with("line 4: "),
            "{}",
            Namespaces::parse(negative).unwrap_err()
        );
        let typo = "[[namespace]]\nprefix = \"a:\"\nhistory_sise = 3\n";
        let e = Namespaces::parse(typo).unwrap_err();
        assert!(e.starts_with("line 3: ") && e.contains("history_sise"), "{e}");
    }
}
