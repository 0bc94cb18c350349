//! The HTTP API, as warp filters: thin adapters that read a request, call
//! the matching `Commands` method, and write its result or the error as
//! JSON. docs/api.md and docs/openapi.json describe every route.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use serde::Serialize;
use serde_json::value::RawValue;
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

use pushmesh_common::health::Health;
use pushmesh_common::ids::ConnectionId;

use crate::access::Transport;
use crate::commands::{BatchResults, parse};
use crate::error::ApiError;
use crate::keys::Scope;
use crate::state::State;

type Result<T> = std::result::Result<T, ApiError>;

/// Every route, with errors turned into JSON responses.
pub fn api(state: Arc<State>, health: Health) -> impl Filter<Extract = (impl Reply,), Error = Infallible> + Clone {
    let admin = pushmesh_common::admin::routes(health, state.commands.metrics.registry.clone());
    let metrics = state.commands.metrics.clone();
    let post = |name: &'static str, needs: Scope| post_json(name, state.clone(), needs);

    let publish = post("publish", Scope::Publish).then(|s: Arc<State>, _: Scope, b: Bytes| async move {
        respond(async { s.commands.publish(parse(&b)?).await }.await)
    });
    let broadcast = post("broadcast", Scope::Publish).then(|s: Arc<State>, _: Scope, b: Bytes| async move {
        respond(async { s.commands.broadcast(parse(&b)?).await }.await)
    });
    let send = post("send", Scope::Publish).then(|s: Arc<State>, _: Scope, b: Bytes| async move {
        respond(async { s.commands.send(parse(&b)?).await }.await)
    });
    let subscribe = post("subscribe", Scope::Admin).then(|s: Arc<State>, _: Scope, b: Bytes| async move {
        respond(async { s.commands.subscribe(parse(&b)?, true).await }.await)
    });
    let unsubscribe = post("unsubscribe", Scope::Admin).then(|s: Arc<State>, _: Scope, b: Bytes| async move {
        respond(async { s.commands.subscribe(parse(&b)?, false).await }.await)
    });
    let disconnect = post("disconnect", Scope::Admin).then(|s: Arc<State>, _: Scope, b: Bytes| async move {
        respond(async { s.commands.disconnect(parse(&b)?).await }.await)
    });
    let batch = post("batch", Scope::Publish).and(warp::addr::remote()).then(
        |s: Arc<State>, scope: Scope, b: Bytes, peer: Option<std::net::SocketAddr>| async move {
            respond(handle_batch(&s, scope, &b, peer.map(|p| p.ip())).await)
        },
    );
    let presence = warp::path!("presence" / String)
        .and(warp::get())
        .and(guard(state.clone(), Scope::Admin))
        .and(with(state.clone()))
        .and(warp::query::<HashMap<String, String>>())
        .then(|channel: String, _: Scope, s: Arc<State>, q: HashMap<String, String>| async move {
            respond(
                async {
                    let channel = percent_decoded(&channel)?;
                    s.commands.presence(channel, limit_param(&q)?).await
                }
                .await,
            )
        });
    let history = warp::path!("history")
        .and(warp::get())
        .and(guard(state.clone(), Scope::Admin))
        .and(with(state.clone()))
        .and(warp::query::<HashMap<String, String>>())
        .then(|_: Scope, s: Arc<State>, q: HashMap<String, String>| async move {
            respond(
                async {
                    let channel = q
                        .get("channel")
                        .cloned()
                        .ok_or_else(|| ApiError::InvalidRequest("history needs ?channel=NAME".to_owned()))?;
                    s.commands.history(channel, since_param(&q)?, limit_param(&q)?).await
                }
                .await,
            )
        });
    let stats = warp::path!("stats")
        .and(warp::get())
        .and(guard(state.clone(), Scope::Admin))
        .and(with(state.clone()))
        .then(|_: Scope, s: Arc<State>| async move { respond(s.commands.stats().await) });
    let user = warp::path!("users" / String)
        .and(warp::get())
        .and(guard(state.clone(), Scope::Admin))
        .and(with(state.clone()))
        .then(|id: String, _: Scope, s: Arc<State>| async move {
            respond(async { s.commands.user(percent_decoded(&id)?).await }.await)
        });
    let seed_on = state.seed_form;
    let seed = warp::path::end()
        .and(warp::get())
        .and_then(move || async move {
            if seed_on {
                Ok(())
            } else {
                Err(warp::reject::custom(ApiError::NotFound(
                    "the seed's GET form is turned off on this ingress (--seed-form=false); use POST /broadcast or /send"
                        .to_owned(),
                )))
            }
        })
        .untuple_one()
        .and(guard(state.clone(), Scope::Publish))
        .and(with(state.clone()))
        .and(warp::query::<HashMap<String, String>>())
        .then(|_: Scope, s: Arc<State>, q: HashMap<String, String>| async move {
            match handle_seed(&s, q).await {
                Ok(()) => warp::reply::with_header("ok", "content-type", "text/plain; charset=utf-8").into_response(),
                Err(e) => e.into_response(),
            }
        });

    admin
        .or(publish)
        .unify()
        .or(broadcast)
        .unify()
        .or(send)
        .unify()
        .or(subscribe)
        .unify()
        .or(unsubscribe)
        .unify()
        .or(disconnect)
        .unify()
        .or(batch)
        .unify()
        .or(presence)
        .unify()
        .or(history)
        .unify()
        .or(stats)
        .unify()
        .or(user)
        .unify()
        .or(seed)
        .unify()
        .recover(recover)
        .unify()
        .with(warp::log::custom(move |info| {
            metrics.requests.with_label_values(&[route_label(info.path()), info.status().as_str()]).inc();
        }))
}

