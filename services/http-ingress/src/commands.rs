//! The server API's commands, independent of the transport: each parses and
//! validates its input, calls the hubs, and answers a JSON value or an
//! `ApiError`. The HTTP routes (and `/batch`) are thin adapters over these.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};

use pushmesh_common::ids::{Channel, ConnectionId, UserId, topic};
use pushmesh_common::proto::{
    Broadcast, ConnectionChannel, Disconnect, HistoryRequest, PublishRequest, QueryOp, QueryRequest, QueryResponse,
    StatsQuery, publish_request::Target, query_op,
};

use crate::error::ApiError;
use crate::hubs::{HubPool, PublishError};
use crate::metrics::IngressMetrics;

/// Presence lists are cut to this many entries unless `limit` says fewer.
pub const DEFAULT_PRESENCE_LIMIT: u32 = 100;
/// Gateways report up to this many members each, so user counts are exact
/// up to it.
const PRESENCE_SCAN: u32 = 10_000;

pub struct Commands {
    pub hubs: Arc<HubPool>,
    pub metrics: IngressMetrics,
}

// Bodies. `deny_unknown_fields` turns a typo into an error instead of a
// silently ignored field. `op` is there for `/batch`, ignored elsewhere.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishBody {
    pub(crate) channel: String,
    pub(crate) data: Box<RawValue>,
    /// A retried publish with the same key is not delivered twice (while
    /// the first is in the channel's history).
    pub(crate) idempotency_key: Option<String>,
    #[serde(default, rename = "op")]
    pub(crate) _op: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BroadcastBody {
    pub(crate) data: Box<RawValue>,
    #[serde(default)]
    pub(crate) exclude: Vec<String>,
    #[serde(default, rename = "op")]
    pub(crate) _op: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendBody {
    pub(crate) connection: Option<String>,
    pub(crate) user: Option<String>,
    pub(crate) data: Box<RawValue>,
    #[serde(default)]
    pub(crate) exclude: Vec<String>,
    #[serde(default, rename = "op")]
    pub(crate) _op: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MembershipBody {
    pub(crate) connection: String,
    pub(crate) channel: String,
    #[serde(default, rename = "op")]
    pub(crate) _op: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DisconnectBody {
    pub(crate) connection: Option<String>,
    pub(crate) user: Option<String>,
    pub(crate) code: Option<u32>,
    pub(crate) reason: Option<String>,
    #[serde(default, rename = "op")]
    pub(crate) _op: Option<String>,
}

#[derive(Deserialize)]
struct OpOnly {
    op: Option<String>,
}

pub fn parse<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(ApiError::from_json)
}

fn data_bytes(data: &RawValue) -> Result<Bytes, ApiError> {
    let depth = json_depth(data.get());
    if depth > MAX_DATA_DEPTH {
        return Err(ApiError::InvalidRequest(format!(
            "data is nested {depth} levels deep; the limit is {MAX_DATA_DEPTH}"
        )));
    }
    Ok(Bytes::copy_from_slice(data.get().as_bytes()))
}

fn connection(id: &str) -> Result<ConnectionId, ApiError> {
    ConnectionId::parse(id).map_err(|e| ApiError::InvalidRequest(e.to_string()))
}

fn channel(name: String) -> Result<Channel, ApiError> {
    Channel::new(name).map_err(|e| ApiError::InvalidChannel(e.to_string()))
}

fn user(id: String) -> Result<UserId, ApiError> {
    UserId::new(id).map_err(|e| ApiError::InvalidRequest(e.to_string()))
}

fn exclude_list(ids: &[String]) -> Result<Vec<String>, ApiError> {
    ids.iter()
        .map(|c| ConnectionId::parse(c).map(|c| c.to_string()))
        .collect::<Result<_, _>>()
        .map_err(|e| ApiError::InvalidRequest(format!("exclude: {e}")))
}

fn one_of(connection: Option<String>, user: Option<String>, what: &str) -> Result<Target, ApiError> {
    match (connection, user) {
        (Some(c), None) => Ok(Target::Connection(c)),
        (None, Some(u)) => Ok(Target::User(u)),
        (Some(_), Some(_)) => {
            Err(ApiError::InvalidRequest(format!("{what}: give either \"connection\" or \"user\", not both")))
        }
        (None, None) => Err(ApiError::InvalidRequest(format!(
            "{what}: missing field `connection` (an id from a welcome frame) or `user`"
        ))),
    }
}

impl Commands {
    pub async fn publish(&self, b: PublishBody) -> Result<Value, ApiError> {
        let ch = channel(b.channel)?;
        let idempotency_key = b.idempotency_key.unwrap_or_default();
        if idempotency_key.len() > 128 {
            return Err(ApiError::InvalidRequest("idempotency_key is longer than 128 bytes".to_owned()));
        }
        let req = PublishRequest {
            target: Some(Target::Channel(ch.as_str().to_owned())),
            data: data_bytes(&b.data)?,
            idempotency_key,
            ..Default::default()
        };
        self.route(&ch.topic(), "channel", req).await
    }

    pub async fn broadcast(&self, b: BroadcastBody) -> Result<Value, ApiError> {
        let exclude = exclude_list(&b.exclude)?;
        let req = PublishRequest {
            target: Some(Target::Broadcast(Broadcast {})),
            data: data_bytes(&b.data)?,
            exclude,
            ..Default::default()
        };
        self.route(topic::BROADCAST, "broadcast", req).await
    }

    pub async fn send(&self, b: SendBody) -> Result<Value, ApiError> {
        let exclude = exclude_list(&b.exclude)?;
        match one_of(b.connection, b.user, "send")? {
            Target::Connection(c) => self.send_to_connection(&c, data_bytes(&b.data)?).await,
            Target::User(u) => {
                let u = user(u)?;
                let req = PublishRequest {
                    target: Some(Target::User(u.to_string())),
                    data: data_bytes(&b.data)?,
                    exclude,
                    ..Default::default()
                };
                self.route(&u.topic(), "user", req).await
            }
            _ => unreachable!("one_of returns connection or user"),
        }
    }

    pub async fn send_to_connection(&self, conn: &str, data: Bytes) -> Result<Value, ApiError> {
        let id = connection(conn)?;
        let req = PublishRequest {
            target: Some(Target::Connection(id.to_string())),
            data,
            exclude: Vec::new(),
            ..Default::default()
        };
        self.route(&id.gateway().topic(), "connection", req).await
    }

    pub async fn broadcast_data(&self, data: Bytes) -> Result<Value, ApiError> {
        let req = PublishRequest {
            target: Some(Target::Broadcast(Broadcast {})),
            data,
            exclude: Vec::new(),
            ..Default::default()
        };
        self.route(topic::BROADCAST, "broadcast", req).await
    }

    pub async fn subscribe(&self, b: MembershipBody, subscribe: bool) -> Result<Value, ApiError> {
        let id = connection(&b.connection)?;
        let ch = channel(b.channel)?;
        let cc = ConnectionChannel { connection: id.to_string(), channel: ch.as_str().to_owned() };
        let op = if subscribe { query_op::Op::Subscribe(cc) } else { query_op::Op::Unsubscribe(cc) };
        let resp = self.ask(Some(&id), op, 0).await?;
        let reply = single_answer(&resp, &id)?;
        if reply.matched == 0 {
            return Err(ApiError::UnknownConnection(format!("connection {id} is not connected")));
        }
        Ok(json!({ "ok": true }))
    }

    pub async fn disconnect(&self, b: DisconnectBody) -> Result<Value, ApiError> {
        let code = b.code.unwrap_or(4000);
        if !(4000..5000).contains(&code) {
            return Err(ApiError::InvalidRequest(format!("code {code} is out of range; use 4000 to 4999")));
        }
        let reason = b.reason.unwrap_or_default();
        if reason.len() > 120 {
            return Err(ApiError::InvalidRequest("reason is longer than 120 bytes (a close frame's limit)".to_owned()));
        }
        match one_of(b.connection, b.user, "disconnect")? {
            Target::Connection(c) => {
                let id = connection(&c)?;
                let d = Disconnect { connection: id.to_string(), user: String::new(), code, reason };
                let resp = self.ask(Some(&id), query_op::Op::Disconnect(d), 0).await?;
                let reply = single_answer(&resp, &id)?;
                if reply.matched == 0 {
                    return Err(ApiError::UnknownConnection(format!("connection {id} is not connected")));
                }
                Ok(json!({ "ok": true, "disconnected": reply.matched }))
            }
            Target::User(u) => {
                let u = user(u)?;
                let d = Disconnect { connection: String::new(), user: u.to_string(), code, reason };
                let resp = self.ask(None, query_op::Op::Disconnect(d), 0).await?;
                let n: u32 = resp.answers.iter().filter_map(|a| a.reply.as_ref()).map(|r| r.matched).sum();
                Ok(json!({ "ok": true, "disconnected": n, "partial": partial(&resp) }))
            }
            _ => unreachable!("one_of returns connection or user"),
        }
    }

    pub async fn presence(&self, name: String, limit: Option<u32>) -> Result<Value, ApiError> {
        let ch = channel(name)?;
        let limit = limit.unwrap_or(DEFAULT_PRESENCE_LIMIT);
        let resp = self.ask(None, query_op::Op::Presence(ch.as_str().to_owned()), PRESENCE_SCAN).await?;
        let mut connections = 0u64;
        let mut users = HashSet::new();
        let mut clients = Vec::new();
        for reply in resp.answers.iter().filter_map(|a| a.reply.as_ref()) {
            connections += u64::from(reply.matched);
            for c in &reply.clients {
                if !c.user.is_empty() {
                    users.insert(c.user.clone());
                }
                if clients.len() < limit as usize {
                    let mut entry = json!({ "connection": c.connection });
                    if !c.user.is_empty() {
                        entry["user"] = json!(c.user);
                    }
                    clients.push(entry);
                }
            }
        }
        Ok(json!({
            "channel": ch.as_str(),
            "connections": connections,
            "users": users.len(),
            "clients": clients,
            "partial": partial(&resp),
        }))
    }

    /// A channel's kept messages after `since` (or from the oldest kept),
    /// at most `limit` (0 or none: all kept), oldest first.
    pub async fn history(
        &self,
        name: String,
        since: Option<(String, u64)>,
        limit: Option<u32>,
    ) -> Result<Value, ApiError> {
        let ch = channel(name)?;
        let req = HistoryRequest {
            channel: ch.as_str().to_owned(),
            from_oldest: since.is_none(),
            limit: limit.unwrap_or(0),
            epoch: since.as_ref().map(|s| s.0.clone()).unwrap_or_default(),
            offset: since.as_ref().map_or(0, |s| s.1),
        };
        let resp = self.hubs.history(&ch.topic(), req).await?;
        let messages: Vec<Value> = resp
            .messages
            .iter()
            .map(|d| {
                let data = serde_json::from_slice::<Value>(&d.data)
                    .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&d.data).into_owned()));
                json!({ "offset": d.offset, "data": data })
            })
            .collect();
        let mut v = json!({ "channel": ch.as_str(), "epoch": resp.epoch, "offset": resp.top, "messages": messages });
        if since.is_some() {
            v["recovered"] = json!(resp.recovered);
        }
        Ok(v)
    }

    pub async fn stats(&self) -> Result<Value, ApiError> {
        let resp = self.ask(None, query_op::Op::Stats(StatsQuery {}), 0).await?;
        let mut total = 0u64;
        let mut channels = HashSet::new();
        let mut gateways = Vec::new();
        for a in &resp.answers {
            let Some(r) = &a.reply else { continue };
            total += u64::from(r.connections);
            channels.extend(r.channels.iter().cloned());
            gateways.push(json!({ "gateway": a.gateway, "connections": r.connections, "channels": r.channels.len() }));
        }
        gateways.sort_by(|a, b| a["gateway"].as_str().cmp(&b["gateway"].as_str()));
        Ok(json!({ "connections": total, "channels": channels.len(), "gateways": gateways, "partial": partial(&resp) }))
    }

    pub async fn user(&self, id: String) -> Result<Value, ApiError> {
        let u = user(id)?;
        let resp = self.ask(None, query_op::Op::UserConnections(u.to_string()), PRESENCE_SCAN).await?;
        let mut conns: Vec<&str> = resp
            .answers
            .iter()
            .filter_map(|a| a.reply.as_ref())
            .flat_map(|r| r.clients.iter().map(|c| c.connection.as_str()))
            .collect();
        conns.sort_unstable();
        Ok(json!({ "user": u.as_str(), "online": !conns.is_empty(), "connections": conns, "partial": partial(&resp) }))
    }

    /// One command of a `/batch`, dispatched on its `op`.
    pub async fn batch_one(&self, raw: &RawValue, admin: bool) -> Result<Value, ApiError> {
        let body = raw.get().as_bytes();
        let OpOnly { op } = parse(body)?;
        if !admin && matches!(op.as_deref(), Some("subscribe" | "unsubscribe" | "disconnect")) {
            return Err(ApiError::Forbidden(format!("op {:?} needs an admin key", op.unwrap_or_default())));
        }
        match op.as_deref() {
            Some("publish") => self.publish(parse(body)?).await,
            Some("broadcast") => self.broadcast(parse(body)?).await,
            Some("send") => self.send(parse(body)?).await,
            Some("subscribe") => self.subscribe(parse(body)?, true).await,
            Some("unsubscribe") => self.subscribe(parse(body)?, false).await,
            Some("disconnect") => self.disconnect(parse(body)?).await,
            Some(other) => Err(ApiError::InvalidRequest(format!(
                "unknown op {:?}; expected publish, broadcast, send, subscribe, unsubscribe or disconnect",
                pushmesh_common::ids::truncate(other, 40)
            ))),
            None => Err(ApiError::InvalidRequest("missing field `op`".to_owned())),
        }
    }

    /// Publish through the hubs, with the metrics every publish records.
    async fn route(&self, key: &str, target: &'static str, req: PublishRequest) -> Result<Value, ApiError> {
        let started = Instant::now();
        let (label, out) = match self.hubs.publish(key, req).await {
            Ok(resp) => {
                self.metrics.publish_duration.with_label_values(&[target]).observe(started.elapsed().as_secs_f64());
                let mut v = json!({ "ok": true, "gateways": resp.gateways });
                if !resp.epoch.is_empty() {
                    v["epoch"] = json!(resp.epoch);
                    v["offset"] = json!(resp.offset);
                }
                if resp.duplicate {
                    v["duplicate"] = json!(true);
                }
                ("ok", Ok(v))
            }
            Err(e) => {
                let label = if matches!(e, PublishError::Unavailable(_)) { "unavailable" } else { "rejected" };
                (label, Err(e.into()))
            }
        };
        self.metrics.publishes.with_label_values(&[target, label]).inc();
        out
    }

    /// Ask one connection's gateway, or every gateway.
    async fn ask(&self, owner: Option<&ConnectionId>, op: query_op::Op, limit: u32) -> Result<QueryResponse, ApiError> {
        let (key, gateway) = match owner {
            Some(id) => (id.gateway().topic(), id.gateway().to_string()),
            None => (topic::BROADCAST.to_owned(), String::new()),
        };
        let req = QueryRequest { op: Some(QueryOp { op: Some(op) }), gateway, limit };
        Ok(self.hubs.query(&key, req).await?)
    }
}

