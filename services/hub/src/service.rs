//! The `pushmesh.v1.Hub` gRPC service, reading like the proto. Routing
//! lives in `topics`, stream handling in `attach`, publishing in `publish`.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use pushmesh_common::ids::{Channel, GatewayId};
use pushmesh_common::proto::hub_server::Hub;
use pushmesh_common::proto::{
    AttachRequest, Delivery, HistoryRequest, HistoryResponse, MembersRequest, MembersResponse, PublishBatch,
    PublishRequest, PublishResponse, PublishResults, QueryRequest, QueryResponse, attach_request,
};

use crate::attach::{self, AttachSettings, AttachStream};
use crate::engine::ReadQuery;
use crate::identity::{Access, Rpc};
use crate::metrics::HubMetrics;
use crate::publish::Publisher;
use crate::query::{Queries, QueryError};
use crate::topics::TopicTable;

pub use crate::publish::ENGINE_ERROR_HEADER;

/// Publish batches answered at once per stream, before the hub stops
/// reading the next (HTTP/2 flow control then holds the publisher back).
const STREAM_RESULTS_QUEUE: usize = 16;

pub struct HubService {
    table: Arc<TopicTable>,
    publisher: Arc<Publisher>,
    queries: Arc<Queries>,
    metrics: HubMetrics,
    settings: AttachSettings,
    access: Access,
    shutdown: CancellationToken,
}

impl HubService {
    pub fn new(
        table: Arc<TopicTable>,
        publisher: Arc<Publisher>,
        metrics: HubMetrics,
        settings: AttachSettings,
        access: Access,
        shutdown: CancellationToken,
    ) -> Self {
        Self { table, publisher, queries: Arc::default(), metrics, settings, access, shutdown }
    }
}

#[tonic::async_trait]
impl Hub for HubService {
    type AttachStream = AttachStream;

    async fn attach(&self, request: Request<Streaming<AttachRequest>>) -> Result<Response<Self::AttachStream>, Status> {
        let caller = self.access.check(&request, Rpc::Attach)?;
        let mut inbound = request.into_inner();
        let first =
            inbound.message().await?.ok_or_else(|| Status::invalid_argument("attach stream ended before hello"))?;
        let Some(attach_request::Kind::Hello(hello)) = first.kind else {
            return Err(Status::invalid_argument("the first attach message must be hello"));
        };
        let gateway = GatewayId::new(hello.gateway_id).map_err(|e| Status::invalid_argument(format!("hello: {e}")))?;
        self.access.check_gateway_id(&caller, gateway.as_str())?;
        if self.shutdown.is_cancelled() {
            return Err(Status::unavailable("hub is shutting down"));
        }
        let stream = attach::start(
            gateway.as_str().to_owned(),
            hello.instance,
            inbound,
            self.table.clone(),
            self.queries.clone(),
            self.publisher.confirms.clone(),
            self.metrics.clone(),
            &self.settings,
            self.shutdown.clone(),
        )
        .map_err(|taken| {
            self.metrics.denied.with_label_values(&["duplicate_gateway"]).inc();
            tracing::warn!(gateway = %taken.gateway, "refused a second attach with a live gateway's id");
            Status::already_exists(taken.to_string())
        })?;
        Ok(Response::new(stream))
    }

    async fn publish(&self, request: Request<PublishRequest>) -> Result<Response<PublishResponse>, Status> {
        self.access.check(&request, Rpc::Publish)?;
        self.publisher.publish(request.into_inner()).await.map(Response::new)
    }

    type PublishStreamStream = ReceiverStream<Result<PublishResults, Status>>;

    /// Each batch's publishes are started in order (so one channel's are
    /// positioned in the order sent: the sequencer queues them as they are
    /// first polled, which `join_all` does in order) and answered together.
    async fn publish_stream(
        &self,
        request: Request<Streaming<PublishBatch>>,
    ) -> Result<Response<Self::PublishStreamStream>, Status> {
        self.access.check(&request, Rpc::PublishStream)?;
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(STREAM_RESULTS_QUEUE);
        let publisher = self.publisher.clone();
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            loop {
                let batch = tokio::select! {
                    m = inbound.message() => m,
                    _ = shutdown.cancelled() => return,
                };
                let batch = match batch {
                    Ok(Some(batch)) => batch,
                    Ok(None) => return,
                    // Say why (a frame over --max-message-bytes: OUT_OF_RANGE),
                    // so the ingress answers 413 instead of taking this hub
                    // for down.
                    Err(status) => {
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                };
                let items = batch.items.into_iter().map(|item| {
                    let publisher = &publisher;
                    async move { publisher.publish_item(item.seq, item.request.unwrap_or_default()).await }
                });
                let results = PublishResults { items: futures_util::future::join_all(items).await };
                if tx.send(Ok(results)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn members(&self, request: Request<MembersRequest>) -> Result<Response<MembersResponse>, Status> {
        self.access.check(&request, Rpc::Members)?;
        Ok(Response::new(MembersResponse { hub_id: self.settings.hub_id.clone(), gateways: self.table.members() }))
    }

    async fn history(&self, request: Request<HistoryRequest>) -> Result<Response<HistoryResponse>, Status> {
        self.access.check(&request, Rpc::History)?;
        let req = request.into_inner();
        let ch = Channel::new(req.channel).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let since = (!req.from_oldest).then_some((req.epoch, req.offset));
        let page = self
            .publisher
            .sequencer()
            .engine()
            .read(&ch, ReadQuery { since, limit: req.limit as usize })
            .await
            .map_err(|e| self.publisher.engine_unavailable(&e))?;
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
        self.access.check(&request, Rpc::Query)?;
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
