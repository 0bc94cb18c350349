//! Publishing: what a publish's target means here, and its delivery.
//!
//! One mapping from a target (channel, broadcast, connection, user) to the
//! topic and fields of the `Delivery` gateways get, shared by publishes,
//! relays and the stream of publishes. Channel publishes are positioned by
//! the sequencer (engine, offset order); the others are routed at once.
//!
//! **Confirmed sends.** A direct send may ask to be confirmed: its delivery
//! carries a number, the owning gateway answers on its stream whether the
//! connection got it (`attach` hands the answer to `Confirms`), and the
//! publish is answered with that, or with "timeout" when the gateway said
//! nothing in time.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::oneshot;
use tonic::Status;

use pushmesh_common::ids::{Channel, ConnectionId, Topic, UserId};
use pushmesh_common::proto::{
    Confirmed, Delivery, DeliveryAck, PublishFailure, PublishRequest, PublishResponse, PublishResult, Relay,
    publish_request, publish_result,
};

use crate::engine::EngineError;
use crate::metrics::HubMetrics;
use crate::sequencer::{Publish, Sequencer};
use crate::topics::TopicTable;

/// Set on an UNAVAILABLE that comes from the channel state engine, not
/// from the hub itself.
pub const ENGINE_ERROR_HEADER: &str = "pushmesh-engine-error";

/// A publish's target, checked.
enum Target {
    Channel(Channel),
    Broadcast,
    Connection(ConnectionId),
    User(UserId),
}

impl Target {
    fn parse(target: Option<publish_request::Target>) -> Result<Self, String> {
        match target {
            Some(publish_request::Target::Channel(name)) => Channel::new(name).map(Self::Channel),
            Some(publish_request::Target::Broadcast(_)) => Ok(Self::Broadcast),
            Some(publish_request::Target::Connection(id)) => ConnectionId::parse(&id).map(Self::Connection),
            Some(publish_request::Target::User(user)) => UserId::new(user).map(Self::User),
            None => return Err("publish needs a target".to_owned()),
        }
        .map_err(|e| e.to_string())
    }

    fn kind(&self) -> &'static str {
        match self {
            Self::Channel(_) => "channel",
            Self::Broadcast => "broadcast",
            Self::Connection(_) => "connection",
            Self::User(_) => "user",
        }
    }

    /// The delivery gateways get for it: the topic it travels on and the
    /// fields a gateway reads (a direct send's connection, a channel
    /// message's channel and position).
    fn delivery(&self, data: Bytes, exclude: Vec<String>, id: u64, position: Option<(String, u64)>) -> Delivery {
        let mut d = Delivery { data, exclude, id, ..Default::default() };
        match self {
            Self::Channel(ch) => {
                d.topic = Topic::Channel(ch.clone()).wire();
                d.channel = ch.as_str().to_owned();
                if let Some((epoch, offset)) = position {
                    d.epoch = epoch;
                    d.offset = offset;
                }
            }
            Self::Broadcast => d.topic = Topic::Broadcast.wire(),
            Self::Connection(conn) => {
                d.topic = Topic::Gateway(conn.gateway().clone()).wire();
                d.connection = conn.to_string();
                d.exclude.clear();
            }
            Self::User(user) => d.topic = Topic::User(user.clone()).wire(),
        }
        d
    }
}

/// Direct sends waiting for their gateway's answer.
#[derive(Default)]
pub struct Confirms {
    next: AtomicU64,
    pending: Mutex<HashMap<u64, oneshot::Sender<bool>>>,
}

impl Confirms {
    fn register(&self) -> (u64, oneshot::Receiver<bool>) {
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let (tx, rx) = oneshot::channel();
        self.pending.lock().expect("confirms lock").insert(id, tx);
        (id, rx)
    }

    fn forget(&self, id: u64) {
        self.pending.lock().expect("confirms lock").remove(&id);
    }

    /// A gateway's answer arrived.
    pub fn complete(&self, ack: &DeliveryAck) {
        if let Some(tx) = self.pending.lock().expect("confirms lock").remove(&ack.confirm) {
            let _ = tx.send(ack.delivered);
        }
    }
}

pub struct Publisher {
    table: Arc<TopicTable>,
    sequencer: Arc<Sequencer>,
    metrics: HubMetrics,
    pub confirms: Arc<Confirms>,
    confirm_timeout: Duration,
}

impl Publisher {
    pub fn new(
        table: Arc<TopicTable>,
        sequencer: Arc<Sequencer>,
        metrics: HubMetrics,
        confirms: Arc<Confirms>,
        confirm_timeout: Duration,
    ) -> Self {
        Self { table, sequencer, metrics, confirms, confirm_timeout }
    }

    pub fn sequencer(&self) -> &Arc<Sequencer> {
        &self.sequencer
    }

    fn reject(&self, reason: &str, status: Status) -> Status {
        self.metrics.rejected.with_label_values(&[reason]).inc();
        status
    }

    /// An engine failure: UNAVAILABLE, marked so the ingress knows this hub
    /// is fine (it still takes broadcasts and direct sends) and answers the
    /// publisher 503 + Retry-After with this message.
    pub fn engine_unavailable(&self, e: &EngineError) -> Status {
        tracing::debug!(error = %e, "channel state engine call failed");
        let mut status = Status::unavailable(format!("channel state unavailable: {}; retry later", e.public()));
        status.metadata_mut().insert(ENGINE_ERROR_HEADER, tonic::metadata::MetadataValue::from_static("unavailable"));
        status
    }

