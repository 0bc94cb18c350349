//! The `pushmesh.v1.Hub` gRPC service: `Attach` and `Publish`, reading like
//! the proto. Routing lives in `topics`, stream handling in `attach`.

use std::sync::Arc;
use std::time::Instant;

use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use pushmesh_common::ids::{Channel, ConnectionId, GatewayId, topic};
use pushmesh_common::proto::hub_server::Hub;
use pushmesh_common::proto::{
    AttachRequest, Delivery, HistoryRequest, HistoryResponse, MembersRequest, MembersResponse, PublishRequest,
    PublishResponse, QueryRequest, QueryResponse, attach_request, publish_request,
};

use crate::attach::{self, AttachSettings, AttachStream};
use crate::engine::{EngineError, ReadQuery};
use crate::metrics::HubMetrics;
use crate::query::{Queries, QueryError};
use crate::sequencer::{Publish, Sequencer};
use crate::topics::TopicTable;

/// Set on an UNAVAILABLE that comes from the channel state engine, not
/// from the hub itself.
pub const ENGINE_ERROR_HEADER: &str = "pushmesh-engine-error";

pub struct HubService {
    table: Arc<TopicTable>,
    sequencer: Arc<Sequencer>,
    queries: Arc<Queries>,
    metrics: HubMetrics,
    settings: AttachSettings,
    shutdown: CancellationToken,
}

impl HubService {
    pub fn new(
        table: Arc<TopicTable>,
        sequencer: Arc<Sequencer>,
        metrics: HubMetrics,
        settings: AttachSettings,
        shutdown: CancellationToken,
    ) -> Self {
        Self { table, sequencer, queries: Arc::default(), metrics, settings, shutdown }
    }

    fn reject(&self, reason: &str, status: Status) -> Status {
        self.metrics.rejected.with_label_values(&[reason]).inc();
        status
    }

    /// An engine failure: UNAVAILABLE, marked so the ingress knows this hub
    /// is fine (it still takes broadcasts and direct sends) and answers the
    /// publisher 503 + Retry-After with this message.
    fn engine_unavailable(&self, e: &EngineError) -> Status {
        tracing::debug!(error = %e, "channel state engine call failed");
        let mut status = Status::unavailable(format!("channel state unavailable: {}; retry later", e.public()));
        status.metadata_mut().insert(ENGINE_ERROR_HEADER, tonic::metadata::MetadataValue::from_static("unavailable"));
        status
    }
}

impl HubService {
    /// A copy of a publish its owner hub accepted, for the listed gateways
    /// (cut off from the owner): routed to them only, at the owner's
    /// position, and not recorded in this hub's history.
    fn relay(
        &self,
        target: Option<publish_request::Target>,
        data: bytes::Bytes,
        exclude: Vec<String>,
        id: u64,
        relay: pushmesh_common::proto::Relay,
    ) -> Result<PublishResponse, Status> {
        let invalid = |msg: String| self.reject("invalid", Status::invalid_argument(msg));
        let mut d = Delivery { data, exclude, id, ..Default::default() };
        match target {
            Some(publish_request::Target::Channel(name)) => {
                let ch = Channel::new(name).map_err(|e| invalid(e.to_string()))?;
                d.topic = ch.topic();
                d.channel = ch.as_str().to_owned();
                d.epoch = relay.epoch;
                d.offset = relay.offset;
            }
            Some(publish_request::Target::Broadcast(_)) => d.topic = topic::BROADCAST.to_owned(),
            Some(publish_request::Target::Connection(id)) => {
                let conn = ConnectionId::parse(&id).map_err(|e| invalid(e.to_string()))?;
                d.topic = conn.gateway().topic();
                d.connection = conn.to_string();
                d.exclude.clear();
            }
            Some(publish_request::Target::User(user)) if !user.is_empty() => {
                d.topic = format!("{}{user}", topic::USER_PREFIX);
            }
            Some(publish_request::Target::User(_)) => return Err(invalid("user id is empty".to_owned())),
            None => return Err(invalid("publish needs a target".to_owned())),
        }
        let routed = self.table.route_to(d, &relay.gateways);
        self.metrics.publishes.with_label_values(&["relay"]).inc();
        Ok(PublishResponse { gateways: routed.queued, ..Default::default() })
    }
}

#[tonic::async_trait]
impl Hub for HubService {
    type AttachStream = AttachStream;

    async fn attach(&self, request: Request<Streaming<AttachRequest>>) -> Result<Response<Self::AttachStream>, Status> {
        let mut inbound = request.into_inner();
        let first =
            inbound.message().await?.ok_or_else(|| Status::invalid_argument("attach stream ended before hello"))?;
        let Some(attach_request::Kind::Hello(hello)) = first.kind else {
            return Err(Status::invalid_argument("the first attach message must be hello"));
        };
        let gateway = GatewayId::new(hello.gateway_id).map_err(|e| Status::invalid_argument(format!("hello: {e}")))?;
        if self.shutdown.is_cancelled() {
            return Err(Status::unavailable("hub is shutting down"));
        }
        let stream = attach::start(
            gateway.as_str().to_owned(),
            inbound,
            self.table.clone(),
            self.queries.clone(),
            self.metrics.clone(),
            &self.settings,
            self.shutdown.clone(),
        );
        Ok(Response::new(stream))
    }

