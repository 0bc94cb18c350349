//! docs/openapi.json is the contract of the ingress's HTTP API: this test
//! holds the running ingress to it, both ways.
//!
//! A table of concrete requests runs against real services (two hubs, two
//! gateways, and ingresses configured to produce each answer: open, with API
//! keys, rate limited, and with no hub). Every answer must be documented for
//! its operation and status, with a body that validates against the
//! documented schema (JSON Schema 2020-12, `#/components/...` references
//! resolved against the spec) and the documented headers; and every
//! documented answer (operation, status, and error code or media type) must
//! be produced by some request. A removed route, a new status, or an error
//! that changes its code or shape fails here.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use pushmesh_tests::*;
use serde_json::{Value, json};

const ADMIN: &str = "openapi-admin-key-0123456789";
const PUBLISHER: &str = "openapi-publish-key-0123456789";
const FOREIGN_ORIGIN: &str = "https://elsewhere.example";

/// Which ingress a request goes to.
#[derive(Clone, Copy, Debug)]
enum Via {
    /// No keys, a 2 KiB body limit, at most 3 commands per batch.
    Open,
    /// Admin and publish API keys.
    Keyed,
    /// One request per second per client IP.
    Limited,
    /// Its only hub is gone.
    Down,
    /// Browsers from one origin allowed (`--cors-allow-origin`).
    Cors,
    /// Its hub confirms sends within 200 ms, and the only gateway is
    /// frozen (SIGSTOP) while the cases run.
    Frozen,
}

/// One request and the answer it must get.
struct Case {
    /// The documented operation: (path template, method), or
    /// ("x-unrouted", "unknownPath" | "wrongMethod").
    op: (&'static str, &'static str),
    via: Via,
    method: &'static str,
    /// Concrete path and query.
    path: String,
    headers: Vec<(&'static str, String)>,
    /// (content type, bytes); none: no body.
    body: Option<(&'static str, Vec<u8>)>,
    status: u16,
    /// The error code, or the media type of a non-error answer.
    variant: &'static str,
}

fn case(
    op: (&'static str, &'static str),
    via: Via,
    path: impl Into<String>,
    status: u16,
    variant: &'static str,
) -> Case {
    let method = if op.0 == "x-unrouted" { "GET" } else { method_of(op.1) };
    Case { op, via, method, path: path.into(), headers: Vec::new(), body: None, status, variant }
}

fn method_of(m: &str) -> &'static str {
    match m {
        "post" => "POST",
        "get" => "GET",
        other => panic!("no method {other}"),
    }
}

impl Case {
    fn json(mut self, body: Value) -> Self {
        self.body = Some(("application/json", body.to_string().into_bytes()));
        self
    }
    fn raw(mut self, content_type: &'static str, body: impl Into<Vec<u8>>) -> Self {
        self.body = Some((content_type, body.into()));
        self
    }
    fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }
    fn key(self, key: &str) -> Self {
        self.header("authorization", format!("Bearer {key}"))
    }
    fn method(mut self, m: &'static str) -> Self {
        self.method = m;
        self
    }
}

/// A documented answer: (path template, method, status, variant).
type Answer = (String, String, u16, String);

struct Spec {
    doc: Value,
}

impl Spec {
    fn load() -> anyhow::Result<Spec> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi.json");
        let text = std::fs::read_to_string(&path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let doc: Value = serde_json::from_str(&text)?;
        anyhow::ensure!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.1")), "not OpenAPI 3.1");
        Ok(Spec { doc })
    }

    /// Follow a local `$ref` (one level is all the spec uses, but loop anyway).
    fn deref<'a>(&'a self, mut v: &'a Value) -> &'a Value {
        while let Some(r) = v.get("$ref").and_then(Value::as_str) {
            let pointer = r.strip_prefix('#').unwrap_or_else(|| panic!("non-local $ref {r}"));
            v = self.doc.pointer(pointer).unwrap_or_else(|| panic!("dangling $ref {r}"));
        }
        v
    }

