//! The HTTP API, as warp filters: one function per route, each parsing its
//! body strictly (unknown fields are errors, so a typo is reported instead
//! of silently ignored) and answering `{"ok":true,...}` or an `ApiError`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use serde::Deserialize;
use serde_json::value::RawValue;
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

use pushmesh_common::health::Health;
use pushmesh_common::ids::{Channel, ConnectionId, topic};
use pushmesh_common::proto::{Broadcast, PublishRequest, publish_request::Target};

use crate::error::ApiError;
use crate::hubs::{HubPool, PublishError};
use crate::metrics::IngressMetrics;

pub struct State {
    pub hubs: Arc<HubPool>,
    pub metrics: IngressMetrics,
    pub max_body: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishBody {
    channel: String,
    data: Box<RawValue>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BroadcastBody {
    data: Box<RawValue>,
    #[serde(default)]
    exclude: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SendBody {
    connection: Option<String>,
    user: Option<String>,
    data: Box<RawValue>,
}

/// Every route, with errors turned into JSON responses.
pub fn api(state: Arc<State>, health: Health) -> impl Filter<Extract = (impl Reply,), Error = Infallible> + Clone {
    let admin = pushmesh_common::admin::routes(health, state.metrics.registry.clone());
    let publish = post_json("publish", state.clone())
        .then(|s: Arc<State>, body: Bytes| async move { respond(handle_publish(&s, &body).await) });
    let broadcast = post_json("broadcast", state.clone())
        .then(|s: Arc<State>, body: Bytes| async move { respond(handle_broadcast(&s, &body).await) });
    let send = post_json("send", state.clone())
        .then(|s: Arc<State>, body: Bytes| async move { respond(handle_send(&s, &body).await) });
    let seed = warp::path::end()
        .and(warp::get())
        .and(with(state.clone()))
        .and(warp::query::<HashMap<String, String>>())
        .then(|s: Arc<State>, q: HashMap<String, String>| async move {
            match handle_seed(&s, q).await {
                Ok(()) => warp::reply::with_header("ok", "content-type", "text/plain; charset=utf-8").into_response(),
                Err(e) => e.into_response(),
            }
        });
    let metrics = state.metrics.clone();
    admin.or(publish).unify().or(broadcast).unify().or(send).unify().or(seed).unify().recover(recover).unify().with(
        warp::log::custom(move |info| {
            metrics.requests.with_label_values(&[route_label(info.path()), info.status().as_str()]).inc();
        }),
    )
}

fn with(state: Arc<State>) -> impl Filter<Extract = (Arc<State>,), Error = Infallible> + Clone {
    warp::any().map(move || state.clone())
}

/// `POST /<name>` with a JSON body no larger than the limit.
fn post_json(
    name: &'static str,
    state: Arc<State>,
) -> impl Filter<Extract = (Arc<State>, Bytes), Error = Rejection> + Clone {
    let limit = state.max_body;
    warp::path(name)
        .and(warp::path::end())
        .and(warp::post())
        .and(with(state))
        .and(content_type_json())
        .and(limited_body(limit))
}

fn content_type_json() -> impl Filter<Extract = (), Error = Rejection> + Clone {
    warp::header::optional::<String>("content-type")
        .and_then(|ct: Option<String>| async move {
            match ct {
                None => Ok(()),
                Some(ct) if ct.split(';').next().unwrap_or("").trim().eq_ignore_ascii_case("application/json") => {
                    Ok(())
                }
                // curl -d sends this by default; accept it as JSON so the
                // one-line examples work without -H.
                Some(ct) if ct.starts_with("application/x-www-form-urlencoded") => Ok(()),
                Some(ct) => {
                    Err(warp::reject::custom(ApiError::UnsupportedMediaType(pushmesh_common::ids::truncate(&ct, 80))))
                }
            }
        })
        .untuple_one()
}

/// The body, read up to `limit` bytes whether or not it has a
/// Content-Length (a chunked body over the limit is cut off at the limit).
fn limited_body(limit: u64) -> impl Filter<Extract = (Bytes,), Error = Rejection> + Clone {
    warp::header::optional::<u64>("content-length").and(warp::body::stream()).and_then(
        move |len: Option<u64>, body| async move {
            if len.is_some_and(|l| l > limit) {
                return Err(warp::reject::custom(ApiError::PayloadTooLarge { limit }));
            }
            read_limited(body, limit).await.map_err(warp::reject::custom)
        },
    )
}

async fn read_limited<S, B>(body: S, limit: u64) -> Result<Bytes, ApiError>
where
    S: futures_util::Stream<Item = Result<B, warp::Error>>,
    B: bytes::Buf,
{
    futures_util::pin_mut!(body);
    let mut buf = BytesMut::new();
    while let Some(chunk) = futures_util::StreamExt::next(&mut body).await {
        let mut chunk = chunk.map_err(|e| ApiError::InvalidRequest(format!("reading body: {e}")))?;
        if buf.len() as u64 + chunk.remaining() as u64 > limit {
            return Err(ApiError::PayloadTooLarge { limit });
        }
        while chunk.has_remaining() {
            let part = chunk.chunk();
            buf.extend_from_slice(part);
            let n = part.len();
            chunk.advance(n);
        }
    }
    Ok(buf.freeze())
}

fn respond(r: Result<serde_json::Value, ApiError>) -> Response {
    match r {
        Ok(v) => warp::reply::json(&v).into_response(),
        Err(e) => e.into_response(),
    }
}

fn data_bytes(data: &RawValue) -> Bytes {
    Bytes::copy_from_slice(data.get().as_bytes())
}

async fn handle_publish(s: &State, body: &[u8]) -> Result<serde_json::Value, ApiError> {
    let b: PublishBody = serde_json::from_slice(body).map_err(ApiError::from_json)?;
    let channel = Channel::new(b.channel).map_err(|e| ApiError::InvalidChannel(e.to_string()))?;
    let req = PublishRequest {
        target: Some(Target::Channel(channel.as_str().to_owned())),
        data: data_bytes(&b.data),
        exclude: Vec::new(),
    };
    publish(s, "channel", &channel.topic(), req).await
}

async fn handle_broadcast(s: &State, body: &[u8]) -> Result<serde_json::Value, ApiError> {
    let b: BroadcastBody = serde_json::from_slice(body).map_err(ApiError::from_json)?;
    let exclude = b
        .exclude
        .iter()
        .map(|c| ConnectionId::parse(c).map(|c| c.to_string()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ApiError::InvalidRequest(format!("exclude: {e}")))?;
    let req = PublishRequest { target: Some(Target::Broadcast(Broadcast {})), data: data_bytes(&b.data), exclude };
    publish(s, "broadcast", topic::BROADCAST, req).await
}

async fn handle_send(s: &State, body: &[u8]) -> Result<serde_json::Value, ApiError> {
    let b: SendBody = serde_json::from_slice(body).map_err(ApiError::from_json)?;
    match (b.connection, b.user) {
        (Some(conn), None) => send_to_connection(s, &conn, data_bytes(&b.data)).await,
        (None, Some(_)) => Err(ApiError::InvalidRequest(
            "sending to a user is not available yet: users are bound by client authentication, which this build does not have; send to a \"connection\"".to_owned(),
        )),
        (Some(_), Some(_)) => Err(ApiError::InvalidRequest("give either \"connection\" or \"user\", not both".to_owned())),
        (None, None) => Err(ApiError::InvalidRequest("missing field `connection`: the connection id from the client's welcome frame".to_owned())),
    }
}

async fn send_to_connection(s: &State, conn: &str, data: Bytes) -> Result<serde_json::Value, ApiError> {
    let id = ConnectionId::parse(conn).map_err(|e| ApiError::InvalidRequest(e.to_string()))?;
    let req = PublishRequest { target: Some(Target::Connection(id.to_string())), data, exclude: Vec::new() };
    publish(s, "connection", &id.gateway().topic(), req).await
}

/// The seed's form: `GET /?content=X` broadcasts, and with
/// `to_worker_id=W&to_connection_id=C` sends to one connection. W is the
/// gateway id and C the connection id from the welcome frame (the full id,
/// or just its number after the colon).
async fn handle_seed(s: &State, q: HashMap<String, String>) -> Result<(), ApiError> {
    let content = q.get("content").filter(|c| !c.is_empty()).ok_or_else(|| {
        ApiError::InvalidRequest(
            "missing query parameter `content`; use /?content=TEXT to broadcast, or add &to_worker_id=GATEWAY&to_connection_id=CONNECTION to send to one client".to_owned(),
        )
    })?;
    let data = Bytes::from(serde_json::to_string(content).map_err(|e| ApiError::Internal(e.to_string()))?);
    match (q.get("to_worker_id"), q.get("to_connection_id")) {
        (None, None) => {
            let req = PublishRequest { target: Some(Target::Broadcast(Broadcast {})), data, exclude: Vec::new() };
            publish(s, "broadcast", topic::BROADCAST, req).await.map(|_| ())
        }
        (Some(w), Some(c)) => {
            let conn = if c.contains(':') { c.clone() } else { format!("{w}:{c}") };
            let id = ConnectionId::parse(&conn).map_err(|e| ApiError::InvalidRequest(e.to_string()))?;
            if id.gateway().as_str() != w {
                return Err(ApiError::InvalidRequest(format!(
                    "to_connection_id {c:?} belongs to gateway {:?}, not to_worker_id {w:?}",
                    id.gateway().as_str()
                )));
            }
            send_to_connection(s, &conn, data).await.map(|_| ())
        }
        // The seed fell back to a broadcast here; a half-addressed send
        // reaching every client is a bug waiting to happen, so refuse it.
        _ => Err(ApiError::InvalidRequest(
            "to_worker_id and to_connection_id go together: give both to send to one client, or neither to broadcast"
                .to_owned(),
        )),
    }
}

async fn publish(
    s: &State,
    target: &'static str,
    key: &str,
    req: PublishRequest,
) -> Result<serde_json::Value, ApiError> {
    let started = Instant::now();
    let result = s.hubs.publish(key, req).await;
    let (label, out) = match result {
        Ok(resp) => {
            s.metrics.publish_duration.with_label_values(&[target]).observe(started.elapsed().as_secs_f64());
            ("ok", Ok(serde_json::json!({ "ok": true, "gateways": resp.gateways })))
        }
        Err(PublishError::Rejected(status)) => ("rejected", Err(ApiError::InvalidRequest(status.message().to_owned()))),
        Err(PublishError::NotFound(msg)) => ("rejected", Err(ApiError::UnknownConnection(msg))),
        Err(PublishError::Unavailable(msg)) => ("unavailable", Err(ApiError::Unavailable(msg))),
    };
    s.metrics.publishes.with_label_values(&[target, label]).inc();
    out
}

/// warp's own rejections (no route, wrong method, our body errors) as JSON.
async fn recover(r: Rejection) -> Result<Response, Infallible> {
    let e = if let Some(e) = r.find::<ApiError>() {
        clone_error(e)
    } else if r.find::<warp::reject::MethodNotAllowed>().is_some() {
        ApiError::MethodNotAllowed("see docs/api.md for each route's method".to_owned())
    } else if r.find::<warp::reject::InvalidQuery>().is_some() {
        ApiError::InvalidRequest("the query string could not be parsed".to_owned())
    } else if r.is_not_found() {
        ApiError::NotFound(
            "no such route; the ingress serves POST /publish, POST /broadcast, POST /send, GET /?content=…, /healthz, /readyz and /metrics"
                .to_owned(),
        )
    } else {
        tracing::warn!(rejection = ?r, "unhandled rejection");
        ApiError::Internal("unexpected request handling error".to_owned())
    };
    Ok(e.into_response())
}

fn clone_error(e: &ApiError) -> ApiError {
    match e {
        ApiError::PayloadTooLarge { limit } => ApiError::PayloadTooLarge { limit: *limit },
        ApiError::UnsupportedMediaType(s) => ApiError::UnsupportedMediaType(s.clone()),
        other => ApiError::InvalidRequest(other.to_string()),
    }
}

/// A bounded label for the requests metric.
fn route_label(path: &str) -> &'static str {
    match path {
        "/publish" => "publish",
        "/broadcast" => "broadcast",
        "/send" => "send",
        "/" => "seed",
        "/healthz" => "healthz",
        "/readyz" => "readyz",
        "/metrics" => "metrics",
        _ => "other",
    }
}