    /// Handle one publish (or relay), as the unary `Publish` answers it.
    pub async fn publish(&self, req: PublishRequest) -> Result<PublishResponse, Status> {
        let started = Instant::now();
        let target = Target::parse(req.target).map_err(|e| self.reject("invalid", Status::invalid_argument(e)))?;
        if let Some(relay) = req.relay {
            return Ok(self.relay(&target, req.data, req.exclude, req.id, relay));
        }
        if !req.event.is_empty() {
            return self.event(&target, req.event, req.data, req.exclude, req.id);
        }
        let kind = target.kind();
        let resp = match &target {
            // Positioned and routed by the sequencer: one channel's
            // messages reach every gateway queue in offset order.
            Target::Channel(ch) => {
                let publish = Publish { data: req.data, key: req.idempotency_key, exclude: req.exclude, id: req.id };
                self.sequencer
                    .publish(ch.clone(), publish)
                    .await
                    .map_err(|e| self.reject("engine_unavailable", self.engine_unavailable(&e)))?
            }
            Target::Connection(conn) => {
                if !self.table.has_gateway(conn.gateway().as_str()) {
                    return Err(self.reject(
                        "unknown_gateway",
                        Status::not_found(format!(
                            "connection {conn} is not connected: its gateway {} is not attached to this hub",
                            conn.gateway()
                        )),
                    ));
                }
                let delivery = target.delivery(req.data, Vec::new(), req.id, None);
                if req.confirm {
                    return self.confirmed(delivery, started).await;
                }
                let routed = self.table.route(delivery);
                PublishResponse { gateways: routed.queued, ..Default::default() }
            }
            Target::Broadcast | Target::User(_) => {
                let routed = self.table.route(target.delivery(req.data, req.exclude, req.id, None));
                PublishResponse { gateways: routed.queued, ..Default::default() }
            }
        };
        if kind != "channel" {
            // (The sequencer counts channel publishes as it routes them.)
            self.metrics.publishes.with_label_values(&[kind]).inc();
            self.metrics.publish_duration.observe(started.elapsed().as_secs_f64());
        }
        Ok(resp)
    }

    /// A channel event (join/leave): routed at once, unpositioned, not kept.
    fn event(
        &self,
        target: &Target,
        event: String,
        data: Bytes,
        exclude: Vec<String>,
        id: u64,
    ) -> Result<PublishResponse, Status> {
        if !matches!(target, Target::Channel(_)) || !matches!(event.as_str(), "join" | "leave") {
            return Err(
                self.reject("invalid", Status::invalid_argument("an event is \"join\" or \"leave\", on a channel"))
            );
        }
        let mut delivery = target.delivery(data, exclude, id, None);
        delivery.event = event;
        let routed = self.table.route(delivery);
        self.metrics.publishes.with_label_values(&["event"]).inc();
        Ok(PublishResponse { gateways: routed.queued, ..Default::default() })
    }

    /// A direct send answered with what its gateway says.
    async fn confirmed(&self, mut delivery: Delivery, started: Instant) -> Result<PublishResponse, Status> {
        let (id, answer) = self.confirms.register();
        delivery.confirm = id;
        let routed = self.table.route(delivery);
        self.metrics.publishes.with_label_values(&["connection"]).inc();
        if routed.queued == 0 {
            self.confirms.forget(id);
            return Err(Status::unavailable("the gateway's queue at this hub is full; retry"));
        }
        let confirmed = match tokio::time::timeout(self.confirm_timeout, answer).await {
            Ok(Ok(true)) => Confirmed::Delivered,
            Ok(Ok(false)) => Confirmed::UnknownConnection,
            // Timed out, or the gateway's stream ended first.
            Ok(Err(_)) | Err(_) => {
                self.confirms.forget(id);
                Confirmed::Timeout
            }
        };
        self.metrics.confirms.with_label_values(&[confirmed_label(confirmed)]).inc();
        self.metrics.publish_duration.observe(started.elapsed().as_secs_f64());
        Ok(PublishResponse { gateways: routed.queued, confirmed: confirmed as i32, ..Default::default() })
    }

    /// A copy of a publish its owner hub accepted, for the listed gateways
    /// (cut off from the owner): routed to them only, at the owner's
    /// position, and not recorded in this hub's history.
    fn relay(&self, target: &Target, data: Bytes, exclude: Vec<String>, id: u64, relay: Relay) -> PublishResponse {
        let delivery = target.delivery(data, exclude, id, Some((relay.epoch, relay.offset)));
        let routed = self.table.route_to(delivery, &relay.gateways);
        self.metrics.publishes.with_label_values(&["relay"]).inc();
        PublishResponse { gateways: routed.queued, ..Default::default() }
    }

    /// One item of a publish stream, answered as its result.
    pub async fn publish_item(&self, seq: u64, req: PublishRequest) -> PublishResult {
        let outcome = match self.publish(req).await {
            Ok(resp) => publish_result::Outcome::Ok(resp),
            Err(status) => publish_result::Outcome::Failure(PublishFailure {
                code: status.code() as i32,
                message: status.message().to_owned(),
                engine: status.metadata().contains_key(ENGINE_ERROR_HEADER),
            }),
        };
        PublishResult { seq, outcome: Some(outcome) }
    }
}

pub fn confirmed_label(c: Confirmed) -> &'static str {
    match c {
        Confirmed::Delivered => "delivered",
        Confirmed::UnknownConnection => "unknown_connection",
        Confirmed::Timeout => "timeout",
        Confirmed::Unspecified => "unspecified",
    }
}
