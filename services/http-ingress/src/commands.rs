//! The server API's commands, independent of the transport: each parses and
//! validates its input, calls the hubs, and answers a typed result or an
//! `ApiError`. The HTTP routes serialise the results as JSON (the shapes in
//! docs/api.md); the gRPC adapter maps the same structs field by field, so
//! a renamed field is a compile error, not a silent 0.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use serde::{Deserialize, Serialize, Serializer};
use serde_json::value::RawValue;

use pushmesh_common::ids::{Channel, ConnectionId, Topic, UserId};
use pushmesh_common::proto::{
    Broadcast, Confirmed, ConnectionChannel, Disconnect, HistoryRequest, PublishRequest, QueryOp, QueryRequest,
    QueryResponse, StatsQuery, publish_request::Target, query_op,
};

use crate::error::{ApiError, ErrorBody};
use crate::hubs::PublishError;
use crate::metrics::IngressMetrics;
use crate::relay::Relays;

/// Presence lists are cut to this many entries unless `limit` says fewer.
pub const DEFAULT_PRESENCE_LIMIT: u32 = 100;
/// Gateways report up to this many members each, so user counts are exact
/// up to it.
const PRESENCE_SCAN: u32 = 10_000;

pub struct Commands {
    pub hubs: Arc<Relays>,
    pub metrics: IngressMetrics,
}

// Results. Each serialises to the JSON docs/api.md shows.

/// The `"ok": true` of a success answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct True;

impl Serialize for True {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bool(true)
    }
}

/// A publish, broadcast or send a hub accepted.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Published {
    pub ok: True,
    /// Gateway streams the message was queued to.
    pub gateways: u32,
    /// Channel publishes: the message's stream position.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub epoch: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// The idempotency key matched an earlier publish: nothing was sent.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub duplicate: bool,
    /// A confirmed send: the connection's gateway said it got it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivered: Option<bool>,
}