fn partial(resp: &QueryResponse) -> bool {
    (resp.answers.len() as u32) < resp.asked
}

/// The answer of the one gateway asked about `id`, with its refusal (if
/// any) as an error.
fn single_answer<'a>(
    resp: &'a QueryResponse,
    id: &ConnectionId,
) -> Result<&'a pushmesh_common::proto::QueryReply, ApiError> {
    let reply = resp
        .answers
        .first()
        .and_then(|a| a.reply.as_ref())
        .ok_or_else(|| ApiError::Unavailable(format!("gateway {} did not answer in time", id.gateway())))?;
    match reply.error_code.as_str() {
        "" => Ok(reply),
        "limit_exceeded" => Err(ApiError::LimitExceeded(reply.error.clone())),
        "unavailable" => Err(ApiError::Unavailable(reply.error.clone())),
        _ => Err(ApiError::InvalidRequest(reply.error.clone())),
    }
}

impl From<PublishError> for ApiError {
    fn from(e: PublishError) -> Self {
        match e {
            PublishError::Rejected(status) => ApiError::InvalidRequest(status.message().to_owned()),
            PublishError::NotFound(msg) => ApiError::UnknownConnection(msg),
            PublishError::Unavailable(msg) => ApiError::Unavailable(format!("no hub accepted the request: {msg}")),
        }
    }
}

