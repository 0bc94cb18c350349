//! How one hub delivery reaches local sockets, top to bottom: find the
//! recipients (the registry), skip the excluded ones, ask `recovery` about
//! connections that are recovering the channel, and hand each the frame.
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
//!
//! Ids in a delivery (`connection`, `exclude`) are compared with this
//! gateway's id and read as numbers in place: nothing is allocated per
//! delivery beyond the frame itself.

use std::sync::Arc;

use bytes::Bytes;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use pushmesh_common::ids::{GatewayId, TopicRef};
use pushmesh_common::proto::Delivery;

use crate::metrics::GatewayMetrics;
use crate::protocol;
use crate::queue::{Outbound, SendError};
use crate::recovery::{Admit, Recovery};
use crate::registry::{Advance, ConnEntry, Recipients, Registry};

pub struct Fanout {
    gateway: GatewayId,
    registry: Arc<Registry>,
    recovery: Arc<Recovery>,
    metrics: GatewayMetrics,
}

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

impl Frames<'_> {
    fn text(&mut self, raw: bool) -> Utf8Bytes {
        let (d, data) = (self.delivery, self.data);
        let slot = if raw { &mut self.raw } else { &mut self.json };
        slot.get_or_insert_with(|| protocol::message_frame(d, data, raw)).clone()
    }

    /// The WebSocket frame (header and payload), the same for every client.
    fn wire(&mut self, raw: bool) -> Bytes {
        let cached = if raw { &self.raw_wire } else { &self.json_wire };
        if let Some(w) = cached {
            return w.clone();
        }
        let w = protocol::wire_text(self.text(raw));
        *(if raw { &mut self.raw_wire } else { &mut self.json_wire }) = Some(w.clone());
        w
    }
}

impl Fanout {
    pub fn new(gateway: GatewayId, registry: Arc<Registry>, recovery: Arc<Recovery>, metrics: GatewayMetrics) -> Self {
        Self { gateway, registry, recovery, metrics }
    }

    /// Deliver to the local recipients. For a direct send, whether its
    /// connection got it (written or queued) — what a confirmed send answers.
    pub fn deliver(&self, d: &Delivery) -> bool {
        let Ok(data) = std::str::from_utf8(&d.data) else {
            self.metrics.dropped.with_label_values(&["invalid_payload"]).inc();
            return false;
        };
        let to = match TopicRef::of(&d.topic) {
            TopicRef::Broadcast => Recipients::All,
            TopicRef::Channel(name) => Recipients::Channel(name),
            TopicRef::User(id) => Recipients::User(id),
            TopicRef::Gateway(_) => match self.local_seq(&d.connection) {
                Some(seq) => Recipients::One(seq),
                None => {
                    self.metrics.dropped.with_label_values(&["unknown_connection"]).inc();
                    return false;
                }
            },
            TopicRef::Unknown(t) => {
                tracing::debug!(topic = %t, "delivery on a topic this gateway does not route");
                return false;
            }
        };
        if let Recipients::Channel(channel) = to
            && !d.epoch.is_empty()
        {
            match self.registry.advance(channel, &d.epoch, d.offset) {
                Advance::Next => {}
                Advance::Gap => self.metrics.offset_gaps.inc(),
                Advance::Stale => {
                    self.metrics.stale.inc();
                    return false;
                }
            }
        }
        let excluded: Vec<u64> = d.exclude.iter().filter_map(|c| self.local_seq(c)).collect();
        let mut frames =
            Frames { delivery: d, data, json: None, raw: None, json_wire: None, raw_wire: None, written: 0 };
        let (mut found, mut sent) = (false, false);
        let event = !d.event.is_empty();
        self.registry.for_each_recipient(to, |seq, conn| {
            found = true;
            if !excluded.is_empty() && excluded.contains(&seq) {
                return;
            }
            // Join/leave events are for JSON clients (a raw client gets
            // published content only), and are not positioned: recovery
            // has nothing to say about them.
            if event && (conn.raw || matches!(conn.out, Outbound::Sse(_))) {
                return;
            }
            if let Recipients::Channel(channel) = to
                && !event
                && conn.recovers()
            {
                match self.recovery.admit(seq, channel, &d.epoch, d.offset, || frames.text(conn.raw)) {
                    Admit::Deliver => {}
                    Admit::Held | Admit::Covered => return,
                    Admit::Overflow => {
                        self.metrics.dropped.with_label_values(&["slow_consumer"]).inc();
                        conn.close.slow_consumer();
                        return;
                    }
                }
            }
            sent |= self.send(conn, &mut frames);
        });
        if frames.written > 0 {
            self.metrics.deliveries.inc_by(frames.written);
        }
        if !found && matches!(to, Recipients::One(_)) {
            // The connection closed after the send was accepted.
            self.metrics.dropped.with_label_values(&["unknown_connection"]).inc();
        }
        sent
    }

    /// Hand the frame to one connection; true when written or queued.
    fn send(&self, conn: &ConnEntry, frames: &mut Frames<'_>) -> bool {
        let sent = match &conn.out {
            Outbound::Ws(q) => q.send_wire(frames.wire(conn.raw), true, true),
            Outbound::Sse(q) => q.send(&frames.text(false), true, true),
        };
        match sent {
            Ok(written) => {
                frames.written += u64::from(written);
                true
            }
            Err(SendError::Full) => {
                self.metrics.dropped.with_label_values(&["slow_consumer"]).inc();
                conn.close.slow_consumer();
                false
            }
            Err(SendError::Closed) => {
                self.metrics.dropped.with_label_values(&["client_gone"]).inc();
                false
            }
        }
    }

    /// The sequence number of connection id `id` (`<gateway>:<n>`) if this
    /// gateway owns it; read in place, without allocating.
    fn local_seq(&self, id: &str) -> Option<u64> {
        let (gateway, seq) = id.rsplit_once(':')?;
        (gateway == self.gateway.as_str()).then(|| seq.parse().ok()).flatten()
    }
}
