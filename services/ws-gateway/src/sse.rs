//! Server-Sent Events: `GET /sse?channel=a&channel=b` for clients that
//! cannot or need not speak WebSocket (corporate proxies, one-way feeds,
//! `curl -N`), with the same auth, limits, fan-out and slow-consumer rule.
//!
//! An SSE connection is a connection like any other in the registry (it
//! has a connection id, gets broadcasts, direct sends and its channels'
//! messages); only its outbound side differs: events queued for the
//! response body (`queue::SseQueue`) instead of frames written into a
//! socket. It cannot send commands, so its channels are the URL's.
//!
//! **Recovery with no SDK.** Each channel message's event carries the
//! stream's position in every one of its channels as its `id`
//! (`epoch:offset`, comma-separated in the order of the `channel`
//! parameters; one channel: exactly `epoch:offset`). A browser's
//! `EventSource` sends the last one back as `Last-Event-ID` when it
//! reconnects, and each channel with a position is resubscribed with it
//! (`recovery`): the missed messages come first, and a `subscribed` event
//! per channel says whether recovery was possible. An id that does not
//! parse gets an `error` event and the stream goes on live.
//!
//! The response opens with `retry: 1000` (reconnect after a second), then a
//! `welcome` event; a comment line every `--ping-interval-secs` keeps
//! proxies from closing an idle stream; the stream ends with a `close`
//! event (code and reason as a WebSocket close would give) when the server
//! ends it (1012 on shutdown, 1013 for a slow consumer, 4000+ from the API).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame as BodyFrame, Incoming};
use serde_json::json;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_util::sync::{CancellationToken, DropGuard};

use pushmesh_common::ids::{Channel, ConnectionId};

use crate::admission::Slot;
use crate::auth::Grant;
use crate::connection::Clients;
use crate::protocol::{self, Reply, close};
use crate::queue::{CloseSignal, Frame, Outbound, SseQueue};
use crate::recovery::Subscriber;
use crate::registry::{ConnEntry, JoinError};

/// Why a request cannot start a stream: the HTTP status, error code and
/// message to answer with.
pub type Refusal = (StatusCode, &'static str, String);

fn refuse(status: StatusCode, code: &'static str, message: impl Into<String>) -> Refusal {
    (status, code, message.into())
}

/// What an SSE request asks for, checked: channels, and per channel the
/// position to resume from (from `Last-Event-ID`).
pub struct SseRequest {
    channels: Vec<Channel>,
    resume: Vec<Option<(String, u64)>>,
    /// `Last-Event-ID` was given but is not one this stream could have sent.
    bad_last_event_id: Option<String>,
    token: Option<String>,
    /// The `Last-Event-ID` header as sent (or why it is not text), read
    /// against the stream's channels once they are all known.
    last_event_id: Option<Result<String, String>>,
}

impl SseRequest {
    /// The channels the request named.
    pub fn channels(&self) -> &[Channel] {
        &self.channels
    }

    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// Add the channels the connect proxy's answer subscribes the client
    /// to (after the named ones, in the answer's order, without repeats),
    /// then read `Last-Event-ID` against the whole list: its ids name a
    /// position per channel of the stream, in that order.
    pub fn complete(&mut self, server_channels: &[Channel], max_channels: usize) -> Result<(), Refusal> {
        for ch in server_channels {
            if !self.channels.contains(ch) {
                self.channels.push(ch.clone());
            }
        }
        if self.channels.is_empty() {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "name at least one channel: /sse?channel=news (repeat channel= for more)",
            ));
        }
        if self.channels.len() > max_channels {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                "limit_exceeded",
                format!("a connection may subscribe to at most {max_channels} channels"),
            ));
        }
        let n = self.channels.len();
        (self.resume, self.bad_last_event_id) = match &self.last_event_id {
            None => (vec![None; n], None),
            Some(Ok(id)) => match parse_last_event_id(id, n) {
                Ok(r) => (r, None),
                Err(e) => (vec![None; n], Some(e)),
            },
            Some(Err(e)) => (vec![None; n], Some(e.clone())),
        };
        Ok(())
    }
}