/// Deepest nesting of arrays and objects a published `data` may have.
/// Valid JSON, but deeper structures crash or stall many client parsers.
pub const MAX_DATA_DEPTH: usize = 64;

/// The nesting depth of a JSON text (already known to be valid JSON).
pub fn json_depth(text: &str) -> usize {
    let (mut depth, mut max, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for b in text.bytes() {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                max = max.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

#[cfg(test)]
mod tests {
    use super::json_depth;

    #[test]
    fn depth_ignores_brackets_in_strings() {
        assert_eq!(json_depth("1"), 0);
        assert_eq!(json_depth(r#"{"a":[1,{"b":2}]}"#), 3);
        assert_eq!(json_depth(r#"["[[[\"]]]"]"#), 1);
    }
}

#[cfg(test)]
mod fuzz {
    //! Property tests standing in for fuzzing the API's JSON bodies.
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn arbitrary_bodies_are_answered_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = parse::<PublishBody>(&bytes);
            let _ = parse::<BroadcastBody>(&bytes);
            let _ = parse::<SendBody>(&bytes);
            let _ = parse::<MembershipBody>(&bytes);
            let _ = parse::<DisconnectBody>(&bytes);
            let _ = parse::<Vec<&RawValue>>(&bytes);
        }

        #[test]
        fn depth_matches_nesting(n in 0usize..200) {
            let text = format!("{}1{}", "[".repeat(n), "]".repeat(n));
            prop_assert_eq!(json_depth(&text), n);
        }

        #[test]
        fn depth_never_panics(s in "\\PC{0,300}") {
            let _ = json_depth(&s);
        }
    }
}