    /// The response object documented for an operation and status.
    fn response(&self, op: (&str, &str), status: u16) -> Option<&Value> {
        let r = if op.0 == "x-unrouted" {
            if unrouted_status(op.1) != Some(status) {
                return None;
            }
            self.doc["x-unrouted"].get(op.1)?
        } else {
            self.doc["paths"].get(op.0)?.get(op.1)?["responses"].get(status.to_string())?
        };
        Some(self.deref(r))
    }

    /// The error code a schema pins (`…Error` components), if it is one.
    fn pinned_code(&self, schema: &Value) -> Option<String> {
        let s = self.deref(schema);
        s.pointer("/properties/error/properties/code/const").and_then(Value::as_str).map(str::to_owned)
    }

    /// What a documented media type can answer: its error codes, or the
    /// media type itself for a non-error body.
    fn variants(&self, media: &str, schema: &Value) -> Vec<String> {
        let alternatives: Vec<&Value> = match schema.get("oneOf").and_then(Value::as_array) {
            Some(list) => list.iter().collect(),
            None => vec![schema],
        };
        let codes: Vec<String> = alternatives.iter().filter_map(|s| self.pinned_code(s)).collect();
        if codes.is_empty() { vec![media.to_owned()] } else { codes }
    }

    /// Every documented answer.
    fn answers(&self) -> BTreeSet<Answer> {
        let mut out = BTreeSet::new();
        let mut add = |path: &str, method: &str, status: u16, response: &Value| {
            let content = response["content"].as_object().expect("every response has content");
            for (media, m) in content {
                for v in self.variants(media, &m["schema"]) {
                    out.insert((path.to_owned(), method.to_owned(), status, v));
                }
            }
        };
        for (path, item) in self.doc["paths"].as_object().expect("paths") {
            for (method, op) in item.as_object().expect("path item") {
                for (status, r) in op["responses"].as_object().expect("responses") {
                    add(path, method, status.parse().expect("numeric status"), self.deref(r));
                }
            }
        }
        for (name, r) in self.doc["x-unrouted"].as_object().expect("x-unrouted") {
            if name != "description" {
                let status = unrouted_status(name).unwrap_or_else(|| panic!("unexpected x-unrouted entry {name}"));
                add("x-unrouted", name, status, self.deref(r));
            }
        }
        out
    }

    /// Validate `instance` against a documented schema, resolving
    /// `#/components/...` against the spec.
    fn validate(&self, schema: &Value, instance: &Value) -> Result<(), String> {
        let mut root = schema.as_object().cloned().unwrap_or_default();
        root.insert("components".to_owned(), self.doc["components"].clone());
        let validator = jsonschema::draft202012::new(&Value::Object(root))
            .map_err(|e| format!("the spec's schema is invalid: {e}"))?;
        let errors: Vec<String> =
            validator.iter_errors(instance).map(|e| format!("{e} (at {})", e.instance_path())).collect();
        if errors.is_empty() { Ok(()) } else { Err(errors.join("; ")) }
    }

    /// Does a concrete path match a documented template?
    fn template_for(&self, path: &str) -> Option<String> {
        let path = path.split('?').next().unwrap_or_default();
        self.doc["paths"].as_object()?.keys().find(|t| template_matches(t, path)).cloned()
    }
}

/// The status of each `x-unrouted` answer.
fn unrouted_status(name: &str) -> Option<u16> {
    match name {
        "unknownPath" => Some(404),
        "wrongMethod" => Some(405),
        _ => None,
    }
}

fn template_matches(template: &str, path: &str) -> bool {
    let (t, p): (Vec<&str>, Vec<&str>) = (template.split('/').collect(), path.split('/').collect());
    t.len() == p.len()
        && t.iter().zip(&p).all(|(t, p)| if t.starts_with('{') && t.ends_with('}') { !p.is_empty() } else { t == p })
}

struct Observed {
    status: u16,
    media: String,
    headers: reqwest::header::HeaderMap,
    text: String,
}