    async fn publish(&self, request: Request<PublishRequest>) -> Result<Response<PublishResponse>, Status> {
        let started = Instant::now();
        let req = request.into_inner();
        let invalid = |msg: String| self.reject("invalid", Status::invalid_argument(msg));
        if let Some(relay) = req.relay {
            return self.relay(req.target, req.data, req.exclude, req.id, relay).map(Response::new);
        }
        let (kind, delivery) = match req.target {
            Some(publish_request::Target::Channel(name)) => {
                let ch = Channel::new(name).map_err(|e| invalid(e.to_string()))?;
                // Positioned and routed by the sequencer: one channel's
                // messages reach every gateway queue in offset order.
                let publish = Publish { data: req.data, key: req.idempotency_key, exclude: req.exclude, id: req.id };
                return match self.sequencer.publish(ch, publish).await {
                    Ok(resp) => Ok(Response::new(resp)),
                    Err(e) => Err(self.reject("engine_unavailable", self.engine_unavailable(&e))),
                };
            }
            Some(publish_request::Target::Broadcast(_)) => {
                let delivery = Delivery {
                    topic: topic::BROADCAST.to_owned(),
                    data: req.data,
                    exclude: req.exclude,
                    id: req.id,
                    ..Default::default()
                };
                ("broadcast", delivery)
            }
            Some(publish_request::Target::Connection(id)) => {
                let conn = ConnectionId::parse(&id).map_err(|e| invalid(e.to_string()))?;
                if !self.table.has_gateway(conn.gateway().as_str()) {
                    return Err(self.reject(
                        "unknown_gateway",
                        Status::not_found(format!(
                            "connection {conn} is not connected: its gateway {} is not attached to this hub",
                            conn.gateway()
                        )),
                    ));
                }
                let delivery = Delivery {
                    topic: conn.gateway().topic(),
                    connection: conn.to_string(),
                    data: req.data,
                    id: req.id,
                    ..Default::default()
                };
                ("connection", delivery)
            }
            Some(publish_request::Target::User(user)) => {
                if user.is_empty() {
                    return Err(invalid("user id is empty".to_owned()));
                }
                let delivery = Delivery {
                    topic: format!("{}{user}", topic::USER_PREFIX),
                    data: req.data,
                    exclude: req.exclude,
                    id: req.id,
                    ..Default::default()
                };
                ("user", delivery)
            }
            None => return Err(invalid("publish needs a target".to_owned())),
        };
        let routed = self.table.route(delivery);
        self.metrics.publishes.with_label_values(&[kind]).inc();
        self.metrics.publish_duration.observe(started.elapsed().as_secs_f64());
        Ok(Response::new(PublishResponse { gateways: routed.queued, ..Default::default() }))
    }

    async fn members(&self, _: Request<MembersRequest>) -> Result<Response<MembersResponse>, Status> {
        Ok(Response::new(MembersResponse { hub_id: self.settings.hub_id.clone(), gateways: self.table.members() }))
    }

    async fn history(&self, request: Request<HistoryRequest>) -> Result<Response<HistoryResponse>, Status> {
        let req = request.into_inner();
        let ch = Channel::new(req.channel).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let since = (!req.from_oldest).then_some((req.epoch, req.offset));
        let page = self
            .sequencer
            .engine()
            .read(&ch, ReadQuery { since, limit: req.limit as usize })
            .await
            .map_err(|e| self.engine_unavailable(&e))?;
        let topic = ch.topic();
        let messages = page
            .entries
            .into_iter()
            .map(|(offset, data)| Delivery {
                topic: topic.clone(),
                channel: ch.as_str().to_owned(),
                data,
                epoch: page.epoch.clone(),
                offset,
                ..Default::default()
            })
            .collect();
        Ok(Response::new(HistoryResponse { epoch: page.epoch, top: page.top, recovered: page.recovered, messages }))
    }

    async fn query(&self, request: Request<QueryRequest>) -> Result<Response<QueryResponse>, Status> {
        let req = request.into_inner();
        if req.op.as_ref().and_then(|o| o.op.as_ref()).is_none() {
            return Err(Status::invalid_argument("query needs an op"));
        }
        let deadline = std::time::Duration::from_millis(self.settings.query_timeout_ms);
        self.metrics.queries.inc();
        match self.queries.ask(&self.table, req, deadline).await {
            Ok(resp) => Ok(Response::new(resp)),
            Err(e @ QueryError::UnknownGateway(_)) => Err(Status::not_found(e.to_string())),
        }
    }
}