/// Read the query (`channel`, repeatable; `token`), the `Authorization:
/// Bearer` header and `Last-Event-ID`.
pub fn parse(req: &Request<Incoming>, max_channels: usize) -> Result<SseRequest, Refusal> {
    let mut channels = Vec::new();
    let mut token = None;
    for (k, v) in form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes()) {
        match k.as_ref() {
            "channel" => {
                let ch = Channel::new(v.into_owned())
                    .map_err(|e| refuse(StatusCode::BAD_REQUEST, "invalid_channel", e.to_string()))?;
                if !channels.contains(&ch) {
                    channels.push(ch);
                }
            }
            "token" => token = Some(v.into_owned()),
            _ => {}
        }
    }
    // Checked again with the connect answer's channels (`complete`): a
    // stream may name none when the backend subscribes it.
    if channels.len() > max_channels {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "limit_exceeded",
            format!("a connection may subscribe to at most {max_channels} channels"),
        ));
    }
    if token.is_none()
        && let Some(auth) = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok())
    {
        token = auth.strip_prefix("Bearer ").map(|t| t.trim().to_owned());
    }
    let last_event_id = req
        .headers()
        .get("last-event-id")
        .map(|v| v.to_str().map(str::to_owned).map_err(|_| "Last-Event-ID is not text".to_owned()));
    Ok(SseRequest { channels, resume: Vec::new(), bad_last_event_id: None, token, last_event_id })
}

/// `epoch:offset` per channel, comma-separated, as this gateway writes
/// event ids (an empty entry: no position in that channel yet).
fn parse_last_event_id(id: &str, channels: usize) -> Result<Vec<Option<(String, u64)>>, String> {
    let parts: Vec<&str> = id.split(',').collect();
    if parts.len() != channels {
        return Err(format!(
            "Last-Event-ID names {} positions for a stream of {channels} channels; it must be an id this stream sent",
            parts.len()
        ));
    }
    parts
        .into_iter()
        .map(|p| {
            if p.is_empty() {
                return Ok(None);
            }
            let (epoch, offset) =
                p.split_once(':').ok_or_else(|| format!("Last-Event-ID entry {p:?} is not epoch:offset"))?;
            let offset =
                offset.parse().map_err(|_| format!("Last-Event-ID entry {p:?}: the offset is not a number"))?;
            if epoch.is_empty() || epoch.len() > 64 || !epoch.bytes().all(|b| b.is_ascii_alphanumeric()) {
                return Err(format!("Last-Event-ID entry {p:?}: the epoch is not one this gateway sent"));
            }
            Ok(Some((epoch.to_owned(), offset)))
        })
        .collect()
}

pub type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, std::convert::Infallible>;

/// Start the stream for an admitted, authenticated request: the response
/// (its body drains the connection's event queue) and the task that joins
/// the channels and keeps the stream until it ends.
pub fn start(
    clients: Arc<Clients>,
    r: SseRequest,
    grant: Grant,
    seq: u64,
    slot: Slot,
) -> (Response<Body>, impl Future<Output = ()>) {
    let settings = &clients.settings;
    let names: Vec<String> = r.channels.iter().map(|c| c.as_str().to_owned()).collect();
    let queue = Arc::new(SseQueue::new(names, r.resume.clone(), settings.outbound_queue));
    let id = ConnectionId::new(clients.gateway.clone(), seq);
    let close = Arc::new(CloseSignal::default());
    queue.raw("retry: 1000\n\n");
    let _ = queue.send(protocol::welcome_frame(&id, grant.user.as_ref(), false).as_str(), false, false);
    if let Some(why) = &r.bad_last_event_id {
        let _ = queue.send(&error_event("bad_last_event_id", why, None), false, false);
    }
    // The body going away (the client left) cancels `gone`.
    let gone = CancellationToken::new();
    let body = Guarded { queue: queue.clone(), _gone: gone.clone().drop_guard() };
    let stream = futures_util::stream::unfold(body, |body| async move {
        let chunk = body.queue.next_chunk().await?;
        Some((Ok(BodyFrame::data(chunk)), body))
    });
    let mut resp = Response::new(StreamBody::new(stream).boxed_unsync());
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Tells nginx-style proxies not to buffer the stream.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    let task = run(clients, r, grant, seq, queue, close, gone, slot);
    (resp, task)
}

/// Drops with the response body: the client is gone.
struct Guarded {
    queue: Arc<SseQueue>,
    _gone: DropGuard,
}