/// A command that answers nothing but success.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct Done {
    pub ok: True,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Disconnected {
    pub ok: True,
    pub disconnected: u32,
    /// A user's connections: whether some gateway did not answer in time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partial: Option<bool>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ClientEntry {
    pub connection: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Presence {
    pub channel: String,
    pub connections: u64,
    pub users: u64,
    pub clients: Vec<ClientEntry>,
    pub partial: bool,
}

/// One kept message of a channel.
#[derive(Debug, Clone, Serialize)]
pub struct HistoryMessage {
    pub offset: u64,
    /// The published JSON value, as it was published.
    pub data: Box<RawValue>,
}

/// A channel's kept messages (`GET /history`).
#[derive(Debug, Clone, Serialize)]
pub struct History {
    pub channel: String,
    /// The stream's epoch and current offset (empty epoch: no stream).
    pub epoch: String,
    pub offset: u64,
    /// With `since`: whether `messages` are exactly those after it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recovered: Option<bool>,
    pub messages: Vec<HistoryMessage>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct GatewayStats {
    pub gateway: String,
    pub connections: u64,
    pub channels: u64,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Stats {
    pub connections: u64,
    pub channels: u64,
    pub gateways: Vec<GatewayStats>,
    pub partial: bool,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct UserPresence {
    pub user: String,
    pub online: bool,
    pub connections: Vec<String>,
    pub partial: bool,
}

/// What one command of a batch answered.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum Outcome {
    Published(Published),
    Done(Done),
    Disconnected(Disconnected),
}

#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum BatchItem {
    Ok(Outcome),
    Err(ErrorBody),
}

#[derive(Debug, Clone, Serialize)]
pub struct BatchResults {
    pub results: Vec<BatchItem>,
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
    /// To a connection: answer once its gateway said whether it got it.
    #[serde(default)]
    pub(crate) confirm: bool,
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
    pub async fn publish(&self, b: PublishBody) -> Result<Published, ApiError> {
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
        self.route(&Topic::Channel(ch), "channel", req).await
    }

    pub async fn broadcast(&self, b: BroadcastBody) -> Result<Published, ApiError> {
        let exclude = exclude_list(&b.exclude)?;
        let req = PublishRequest {
            target: Some(Target::Broadcast(Broadcast {})),
            data: data_bytes(&b.data)?,
            exclude,
            ..Default::default()
        };
        self.route(&Topic::Broadcast, "broadcast", req).await
    }

    pub async fn send(&self, b: SendBody) -> Result<Published, ApiError> {
        let exclude = exclude_list(&b.exclude)?;
        match one_of(b.connection, b.user, "send")? {
            Target::Connection(c) => self.send_to_connection(&c, data_bytes(&b.data)?, b.confirm).await,
            Target::User(_) if b.confirm => Err(ApiError::InvalidRequest(
                "confirm is for sends to one connection; a user's connections are not confirmed".to_owned(),
            )),
            Target::User(u) => {
                let u = user(u)?;
                let req = PublishRequest {
                    target: Some(Target::User(u.to_string())),
                    data: data_bytes(&b.data)?,
                    exclude,
                    ..Default::default()
                };
                self.route(&Topic::User(u), "user", req).await
            }
            _ => unreachable!("one_of returns connection or user"),
        }
    }

    /// A direct send. With `confirm`, answered once the connection's gateway
    /// said whether it got it: 404 when it has no such connection, 504 when
    /// it did not say in time (it may or may not have been delivered).
    pub async fn send_to_connection(&self, conn: &str, data: Bytes, confirm: bool) -> Result<Published, ApiError> {
        let id = connection(conn)?;
        let req = PublishRequest {
            target: Some(Target::Connection(id.to_string())),
            data,
            exclude: Vec::new(),
            confirm,
            ..Default::default()
        };
        let published = self.route(&Topic::Gateway(id.gateway().clone()), "connection", req).await?;
        match published.delivered {
            Some(false) => Err(ApiError::UnknownConnection(format!(
                "connection {id} is not connected: its gateway has no such connection"
            ))),
            _ => Ok(published),
        }
    }

    pub async fn broadcast_data(&self, data: Bytes) -> Result<Published, ApiError> {
        let req = PublishRequest {
            target: Some(Target::Broadcast(Broadcast {})),
            data,
            exclude: Vec::new(),
            ..Default::default()
        };
        self.route(&Topic::Broadcast, "broadcast", req).await
    }

    pub async fn subscribe(&self, b: MembershipBody, subscribe: bool) -> Result<Done, ApiError> {
        let id = connection(&b.connection)?;
        let ch = channel(b.channel)?;
        let cc = ConnectionChannel { connection: id.to_string(), channel: ch.as_str().to_owned() };
        let op = if subscribe { query_op::Op::Subscribe(cc) } else { query_op::Op::Unsubscribe(cc) };
        let resp = self.ask(Some(&id), op, 0).await?;
        let reply = single_answer(&resp, &id)?;
        if reply.matched == 0 {
            return Err(ApiError::UnknownConnection(format!("connection {id} is not connected")));
        }
        Ok(Done { ok: True })
    }

    pub async fn disconnect(&self, b: DisconnectBody) -> Result<Disconnected, ApiError> {
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
                Ok(Disconnected { ok: True, disconnected: reply.matched, partial: None })
            }
            Target::User(u) => {
                let u = user(u)?;
                let d = Disconnect { connection: String::new(), user: u.to_string(), code, reason };
                let resp = self.ask(None, query_op::Op::Disconnect(d), 0).await?;
                let n: u32 = resp.answers.iter().filter_map(|a| a.reply.as_ref()).map(|r| r.matched).sum();
                Ok(Disconnected { ok: True, disconnected: n, partial: Some(partial(&resp)) })
            }
            _ => unreachable!("one_of returns connection or user"),
        }
    }

    pub async fn presence(&self, name: String, limit: Option<u32>) -> Result<Presence, ApiError> {
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
                    let user = (!c.user.is_empty()).then(|| c.user.clone());
                    clients.push(ClientEntry { connection: c.connection.clone(), user });
                }
            }
        }
        Ok(Presence {
            channel: ch.as_str().to_owned(),
            connections,
            users: users.len() as u64,
            clients,
            partial: partial(&resp),
        })
    }

    /// A channel's kept messages after `since` (or from the oldest kept),
    /// at most `limit` (0 or none: all kept), oldest first.
    pub async fn history(
        &self,
        name: String,
        since: Option<(String, u64)>,
        limit: Option<u32>,
    ) -> Result<History, ApiError> {
        let ch = channel(name)?;
        let req = HistoryRequest {
            channel: ch.as_str().to_owned(),
            from_oldest: since.is_none(),
            limit: limit.unwrap_or(0),
            epoch: since.as_ref().map(|s| s.0.clone()).unwrap_or_default(),
            offset: since.as_ref().map_or(0, |s| s.1),
        };
        let resp = self.hubs.pool().history(&Topic::Channel(ch.clone()).wire(), req).await?;
        let messages = resp
            .messages
            .into_iter()
            .map(|d| {
                // Validated JSON when it was published; kept as it came.
                let text = String::from_utf8_lossy(&d.data).into_owned();
                let data = RawValue::from_string(text.clone())
                    .or_else(|_| RawValue::from_string(serde_json::Value::String(text).to_string()))
                    .map_err(|e| ApiError::Internal(format!("history entry {} is not JSON: {e}", d.offset)))?;
                Ok(HistoryMessage { offset: d.offset, data })
            })
            .collect::<Result<_, ApiError>>()?;
        Ok(History {
            channel: ch.as_str().to_owned(),
            epoch: resp.epoch,
            offset: resp.top,
            recovered: since.is_some().then_some(resp.recovered),
            messages,
        })
    }

    pub async fn stats(&self) -> Result<Stats, ApiError> {
        let resp = self.ask(None, query_op::Op::Stats(StatsQuery {}), 0).await?;
        let mut total = 0u64;
        let mut channels = HashSet::new();
        let mut gateways = Vec::new();
        for a in &resp.answers {
            let Some(r) = &a.reply else { continue };
            total += u64::from(r.connections);
            channels.extend(r.channels.iter().cloned());
            gateways.push(GatewayStats {
                gateway: a.gateway.clone(),
                connections: u64::from(r.connections),
                channels: r.channels.len() as u64,
            });
        }
        gateways.sort_by(|a, b| a.gateway.cmp(&b.gateway));
        Ok(Stats { connections: total, channels: channels.len() as u64, gateways, partial: partial(&resp) })
    }

    pub async fn user(&self, id: String) -> Result<UserPresence, ApiError> {
        let u = user(id)?;
        let resp = self.ask(None, query_op::Op::UserConnections(u.to_string()), PRESENCE_SCAN).await?;
        let mut connections: Vec<String> = resp
            .answers
            .iter()
            .filter_map(|a| a.reply.as_ref())
            .flat_map(|r| r.clients.iter().map(|c| c.connection.clone()))
            .collect();
        connections.sort_unstable();
        Ok(UserPresence {
            user: u.as_str().to_owned(),
            online: !connections.is_empty(),
            connections,
            partial: partial(&resp),
        })
    }

    /// One command of a `/batch`, dispatched on its `op`.
    pub async fn batch_one(&self, raw: &RawValue, admin: bool) -> Result<Outcome, ApiError> {
        let body = raw.get().as_bytes();
        let OpOnly { op } = parse(body)?;
        if !admin && matches!(op.as_deref(), Some("subscribe" | "unsubscribe" | "disconnect")) {
            return Err(ApiError::Forbidden(format!("op {:?} needs an admin key", op.unwrap_or_default())));
        }
        match op.as_deref() {
            Some("publish") => self.publish(parse(body)?).await.map(Outcome::Published),
            Some("broadcast") => self.broadcast(parse(body)?).await.map(Outcome::Published),
            Some("send") => self.send(parse(body)?).await.map(Outcome::Published),
            Some("subscribe") => self.subscribe(parse(body)?, true).await.map(Outcome::Done),
            Some("unsubscribe") => self.subscribe(parse(body)?, false).await.map(Outcome::Done),
            Some("disconnect") => self.disconnect(parse(body)?).await.map(Outcome::Disconnected),
            Some(other) => Err(ApiError::InvalidRequest(format!(
                "unknown op {:?}; expected publish, broadcast, send, subscribe, unsubscribe or disconnect",
                pushmesh_common::ids::truncate(other, 40)
            ))),
            None => Err(ApiError::InvalidRequest("missing field `op`".to_owned())),
        }
    }

    /// Every command of a `/batch`; a bad one fails alone.
    ///
    /// Publishes, broadcasts and sends are started in order and run
    /// together: the hub streams and the sequencer keep one target's
    /// messages in the order they were started, and a batch costs about one
    /// round trip per hub instead of one per command. A subscribe,
    /// unsubscribe or disconnect waits for everything before it, and
    /// everything after it waits for it, so "subscribe, then publish" still
    /// reaches the new subscriber.
    pub async fn batch(&self, commands: Vec<&RawValue>, admin: bool) -> BatchResults {
        let mut results = Vec::with_capacity(commands.len());
        let mut run: Vec<&RawValue> = Vec::new();
        for raw in commands {
            let barrier = matches!(
                parse::<OpOnly>(raw.get().as_bytes()).ok().and_then(|o| o.op).as_deref(),
                Some("subscribe" | "unsubscribe" | "disconnect")
            );
            if barrier {
                results.extend(self.batch_run(std::mem::take(&mut run), admin).await);
                results.extend(self.batch_run(vec![raw], admin).await);
            } else {
                run.push(raw);
            }
        }
        results.extend(self.batch_run(run, admin).await);
        BatchResults { results }
    }

    async fn batch_run(&self, run: Vec<&RawValue>, admin: bool) -> Vec<BatchItem> {
        let started = run.into_iter().map(|raw| async move {
            match self.batch_one(raw, admin).await {
                Ok(v) => BatchItem::Ok(v),
                Err(e) => BatchItem::Err(e.body()),
            }
        });
        futures_util::future::join_all(started).await
    }

    /// Publish through the hubs, with the metrics every publish records.
    async fn route(&self, to: &Topic, target: &'static str, req: PublishRequest) -> Result<Published, ApiError> {
        let started = Instant::now();
        let (label, out) = match self.hubs.publish(&to.wire(), req).await {
            Ok(resp) => {
                self.metrics.publish_duration.with_label_values(&[target]).observe(started.elapsed().as_secs_f64());
                let positioned = !resp.epoch.is_empty();
                let published = Published {
                    ok: True,
                    gateways: resp.gateways,
                    offset: positioned.then_some(resp.offset),
                    epoch: positioned.then_some(resp.epoch),
                    duplicate: resp.duplicate,
                    delivered: None,
                };
                match Confirmed::try_from(resp.confirmed).unwrap_or(Confirmed::Unspecified) {
                    Confirmed::Unspecified => ("ok", Ok(published)),
                    Confirmed::Delivered => ("ok", Ok(Published { delivered: Some(true), ..published })),
                    Confirmed::UnknownConnection => ("ok", Ok(Published { delivered: Some(false), ..published })),
                    Confirmed::Timeout => (
                        "unconfirmed",
                        Err(ApiError::ConfirmTimeout(
                            "the connection's gateway did not confirm the send in time; it may or may not have been delivered"
                                .to_owned(),
                        )),
                    ),
                }
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
            Some(id) => (Topic::Gateway(id.gateway().clone()), id.gateway().to_string()),
            None => (Topic::Broadcast, String::new()),
        };
        let req = QueryRequest { op: Some(QueryOp { op: Some(op) }), gateway, limit };
        Ok(self.hubs.pool().query(&key.wire(), req).await?)
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
            PublishError::TooLarge(msg) => ApiError::MessageTooLarge(msg),
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
