//! Per-channel order at the gateway: a channel message at or before the
//! last offset it delivered (a repeat, or a late copy from a hub that
//! routed the channel during a failover) is dropped and counted, never
//! shown to clients as offsets going backwards; a message that skips
//! offsets is delivered and counted as a gap.
//!
//! Two real hubs cannot be made to interleave one channel's deliveries on
//! cue, so the gateway here is attached to a hub written for this test: a
//! real gRPC server speaking the hub's `Attach` protocol, which answers
//! subscriptions and then sends exactly the deliveries a failover window
//! produces. The gateway and the WebSocket client are the real ones.

use std::sync::{Arc, Mutex};

use serde_json::json;
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status, Streaming};

use pushmesh_common::proto::hub_server::{Hub, HubServer};
use pushmesh_common::proto::{
    AttachRequest, AttachResponse, Attached, Deliveries, Delivery, HistoryRequest, HistoryResponse, MembersRequest,
    MembersResponse, PublishBatch, PublishRequest, PublishResponse, PublishResults, QueryRequest, QueryResponse,
    TopicsAck, attach_request, attach_response,
};
use pushmesh_tests::{Client, Proc, metrics, sample, wait_ready};

type Out = mpsc::Sender<Result<AttachResponse, Status>>;

/// A hub that acknowledges every topic change and hands the test the
/// stream to the gateway, to send deliveries on.
#[derive(Clone, Default)]
struct ScriptedHub {
    gateway: Arc<Mutex<Option<Out>>>,
}

#[tonic::async_trait]
impl Hub for ScriptedHub {
    type AttachStream = ReceiverStream<Result<AttachResponse, Status>>;
    type PublishStreamStream = ReceiverStream<Result<PublishResults, Status>>;

    async fn attach(&self, request: Request<Streaming<AttachRequest>>) -> Result<Response<Self::AttachStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(64);
        let attached = attach_response::Kind::Attached(Attached { hub_id: "scripted".into() });
        tx.send(Ok(AttachResponse { kind: Some(attached) })).await.expect("fresh channel");
        *self.gateway.lock().unwrap() = Some(tx.clone());
        tokio::spawn(async move {
            while let Ok(Some(m)) = inbound.message().await {
                if let Some(attach_request::Kind::Subscribe(c) | attach_request::Kind::Unsubscribe(c)) = m.kind {
                    let ack = attach_response::Kind::TopicsAck(TopicsAck { request_id: c.request_id });
                    if tx.send(Ok(AttachResponse { kind: Some(ack) })).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn publish(&self, _: Request<PublishRequest>) -> Result<Response<PublishResponse>, Status> {
        Err(Status::unimplemented("scripted hub"))
    }

    async fn publish_stream(
        &self,
        _: Request<Streaming<PublishBatch>>,
    ) -> Result<Response<Self::PublishStreamStream>, Status> {
        Err(Status::unimplemented("scripted hub"))
    }

    async fn query(&self, _: Request<QueryRequest>) -> Result<Response<QueryResponse>, Status> {
        Err(Status::unimplemented("scripted hub"))
    }

    async fn history(&self, _: Request<HistoryRequest>) -> Result<Response<HistoryResponse>, Status> {
        Err(Status::unimplemented("scripted hub"))
    }

    async fn members(&self, _: Request<MembersRequest>) -> Result<Response<MembersResponse>, Status> {
        Err(Status::unimplemented("scripted hub"))
    }
}

fn message(epoch: &str, offset: u64) -> Delivery {
    Delivery {
        topic: "c:news".into(),
        data: format!("{offset}").into_bytes().into(),
        channel: "news".into(),
        epoch: epoch.into(),
        offset,
        ..Default::default()
    }
}

#[tokio::test]
async fn the_gateway_drops_stale_offsets_and_counts_gaps() -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let hub_addr = listener.local_addr()?;
    let hub = ScriptedHub::default();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(HubServer::new(hub.clone()))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    let gw = Proc::start(
        "ws-gateway",
        &["--listen-addr", "127.0.0.1:0", "--hub", &format!("http://{hub_addr}"), "--gateway-id", "gw-order"],
    )
    .await?;
    let http = gw.addr("http");
    wait_ready(http).await?;
    let mut client = Client::connect(http, "").await?;
    client.subscribe("news").await?;
    let to_gateway = hub.gateway.lock().unwrap().clone().expect("the gateway attached");

    // The owner's 1 and 2; a late copy of 2 and an older 1 from the hub that
    // routed the channel a moment ago; the owner's 3; then 6 (4 and 5 never
    // came here: a gap); then another epoch, which starts over.
    let items = vec![
        message("e1", 1),
        message("e1", 2),
        message("e1", 2),
        message("e1", 1),
        message("e1", 3),
        message("e1", 6),
        message("e1", 5),
        message("e2", 1),
    ];
    let deliveries = attach_response::Kind::Deliveries(Deliveries { items });
    to_gateway.send(Ok(AttachResponse { kind: Some(deliveries) })).await?;

    let mut got = Vec::new();
    for _ in 0..5 {
        let frame = client.next_json().await?;
        got.push((frame["epoch"].clone(), frame["offset"].clone()));
    }
    let expected: Vec<_> = [("e1", 1), ("e1", 2), ("e1", 3), ("e1", 6), ("e2", 1)]
        .into_iter()
        .map(|(e, o)| (json!(e), json!(o)))
        .collect();
    assert_eq!(got, expected, "offsets only go forward within an epoch");

    let text = metrics(http).await?;
    assert_eq!(sample(&text, "pushmesh_gateway_stale_dropped_total", &[]), 3.0, "2, 1 and 5 came late");
    assert_eq!(sample(&text, "pushmesh_gateway_offset_gaps_total", &[]), 1.0, "3 → 6");

    // The channel's position is forgotten with its last member: a new
    // subscriber starts from whatever arrives next.
    client.command(json!({"op": "unsubscribe", "channel": "news"})).await?;
    client.subscribe("news").await?;
    let deliveries = attach_response::Kind::Deliveries(Deliveries { items: vec![message("e1", 4)] });
    to_gateway.send(Ok(AttachResponse { kind: Some(deliveries) })).await?;
    assert_eq!(client.next_json().await?["offset"], json!(4));
    server.abort();
    Ok(())
}