async fn send(addr: SocketAddr, c: &Case) -> anyhow::Result<Observed> {
    let method = reqwest::Method::from_bytes(c.method.as_bytes())?;
    let mut req = http().request(method, format!("http://{addr}{}", c.path));
    for (k, v) in &c.headers {
        req = req.header(*k, v);
    }
    if let Some((ct, body)) = &c.body {
        req = req.header("content-type", *ct).body(body.clone());
    }
    let r = req.send().await?;
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let media = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or_default().trim().to_ascii_lowercase())
        .unwrap_or_default();
    Ok(Observed { status, media, headers, text: r.text().await? })
}

/// Check one answer against the spec; the answer's key when it is documented.
fn check(spec: &Spec, c: &Case, o: &Observed) -> Result<Answer, String> {
    let what = format!("{} {} (as {:?}) answered {} {}: {}", c.method, c.path, c.via, o.status, o.media, o.text);
    let response = spec.response(c.op, o.status).ok_or_else(|| format!("undocumented status: {what}"))?;
    let documented = response["content"]
        .get(&o.media)
        .ok_or_else(|| format!("undocumented media type (documented: {}): {what}", response["content"]))?;
    let body = if o.media == "application/json" {
        serde_json::from_str(&o.text).map_err(|e| format!("body is not JSON ({e}): {what}"))?
    } else {
        Value::String(o.text.clone())
    };
    spec.validate(&documented["schema"], &body).map_err(|e| format!("body does not match the schema: {e}: {what}"))?;
    let variant =
        body.pointer("/error/code").and_then(Value::as_str).map(str::to_owned).unwrap_or_else(|| o.media.clone());
    if !spec.variants(&o.media, &documented["schema"]).contains(&variant) {
        return Err(format!("{variant} is not documented for this status: {what}"));
    }
    // Documented headers, required ones present and well-formed.
    for (name, h) in response["headers"].as_object().into_iter().flatten() {
        let h = spec.deref(h);
        match o.headers.get(name.as_str()) {
            Some(v) => {
                let v = Value::String(v.to_str().unwrap_or_default().to_owned());
                spec.validate(&h["schema"], &v).map_err(|e| format!("header {name}: {e}: {what}"))?;
            }
            None if h["required"] == json!(true) => return Err(format!("missing header {name}: {what}")),
            None => {}
        }
    }
    // What clients rely on, whatever the spec says.
    let header = |n: &str| o.headers.get(n).and_then(|v| v.to_str().ok()).map(str::to_owned);
    if o.status == 401 && header("www-authenticate").as_deref() != Some("Bearer") {
        return Err(format!("401 without WWW-Authenticate: Bearer: {what}"));
    }
    if matches!(variant.as_str(), "rate_limited" | "unavailable")
        && !header("retry-after").is_some_and(|s| s.parse::<u64>().is_ok_and(|n| n >= 1))
    {
        return Err(format!("{variant} without a Retry-After of at least 1 s: {what}"));
    }
    let (path, method) = (c.op.0.to_owned(), c.op.1.to_owned());
    Ok((path, method, o.status, variant))
}

/// A body of `n` bytes that is valid JSON.
fn big_body(n: usize) -> Vec<u8> {
    json!({ "channel": "news", "data": "x".repeat(n) }).to_string().into_bytes()
}