#[allow(clippy::too_many_arguments)]
async fn run(
    clients: Arc<Clients>,
    r: SseRequest,
    grant: Grant,
    seq: u64,
    queue: Arc<SseQueue>,
    close: Arc<CloseSignal>,
    gone: CancellationToken,
    slot: Slot,
) {
    let out = Outbound::Sse(queue.clone());
    let entry = ConnEntry::new(out.clone(), false, close.clone(), grant.user.clone());
    let metrics = &clients.metrics;
    let reason = match clients.registry.insert(seq, entry, clients.settings.max_connections_per_user) {
        Err(e) => {
            queue.close(close::TOO_MANY_CONNECTIONS, &e.to_string());
            metrics.disconnects.with_label_values(&["user_limit"]).inc();
            drop(slot);
            return;
        }
        Ok(confirmation) => {
            metrics.sse_connections.inc();
            metrics.accepted.inc();
            confirmation.confirmed(clients.settings.subscribe_timeout).await;
            if let Err(e) = join_all(&clients, &r, seq, &out, &close).await {
                close.fire(close::TRY_AGAIN_LATER, e.to_string(), "server");
            }
            wait(&clients, &queue, &close, &gone).await
        }
    };
    let lost = match reason {
        "client" => queue.abandon(),
        _ => {
            let (code, why) = match close.get() {
                Some((code, why, _)) => (*code, why.clone()),
                None => (close::SERVICE_RESTART, "server restarting: reconnect".to_owned()),
            };
            queue.close(code, &why)
        }
    };
    clients.registry.remove(seq);
    clients.recovery.forget_connection(seq);
    metrics.sse_connections.dec();
    metrics.disconnects.with_label_values(&[reason]).inc();
    if lost > 0 {
        let drop_reason = if reason == "client" { "client_gone" } else { reason };
        metrics.dropped.with_label_values(&[drop_reason]).inc_by(lost);
    }
    drop(slot);
}

/// Join every channel of the stream: with recovery where `Last-Event-ID`
/// gave a position, and a `subscribed` event for each.
async fn join_all(
    clients: &Clients,
    r: &SseRequest,
    seq: u64,
    out: &Outbound,
    close: &CloseSignal,
) -> Result<(), JoinError> {
    let s = &clients.settings;
    for (channel, resume) in r.channels.iter().zip(&r.resume) {
        match resume {
            Some((epoch, offset)) => {
                let who = Subscriber { seq, out, close, raw: false };
                let reply = |reply: &Reply| subscribed_event(channel, reply);
                clients
                    .recovery
                    .subscribe(who, channel, (epoch, *offset), reply, s.max_channels, s.subscribe_timeout)
                    .await?;
            }
            None => {
                clients.registry.join(seq, channel, s.max_channels, s.subscribe_timeout).await?;
                let text = json!({ "type": "subscribed", "channel": channel.as_str() }).to_string();
                let _ = out.try_send(Frame { text: text.into(), is_delivery: false });
            }
        }
    }
    Ok(())
}

/// `{"type":"subscribed","channel":…,"recovered":…,"epoch":…,"offset":…}`.
fn subscribed_event(channel: &Channel, reply: &Reply) -> Utf8Bytes {
    let mut v = json!({ "type": "subscribed", "channel": channel.as_str() });
    if let Reply::Subscribed { recovered, epoch, offset } = reply {
        v["recovered"] = json!(recovered);
        if let Some(e) = epoch {
            v["epoch"] = json!(e);
            v["offset"] = json!(offset);
        }
    }
    v.to_string().into()
}

fn error_event(code: &str, message: &str, channel: Option<&str>) -> String {
    let mut v = json!({ "type": "error", "code": code, "message": message });
    if let Some(c) = channel {
        v["channel"] = json!(c);
    }
    v.to_string()
}

/// Keep the stream until it must end; the metric reason it ended for.
async fn wait(clients: &Clients, queue: &SseQueue, close: &CloseSignal, gone: &CancellationToken) -> &'static str {
    let interval = clients.settings.ping_interval;
    let mut ticks =
        tokio::time::interval_at(tokio::time::Instant::now() + interval, interval.max(Duration::from_secs(1)));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            (_, _, metric) = close.fired() => return metric,
            _ = clients.shutdown.cancelled() => return "shutdown",
            _ = gone.cancelled() => return "client",
            _ = ticks.tick(), if !interval.is_zero() => queue.heartbeat(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_last_event_id;

    #[test]
    fn last_event_ids() {
        assert_eq!(parse_last_event_id("00ff:42", 1).unwrap(), vec![Some(("00ff".to_owned(), 42))]);
        assert_eq!(parse_last_event_id(",ab:1", 2).unwrap(), vec![None, Some(("ab".to_owned(), 1))]);
        assert!(parse_last_event_id("ab:1", 2).unwrap_err().contains("2 channels"));
        assert!(parse_last_event_id("ab:x", 1).unwrap_err().contains("not a number"));
        assert!(parse_last_event_id("a b:1", 1).unwrap_err().contains("epoch"));
        assert!(parse_last_event_id("nocolon", 1).unwrap_err().contains("epoch:offset"));
    }
}
