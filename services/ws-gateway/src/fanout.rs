//! How one hub delivery reaches local sockets.
//!
//! The client frame is encoded once per delivery (JSON envelope, and the
//! bare content for `?format=raw` connections, each only if some recipient
//! needs it), and so is its WebSocket framing: server frames are unmasked,
//! so the same header-and-payload `Bytes` goes to every recipient. Each
//! recipient's outbound queue writes it straight into the socket when
//! nothing is waiting there (one non-blocking `write`, no wake-up of the
//! connection's task) and queues it otherwise, bounded: no copy, no await,
//! no lock held across an await. A full queue means a slow consumer: the
//! frame is dropped, counted, and the connection is told to close with
//! 1013 (it cannot catch up by itself, and keeping it would grow memory
//! without bound).

use std::collections::HashSet;

use bytes::Bytes;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use pushmesh_common::ids::{ConnectionId, topic};
use pushmesh_common::proto::Delivery;

use crate::protocol::close;
use crate::queue::SendError;
use crate::registry::{Buffered, ConnEntry};
use crate::server::Shared;

/// The frames for one delivery, built on first use, and how many were
/// written at once.
struct Frames<'a> {
    delivery: &'a Delivery,
    data: &'a str,
    json: Option<Utf8Bytes>,
    raw: Option<Utf8Bytes>,
    json_wire: Option<Bytes>,
    raw_wire: Option<Bytes>,
    written: u64,
}

impl<'a> Frames<'a> {
    fn get(&mut self, raw: bool) -> Utf8Bytes {
        if raw {
            self.raw.get_or_insert_with(|| raw_frame(self.delivery, self.data)).clone()
        } else {
            self.json.get_or_insert_with(|| json_frame(self.delivery, self.data)).clone()
        }
    }

    /// The WebSocket frame (header and payload), the same for every client.
    fn wire(&mut self, raw: bool) -> Bytes {
        let cached = if raw { &self.raw_wire } else { &self.json_wire };
        if let Some(w) = cached {
            return w.clone();
        }
        let w = crate::protocol::wire_text(self.get(raw));
        *(if raw { &mut self.raw_wire } else { &mut self.json_wire }) = Some(w.clone());
        w
    }
}

/// `{"type":"message","channel":"…","data":…,"epoch":"…","offset":N}`; the
/// data is already JSON text (validated by the ingress), copied in once.
pub fn json_frame(d: &Delivery, data: &str) -> Utf8Bytes {
    let mut s = String::with_capacity(data.len() + d.channel.len() + d.epoch.len() + 64);
    s.push_str(r#"{"type":"message""#);
    if !d.channel.is_empty() {
        // Channel names are restricted to characters that need no escaping.
        s.push_str(r#","channel":""#);
        s.push_str(&d.channel);
        s.push('"');
    }
    s.push_str(r#","data":"#);
    s.push_str(data);
    if !d.epoch.is_empty() {
        // Epochs are hex digits: no escaping needed either.
        s.push_str(r#","epoch":""#);
        s.push_str(&d.epoch);
        s.push_str(r#"","offset":"#);
        s.push_str(itoa::Buffer::new().format(d.offset));
    }
    s.push('}');
    s.into()
}

/// The published content alone, as the seed sent it: a JSON string is
/// unquoted; any other JSON value goes as its text (sharing the buffer).
pub fn raw_frame(d: &Delivery, data: &str) -> Utf8Bytes {
    if data.starts_with('"')
        && let Ok(s) = serde_json::from_str::<String>(data)
    {
        return s.into();
    }
    Utf8Bytes::try_from(d.data.clone()).unwrap_or_else(|_| data.to_owned().into())
}

pub fn deliver(shared: &Shared, d: Delivery) {
    let metrics = &shared.metrics;
    let Ok(data) = std::str::from_utf8(&d.data) else {
        metrics.dropped.with_label_values(&["invalid_payload"]).inc();
        return;
    };
    let mut frames = Frames { delivery: &d, data, json: None, raw: None, json_wire: None, raw_wire: None, written: 0 };
    let excluded: HashSet<u64> = d
        .exclude
        .iter()
        .filter_map(|c| ConnectionId::parse(c).ok())
        .filter(|c| c.gateway() == &shared.gateway)
        .map(|c| c.seq())
        .collect();
    let inner = shared.registry.read();
    if d.topic == topic::BROADCAST {
        for (seq, conn) in &inner.conns {
            if !excluded.contains(seq) {
                send(shared, conn, &mut frames);
            }
        }
    } else if d.topic.starts_with(topic::CHANNEL_PREFIX) {
        if let Some(members) = inner.topics.get(&d.topic) {
            for seq in members {
                if excluded.contains(seq) {
                    continue;
                }
                let Some(conn) = inner.conns.get(seq) else { continue };
                if let Some(r) = conn.recovers.then(|| inner.recovery(*seq, &d.topic)).flatten() {
                    match &r.covered {
                        // Still recovering: hold it back.
                        None => {
                            let mut held = r.held.lock().expect("buffer lock");
                            if held.len() >= shared.config.outbound_queue {
                                shared.metrics.dropped.with_label_values(&["slow_consumer"]).inc();
                                conn.close.fire(
                                    close::TRY_AGAIN_LATER,
                                    "slow consumer: outbound queue full",
                                    "slow_consumer",
                                );
                            } else {
                                held.push(Buffered {
                                    epoch: d.epoch.clone(),
                                    offset: d.offset,
                                    text: frames.get(conn.raw),
                                });
                            }
                            continue;
                        }
                        // A late live copy of a message already recovered.
                        Some((epoch, last)) if *epoch == d.epoch && d.offset <= *last => continue,
                        Some(_) => {}
                    }
                }
                send(shared, conn, &mut frames);
            }
        }
    } else if d.topic.starts_with(topic::USER_PREFIX) {
        if let Some(conns) = inner.users.get(&d.topic) {
            for seq in conns {
                if excluded.contains(seq) {
                    continue;
                }
                if let Some(conn) = inner.conns.get(seq) {
                    send(shared, conn, &mut frames);
                }
            }
        }
    } else if d.topic.starts_with(topic::GATEWAY_PREFIX) {
        let target = ConnectionId::parse(&d.connection)
            .ok()
            .filter(|c| c.gateway() == &shared.gateway)
            .and_then(|c| inner.conns.get(&c.seq()));
        match target {
            Some(conn) => send(shared, conn, &mut frames),
            // The connection closed after the send was accepted.
            None => metrics.dropped.with_label_values(&["unknown_connection"]).inc(),
        }
    } else {
        tracing::debug!(topic = %d.topic, "delivery on a topic this gateway does not route");
    }
    drop(inner);
    if frames.written > 0 {
        metrics.deliveries.inc_by(frames.written);
    }
}

fn send(shared: &Shared, conn: &ConnEntry, frames: &mut Frames<'_>) {
    match conn.tx.send_wire(frames.wire(conn.raw), true, true) {
        Ok(true) => frames.written += 1,
        Ok(false) => {}
        Err(SendError::Full) => {
            shared.metrics.dropped.with_label_values(&["slow_consumer"]).inc();
            conn.close.fire(close::TRY_AGAIN_LATER, "slow consumer: outbound queue full", "slow_consumer");
        }
        Err(SendError::Closed) => {
            shared.metrics.dropped.with_label_values(&["client_gone"]).inc();
        }
    }
}