#[tokio::test]
async fn the_ingress_answers_exactly_as_docs_openapi_json_says() -> anyhow::Result<()> {
    let spec = Spec::load()?;

    let sys = System::start_with(
        2,
        2,
        &["--jwt-secret", SECRET, "--max-channels-per-connection", "2"],
        &["--max-body-bytes", "2048", "--max-batch", "3"],
    )
    .await?;
    let urls = sys.hub_urls();
    let keyed = ingress(&urls, &["--api-key", &format!("{ADMIN},{PUBLISHER}:publish")]).await?;
    let limited = ingress(&urls, &["--rate-limit-per-sec", "1", "--rate-limit-burst", "1"]).await?;
    let cors = ingress(&urls, &["--cors-allow-origin", "https://app.example"]).await?;
    // A frozen gateway, for confirmed sends that time out.
    let frozen_hub = hub_with(&["--confirm-timeout-ms", "200"]).await?;
    let frozen_urls = [hub_url(&frozen_hub)];
    let frozen_gw = gateway(&frozen_urls, &[]).await?;
    let frozen = ingress(&frozen_urls, &[]).await?;
    wait_ready(frozen_gw.addr("http")).await?;
    wait_ready(frozen.addr("http")).await?;
    let stuck = Client::connect(frozen_gw.addr("http"), "").await?;
    let stuck_number = stuck.connection.rsplit_once(':').expect("connection id").1.to_owned();
    let mut gone = hub().await?;
    let gone_url = hub_url(&gone);
    gone.kill().await;
    let down = ingress(&[gone_url], &[]).await?;
    wait_ready(keyed.addr("http")).await?;
    wait_ready(limited.addr("http")).await?;
    wait_ready(cors.addr("http")).await?;

    let user = |name: &str| token(SECRET, name, &["*"], 3600);
    let mut alice = Client::connect_as(sys.gw(0), &user("alice")).await?;
    let bob = Client::connect_as(sys.gw(1), &user("bob")).await?;
    let carol = Client::connect_as(sys.gw(0), &user("carol")).await?;
    let _dave = Client::connect_as(sys.gw(1), &user("dave")).await?;
    alice.subscribe("room").await?;
    let (a, b, c) = (alice.connection.clone(), bob.connection.clone(), carol.connection.clone());
    let b_number = b.rsplit_once(':').expect("connection id").1.to_owned();

    use Via::*;
    let publish = ("/publish", "post");
    let broadcast = ("/broadcast", "post");
    let send_ = ("/send", "post");
    let subscribe = ("/subscribe", "post");
    let unsubscribe = ("/unsubscribe", "post");
    let disconnect = ("/disconnect", "post");
    let batch = ("/batch", "post");
    let presence = ("/presence/{channel}", "get");
    let history = ("/history", "get");
    let stats = ("/stats", "get");
    let users = ("/users/{user}", "get");
    let seed = ("/", "get");
    let (healthz, readyz, metrics_) = (("/healthz", "get"), ("/readyz", "get"), ("/metrics", "get"));
    let json_ = "application/json";
    let text = "text/plain";

    // A valid body for each POST route, and a concrete path for each GET.
    let posts: Vec<((&str, &str), Value)> = vec![
        (publish, json!({ "channel": "room", "data": 1 })),
        (broadcast, json!({ "data": 1 })),
        (send_, json!({ "connection": b, "data": 1 })),
        (subscribe, json!({ "connection": a, "channel": "room" })),
        (unsubscribe, json!({ "connection": a, "channel": "elsewhere" })),
        (disconnect, json!({ "connection": "ghost:1" })),
        (batch, json!([{ "op": "publish", "channel": "room", "data": 1 }])),
    ];
    let gets: Vec<((&str, &str), &str)> = vec![
        (presence, "/presence/room"),
        (history, "/history?channel=room"),
        (stats, "/stats"),
        (users, "/users/alice"),
        (seed, "/?content=hi"),
    ];
    let admin_only = [subscribe, unsubscribe, disconnect, presence, history, stats, users];

    let mut cases = vec![
        // POST /publish
        case(publish, Open, "/publish", 200, json_).json(json!({ "channel": "room", "data": { "n": 1 } })),
        case(publish, Open, "/publish", 200, json_)
            .json(json!({ "channel": "room", "data": 2, "idempotency_key": "k-1" })),
        case(publish, Open, "/publish", 200, json_)
            .json(json!({ "channel": "room", "data": 2, "idempotency_key": "k-1" })),
        case(publish, Open, "/publish", 415, "unsupported_media_type")
            .raw("application/x-www-form-urlencoded", r#"{"channel":"x","data":0}"#),
        case(publish, Open, "/publish", 400, "invalid_request").json(json!({ "channel": "room" })),
        case(publish, Open, "/publish", 400, "invalid_request")
            .json(json!({ "channel": "room", "data": 1, "chanel": 1 })),
        case(publish, Open, "/publish", 400, "invalid_request")
            .json(json!({ "channel": "room", "data": 1, "idempotency_key": "k".repeat(129) })),
        case(publish, Open, "/publish", 400, "invalid_channel").json(json!({ "channel": "a b", "data": 1 })),
        case(publish, Open, "/publish", 400, "invalid_channel").json(json!({ "channel": "", "data": 1 })),
        case(publish, Open, "/publish", 413, "payload_too_large").raw("application/json", big_body(3000)),
        // POST /broadcast
        case(broadcast, Open, "/broadcast", 200, json_).json(json!({ "data": "all", "exclude": [a] })),
        case(broadcast, Open, "/broadcast", 400, "invalid_request").json(json!({ "data": 1, "exclude": ["garbage"] })),
        // POST /send
        case(send_, Open, "/send", 200, json_).json(json!({ "connection": b, "data": "to bob" })),
        case(send_, Open, "/send", 200, json_).json(json!({ "user": "alice", "data": "to alice", "exclude": [] })),
        case(send_, Open, "/send", 400, "invalid_request").json(json!({ "connection": b, "user": "bob", "data": 1 })),
        case(send_, Open, "/send", 400, "invalid_request").json(json!({ "data": 1 })),
        case(send_, Open, "/send", 404, "unknown_connection").json(json!({ "connection": "ghost:1", "data": 1 })),
        // POST /subscribe: alice has "room"; "orders" is her second and last.
        case(subscribe, Open, "/subscribe", 200, json_).json(json!({ "connection": a, "channel": "orders" })),
        case(subscribe, Open, "/subscribe", 429, "limit_exceeded").json(json!({ "connection": a, "channel": "third" })),
        case(subscribe, Open, "/subscribe", 400, "invalid_channel").json(json!({ "connection": a, "channel": "a/b" })),
        case(subscribe, Open, "/subscribe", 400, "invalid_request")
            .json(json!({ "connection": "garbage", "channel": "orders" })),
        case(subscribe, Open, "/subscribe", 404, "unknown_connection")
            .json(json!({ "connection": "ghost:1", "channel": "orders" })),
        case(subscribe, Open, "/subscribe", 404, "unknown_connection")
            .json(json!({ "connection": format!("{}:999999", alice.gateway), "channel": "orders" })),
        // POST /unsubscribe
        case(unsubscribe, Open, "/unsubscribe", 200, json_).json(json!({ "connection": a, "channel": "orders" })),
        case(unsubscribe, Open, "/unsubscribe", 400, "invalid_channel").json(json!({ "connection": a, "channel": "" })),
        case(unsubscribe, Open, "/unsubscribe", 400, "invalid_request").json(json!({ "connection": a })),
        case(unsubscribe, Open, "/unsubscribe", 404, "unknown_connection")
            .json(json!({ "connection": "ghost:1", "channel": "orders" })),
        // POST /disconnect
        case(disconnect, Open, "/disconnect", 200, json_)
            .json(json!({ "connection": c, "code": 4100, "reason": "account closed" })),
        case(disconnect, Open, "/disconnect", 200, json_).json(json!({ "user": "dave" })),
        case(disconnect, Open, "/disconnect", 200, json_).json(json!({ "user": "nobody" })),
        case(disconnect, Open, "/disconnect", 400, "invalid_request").json(json!({ "connection": a, "code": 1000 })),
        case(disconnect, Open, "/disconnect", 400, "invalid_request")
            .json(json!({ "connection": a, "reason": "r".repeat(121) })),
        case(disconnect, Open, "/disconnect", 400, "invalid_request").json(json!({ "connection": a, "user": "alice" })),
        case(disconnect, Open, "/disconnect", 404, "unknown_connection").json(json!({ "connection": "ghost:1" })),
        // POST /batch
        case(batch, Open, "/batch", 200, json_).json(json!([
            { "op": "publish", "channel": "room", "data": "b1" },
            { "op": "send", "connection": b, "data": "b2" },
            { "op": "fly" },
        ])),
        case(batch, Open, "/batch", 200, json_).json(json!([
            { "op": "subscribe", "connection": a, "channel": "orders" },
            { "op": "disconnect", "connection": "ghost:1" },
            { "op": "publish", "channel": "no way", "data": 1 },
        ])),
        case(batch, Open, "/batch", 200, json_).json(json!([])),
        case(batch, Keyed, "/batch", 200, json_)
            .key(PUBLISHER)
            .json(json!([{ "op": "broadcast", "data": 1 }, { "op": "unsubscribe", "connection": a, "channel": "x" }])),
        case(batch, Down, "/batch", 200, json_).json(json!([{ "op": "publish", "channel": "room", "data": 1 }])),
        case(batch, Open, "/batch", 400, "invalid_request").json(json!({ "op": "publish" })),
        case(batch, Open, "/batch", 400, "invalid_request").json(json!([{}, {}, {}, {}])),
        // GET /presence/{channel}
        case(presence, Open, "/presence/room", 200, json_),
        case(presence, Open, "/presence/room?limit=0", 200, json_),
        case(presence, Open, "/presence/nobody-here", 200, json_),
        case(presence, Open, "/presence/bad%20name", 400, "invalid_channel"),
        case(presence, Open, "/presence/room?limit=lots", 400, "invalid_request"),
        case(presence, Open, "/presence/room?limit=10001", 400, "invalid_request"),
        // GET /history
        case(history, Open, "/history?channel=room", 200, json_),
        case(history, Open, "/history?channel=room&limit=1", 200, json_),
        case(history, Open, "/history?channel=room&since=0123456789abcdef:1", 200, json_),
        case(history, Open, "/history?channel=room&since_epoch=0123456789abcdef&since_offset=0", 200, json_),
        case(history, Open, "/history?channel=nothing-published", 200, json_),
        case(history, Open, "/history", 400, "invalid_request"),
        case(history, Open, "/history?channel=bad%20name", 400, "invalid_channel"),
        case(history, Open, "/history?channel=room&since=no-colon", 400, "invalid_request"),
        case(history, Open, "/history?channel=room&since=e:x", 400, "invalid_request"),
        case(history, Open, "/history?channel=room&since_epoch=e", 400, "invalid_request"),
        case(history, Open, "/history?channel=room&limit=10001", 400, "invalid_request"),
        // GET /stats
        case(stats, Open, "/stats", 200, json_),
        case(stats, Keyed, "/stats", 200, json_).key(ADMIN),
        // GET /users/{user}
        case(users, Open, "/users/alice", 200, json_),
        case(users, Open, "/users/nobody", 200, json_),
        case(users, Open, "/users/no%20body", 400, "invalid_request"),
        // GET / (the seed's form)
        case(seed, Open, "/?content=hello", 200, text),
        case(seed, Open, format!("/?content=hi&to_worker_id={}&to_connection_id={b_number}", bob.gateway), 200, text),
        case(seed, Keyed, "/?content=hello", 200, text).key(PUBLISHER),
        case(seed, Open, "/", 400, "invalid_request"),
        case(seed, Open, "/?content=x&to_worker_id=gw-1", 400, "invalid_request"),
        case(seed, Open, format!("/?content=x&to_worker_id=other&to_connection_id={b}"), 400, "invalid_request"),
        case(seed, Open, "/?content=x&to_worker_id=ghost&to_connection_id=1", 404, "unknown_connection"),
        // Probes and metrics
        case(healthz, Open, "/healthz", 200, text),
        case(healthz, Keyed, "/healthz", 200, text),
        case(readyz, Open, "/readyz", 200, text),
        case(readyz, Down, "/readyz", 503, text),
        case(metrics_, Open, "/metrics", 200, text),
        case(metrics_, Keyed, "/metrics", 200, text),
        case(metrics_, Limited, "/metrics", 200, text),
        // No such route, or not with this method.
        case(("x-unrouted", "unknownPath"), Open, "/nope", 404, "not_found"),
        case(("x-unrouted", "unknownPath"), Keyed, "/publish/extra", 404, "not_found").method("POST"),
        case(("x-unrouted", "wrongMethod"), Open, "/publish", 405, "method_not_allowed"),
        case(("x-unrouted", "wrongMethod"), Keyed, "/stats", 405, "method_not_allowed").method("POST"),
        case(("x-unrouted", "wrongMethod"), Open, "/", 405, "method_not_allowed").method("DELETE"),
        case(("x-unrouted", "wrongMethod"), Open, "/healthz", 405, "method_not_allowed").method("PUT"),
    ];

    // What every POST route answers alike.
    for (op, body) in &posts {
        let b = body.to_string().into_bytes();
        cases.push(case(*op, Open, op.0, 400, "malformed_json").raw(json_, b[..b.len() - 1].to_vec()));
        cases.push(case(*op, Open, op.0, 400, "malformed_json").raw(json_, "not json"));
        cases.push(case(*op, Open, op.0, 413, "payload_too_large").raw(json_, big_body(2100)));
        cases.push(case(*op, Open, op.0, 415, "unsupported_media_type").raw("text/plain", b.clone()));
        cases.push(case(*op, Keyed, op.0, 401, "unauthorized").raw(json_, b.clone()));
        cases
            .push(case(*op, Keyed, op.0, 401, "unauthorized").key("not-a-configured-key-123456").raw(json_, b.clone()));
        cases.push(case(*op, Cors, op.0, 403, "forbidden").header("origin", FOREIGN_ORIGIN).raw(json_, b.clone()));
        cases.push(case(*op, Limited, op.0, 429, "rate_limited").raw(json_, b.clone()));
        if op.0 != "/batch" {
            cases.push(case(*op, Down, op.0, 503, "unavailable").raw(json_, b.clone()));
        }
    }
    // What every GET API route answers alike.
    for (op, path) in &gets {
        cases.push(case(*op, Keyed, *path, 401, "unauthorized"));
        cases.push(case(*op, Cors, *path, 403, "forbidden").header("origin", FOREIGN_ORIGIN));
        cases.push(case(*op, Limited, *path, 429, "rate_limited"));
        cases.push(case(*op, Down, *path, 503, "unavailable"));
    }
    for op in [healthz, readyz, metrics_] {
        cases.push(case(op, Cors, op.0, 403, "forbidden").header("origin", FOREIGN_ORIGIN));
    }
    // Confirmed sends to a connection whose gateway never answers.
    cases.push(
        case(send_, Frozen, "/send", 504, "confirm_timeout")
            .json(json!({ "connection": stuck.connection, "data": 1, "confirm": true })),
    );
    let frozen_seed = format!("/?content=x&to_worker_id={}&to_connection_id={stuck_number}&confirm=1", stuck.gateway);
    cases.push(case(seed, Frozen, frozen_seed, 504, "confirm_timeout"));
    // A publish key on an admin route.
    for op in admin_only {
        let path = gets.iter().find(|(g, _)| *g == op).map(|(_, p)| *p).unwrap_or(op.0);
        let mut c = case(op, Keyed, path, 403, "forbidden").key(PUBLISHER);
        if let Some((_, body)) = posts.iter().find(|(p, _)| *p == op) {
            c = c.json(body.clone());
        }
        cases.push(c);
    }

    let addr = |via: Via| match via {
        Open => sys.api(),
        Keyed => keyed.addr("http"),
        Limited => limited.addr("http"),
        Down => down.addr("http"),
        Cors => cors.addr("http"),
        Frozen => frozen.addr("http"),
    };
    frozen_gw.signal("STOP");
    let mut failures = Vec::new();
    let mut produced: BTreeMap<Answer, usize> = BTreeMap::new();
    for (i, c) in cases.iter().enumerate() {
        // The request must be for the operation it claims.
        let routed = spec.template_for(&c.path);
        let claims = match c.op.0 {
            "x-unrouted" if c.op.1 == "unknownPath" => routed.is_none(),
            "x-unrouted" => {
                routed.as_ref().is_some_and(|t| spec.doc["paths"][t].get(c.method.to_lowercase()).is_none())
            }
            template => routed.as_deref() == Some(template) && c.method == method_of(c.op.1),
        };
        assert!(claims, "case {i}: {} {} is not an instance of {:?}", c.method, c.path, c.op);
        // The limited ingress lets one request a second through: retry
        // until the limit answers (what passed is still checked).
        let tries = if matches!(c.via, Limited) && c.status == 429 { 5 } else { 1 };
        for attempt in 1..=tries {
            let o = send(addr(c.via), c).await?;
            let key = match check(&spec, c, &o) {
                Ok(key) => key,
                Err(e) => {
                    failures.push(format!("case {i}: {e}"));
                    break;
                }
            };
            *produced.entry(key.clone()).or_default() += 1;
            if (key.2, key.3.as_str()) == (c.status, c.variant) {
                break;
            }
            if attempt == tries {
                failures.push(format!(
                    "case {i}: {} {} (as {:?}) answered {} {}, expected {} {}: {}",
                    c.method, c.path, c.via, key.2, key.3, c.status, c.variant, o.text
                ));
            }
        }
    }

    frozen_gw.signal("CONT");
    drop(stuck);

    let documented = spec.answers();
    let missing: Vec<&Answer> = documented.iter().filter(|a| !produced.contains_key(*a)).collect();
    for a in &missing {
        failures.push(format!("documented but produced by no request: {a:?}"));
    }
    assert!(failures.is_empty(), "{} problems:\n{}", failures.len(), failures.join("\n"));
    // Sanity: the table is not empty and covers every operation.
    let ops: BTreeSet<(&str, &str)> = documented.iter().map(|a| (a.0.as_str(), a.1.as_str())).collect();
    assert!(ops.len() >= 16, "{ops:?}");
    Ok(())
}

#[test]
fn every_schema_and_reference_in_the_spec_resolves() -> anyhow::Result<()> {
    let spec = Spec::load()?;
    // Each component schema compiles, with its references resolved.
    for name in spec.doc["components"]["schemas"].as_object().expect("schemas").keys() {
        let schema = json!({ "$ref": format!("#/components/schemas/{name}") });
        spec.validate(&schema, &Value::Null).map(|_| ()).or_else(|e| {
            if e.starts_with("the spec's schema is invalid") { Err(anyhow::anyhow!("{name}: {e}")) } else { Ok(()) }
        })?;
    }
    // Every $ref anywhere points at something.
    fn walk(v: &Value, doc: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                if let Some(Value::String(r)) = m.get("$ref")
                    && r.strip_prefix('#').and_then(|p| doc.pointer(p)).is_none()
                {
                    out.push(r.clone());
                }
                m.values().for_each(|v| walk(v, doc, out));
            }
            Value::Array(a) => a.iter().for_each(|v| walk(v, doc, out)),
            _ => {}
        }
    }
    let mut dangling = Vec::new();
    walk(&spec.doc, &spec.doc, &mut dangling);
    assert!(dangling.is_empty(), "dangling references: {dangling:?}");
    // Each example validates against its schema.
    for (name, s) in spec.doc["components"]["schemas"].as_object().expect("schemas") {
        if let Some(example) = s.get("example") {
            let schema = json!({ "$ref": format!("#/components/schemas/{name}") });
            spec.validate(&schema, example).map_err(|e| anyhow::anyhow!("example of {name}: {e}"))?;
        }
    }
    // The error codes the schemas pin are exactly the ErrorCode enum.
    let pinned: BTreeSet<String> = spec.doc["components"]["schemas"]
        .as_object()
        .expect("schemas")
        .values()
        .filter_map(|s| spec.pinned_code(s))
        .collect();
    let codes: BTreeSet<String> = spec.doc["components"]["schemas"]["ErrorCode"]["enum"]
        .as_array()
        .expect("enum")
        .iter()
        .map(|c| c.as_str().expect("code").to_owned())
        .collect();
    assert_eq!(pinned, codes);
    Ok(())
}