fn with(state: Arc<State>) -> impl Filter<Extract = (Arc<State>,), Error = Infallible> + Clone {
    warp::any().map(move || state.clone())
}

/// `POST /<name>` with a JSON body no larger than the limit.
fn post_json(
    name: &'static str,
    state: Arc<State>,
    needs: Scope,
) -> impl Filter<Extract = (Arc<State>, Scope, Bytes), Error = Rejection> + Clone {
    let limit = state.access.max_body;
    warp::path(name)
        .and(warp::path::end())
        .and(warp::post())
        .and(with(state.clone()))
        .and(guard(state, needs))
        .and(content_type_json())
        .and(limited_body(limit))
}

/// The caller's rate limit and API key, checked before anything else is
/// read; extracts the key's scope (admin when no keys are configured).
fn guard(state: Arc<State>, needs: Scope) -> impl Filter<Extract = (Scope,), Error = Rejection> + Clone {
    warp::header::optional::<String>("authorization").and(warp::addr::remote()).and_then(
        move |auth: Option<String>, peer: Option<std::net::SocketAddr>| {
            let state = state.clone();
            async move {
                state
                    .access
                    .check(auth.as_deref(), peer.map(|p| p.ip()), needs, Transport::Http)
                    .map_err(warp::reject::custom)
            }
        },
    )
}

/// Only `application/json` bodies. A browser may send a form (urlencoded,
/// multipart) or `text/plain` to any site without asking it first (no CORS
/// preflight), so accepting those would let any web page make a visitor's
/// browser publish or disconnect through an ingress it can reach; a JSON
/// body from another origin needs a preflight, which fails without CORS.
fn content_type_json() -> impl Filter<Extract = (), Error = Rejection> + Clone {
    warp::header::optional::<String>("content-type")
        .and_then(|ct: Option<String>| async move {
            match ct {
                Some(ct) if ct.split(';').next().unwrap_or("").trim().eq_ignore_ascii_case("application/json") => {
                    Ok(())
                }
                Some(ct) => {
                    Err(warp::reject::custom(ApiError::UnsupportedMediaType(pushmesh_common::ids::truncate(&ct, 80))))
                }
                None => Err(warp::reject::custom(ApiError::UnsupportedMediaType("none".to_owned()))),
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

async fn read_limited<S, B>(body: S, limit: u64) -> Result<Bytes>
where
    S: futures_util::Stream<Item = std::result::Result<B, warp::Error>>,
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

fn respond<T: Serialize>(r: Result<T>) -> Response {
    match r {
        Ok(v) => warp::reply::json(&v).into_response(),
        Err(e) => e.into_response(),
    }
}

fn percent_decoded(segment: &str) -> Result<String> {
    percent_encoding::percent_decode_str(segment)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| ApiError::InvalidRequest("path segment is not valid UTF-8".to_owned()))
}

/// `since=EPOCH:OFFSET`, or `since_epoch=…&since_offset=…`.
fn since_param(q: &HashMap<String, String>) -> Result<Option<(String, u64)>> {
    let bad = |what: &str| {
        ApiError::InvalidRequest(format!(
            "{what}: expected since=EPOCH:OFFSET (the epoch and offset of the last message seen, e.g. since=5f3a9c0d1e2b4a67:41) or since_epoch and since_offset"
        ))
    };
    let (epoch, offset) = match (q.get("since"), q.get("since_epoch"), q.get("since_offset")) {
        (None, None, None) => return Ok(None),
        (Some(s), None, None) => s.rsplit_once(':').ok_or_else(|| bad(&format!("since {s:?} has no ':'")))?,
        (None, Some(e), Some(o)) => (e.as_str(), o.as_str()),
        (Some(_), _, _) => return Err(bad("since and since_epoch/since_offset together")),
        (None, _, _) => return Err(bad("since_epoch and since_offset go together")),
    };
    if epoch.is_empty() {
        return Err(bad("the epoch is empty"));
    }
    let offset = offset.parse::<u64>().map_err(|_| bad(&format!("offset {offset:?} is not a whole number")))?;
    Ok(Some((epoch.to_owned(), offset)))
}

fn limit_param(q: &HashMap<String, String>) -> Result<Option<u32>> {
    q.get("limit")
        .map(|l| {
            l.parse::<u32>()
                .ok()
                .filter(|n| *n <= 10_000)
                .ok_or_else(|| ApiError::InvalidRequest(format!("limit {l:?} must be a whole number from 0 to 10000")))
        })
        .transpose()
}

/// `POST /batch [cmd, …]`: each command runs in order and gets its own
/// result; a bad command fails alone.
async fn handle_batch(s: &State, scope: Scope, body: &[u8], peer: Option<std::net::IpAddr>) -> Result<BatchResults> {
    let commands: Vec<&RawValue> = parse(body)?;
    if commands.len() > s.access.max_batch {
        return Err(ApiError::InvalidRequest(format!(
            "batch has {} commands; the limit is {}",
            commands.len(),
            s.access.max_batch
        )));
    }
    // One token per operation: the request's own was taken at the door.
    if let Some(ip) = peer {
        s.access.charge(ip, (commands.len() as u32).saturating_sub(1))?;
    }
    Ok(s.commands.batch(commands, scope == Scope::Admin).await)
}

/// The seed's form: `GET /?content=X` broadcasts, and with
/// `to_worker_id=W&to_connection_id=C` sends to one connection. W is the
/// gateway id and C the connection id from the welcome frame (the full id,
/// or just its number after the colon).
async fn handle_seed(s: &State, q: HashMap<String, String>) -> Result<()> {
    const USAGE: &str = "use /?content=TEXT to broadcast, or add &to_worker_id=GATEWAY&to_connection_id=CONNECTION to send to one client";
    let content = match q.get("content") {
        None => return Err(ApiError::InvalidRequest(format!("missing query parameter `content`; {USAGE}"))),
        Some(c) if c.is_empty() => {
            return Err(ApiError::InvalidRequest(format!(
                "query parameter `content` is empty; there is nothing to send. {USAGE}"
            )));
        }
        Some(c) => c,
    };
    let data = Bytes::from(serde_json::to_string(content).map_err(|e| ApiError::Internal(e.to_string()))?);
    // `confirm=1`: answer once the connection's gateway said it got it.
    let confirm = match q.get("confirm").map(String::as_str) {
        None | Some("0" | "false") => false,
        Some("1" | "true") => true,
        Some(other) => {
            return Err(ApiError::InvalidRequest(format!(
                "confirm={:?}: use confirm=1 to wait for the gateway to confirm delivery",
                pushmesh_common::ids::truncate(other, 20)
            )));
        }
    };
    match (q.get("to_worker_id"), q.get("to_connection_id")) {
        (None, None) if confirm => Err(ApiError::InvalidRequest(
            "confirm=1 is for a send to one client (to_worker_id and to_connection_id), not a broadcast".to_owned(),
        )),
        (None, None) => s.commands.broadcast_data(data).await.map(|_| ()),
        (Some(w), Some(c)) => {
            let conn = if c.contains(':') { c.clone() } else { format!("{w}:{c}") };
            let id = ConnectionId::parse(&conn).map_err(|e| ApiError::InvalidRequest(e.to_string()))?;
            if id.gateway().as_str() != w {
                return Err(ApiError::InvalidRequest(format!(
                    "to_connection_id {c:?} belongs to gateway {:?}, not to_worker_id {w:?}",
                    id.gateway().as_str()
                )));
            }
            s.commands.send_to_connection(&conn, data, confirm).await.map(|_| ())
        }
        // The seed fell back to a broadcast here; a half-addressed send
        // reaching every client is a bug waiting to happen, so refuse it.
        _ => Err(ApiError::InvalidRequest(
            "to_worker_id and to_connection_id go together: give both to send to one client, or neither to broadcast"
                .to_owned(),
        )),
    }
}

/// warp's own rejections (no route, wrong method, our body errors) as JSON.
async fn recover(r: Rejection) -> std::result::Result<Response, Infallible> {
    let e = if let Some(e) = r.find::<ApiError>() {
        e.clone()
    } else if r.find::<warp::reject::MethodNotAllowed>().is_some() {
        ApiError::MethodNotAllowed("see docs/api.md for each route's method".to_owned())
    } else if r.find::<warp::reject::InvalidQuery>().is_some() {
        ApiError::InvalidRequest("the query string could not be parsed".to_owned())
    } else if r.is_not_found() {
        ApiError::NotFound(
            "no such route; see docs/api.md (POST /publish, /broadcast, /send, /subscribe, /unsubscribe, /disconnect, /batch; GET /presence/{channel}, /history?channel=, /stats, /users/{user}, /?content=…)"
                .to_owned(),
        )
    } else {
        tracing::warn!(rejection = ?r, "unhandled rejection");
        ApiError::Internal("unexpected request handling error".to_owned())
    };
    Ok(e.into_response())
}

/// A bounded label for the requests metric.
fn route_label(path: &str) -> &'static str {
    match path {
        "/publish" => "publish",
        "/broadcast" => "broadcast",
        "/send" => "send",
        "/subscribe" => "subscribe",
        "/unsubscribe" => "unsubscribe",
        "/disconnect" => "disconnect",
        "/batch" => "batch",
        "/stats" => "stats",
        "/" => "seed",
        "/healthz" => "healthz",
        "/readyz" => "readyz",
        "/metrics" => "metrics",
        p if p.starts_with("/presence/") => "presence",
        "/history" => "history",
        p if p.starts_with("/users/") => "users",
        _ => "other",
    }
}
