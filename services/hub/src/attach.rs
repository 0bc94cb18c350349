//! One gateway's `Attach` stream.
//!
//! Two tasks per stream: the *reader* applies the gateway's subscribe and
//! unsubscribe messages to the topic table and acks them in order with the
//! deliveries; the *forwarder* drains the gateway's bounded queue and packs
//! whatever is waiting (up to `batch_max`) into one `Deliveries` message, so
//! a burst of publishes costs one HTTP/2 write, not one per message.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Status, Streaming};

use pushmesh_common::proto::{
    AttachRequest, AttachResponse, Attached, Deliveries, TopicsAck, attach_request, attach_response,
};

use crate::metrics::HubMetrics;
use crate::publish::Confirms;
use crate::query::Queries;
use crate::topics::{Link, Outbound, TopicTable};

pub type AttachStream = ReceiverStream<Result<AttachResponse, Status>>;

pub struct AttachSettings {
    pub hub_id: String,
    /// How long a query waits for gateways' answers.
    pub query_timeout_ms: u64,
    pub queue: usize,
    pub batch_max: usize,
}

/// Start serving a stream whose `Hello` named `gateway` (refused when a
/// live stream of another instance holds that id: see `TopicTable::attach`).
#[allow(clippy::too_many_arguments)]
pub fn start(
    gateway: String,
    instance: String,
    inbound: Streaming<AttachRequest>,
    table: Arc<TopicTable>,
    queries: Arc<Queries>,
    confirms: Arc<Confirms>,
    metrics: HubMetrics,
    settings: &AttachSettings,
    shutdown: CancellationToken,
) -> Result<AttachStream, crate::topics::Taken> {
    let (queue_tx, queue_rx) = mpsc::channel(settings.queue);
    // A few batches in flight to tonic; past that the forwarder waits, the
    // queue fills, and routing starts dropping for this gateway only.
    let (resp_tx, resp_rx) = mpsc::channel(4);
    let link = table.attach(gateway.clone(), instance, queue_tx)?;
    tracing::info!(%gateway, link = link.id, "gateway attached");

    let hello =
        AttachResponse { kind: Some(attach_response::Kind::Attached(Attached { hub_id: settings.hub_id.clone() })) };
    // Capacity 4 and nothing sent yet: this cannot fail.
    let _ = resp_tx.try_send(Ok(hello));

    tokio::spawn(forward(queue_rx, resp_tx, metrics, settings.batch_max));
    tokio::spawn(read(link, inbound, table, queries, confirms, shutdown));
    Ok(ReceiverStream::new(resp_rx))
}

async fn read(
    link: Arc<Link>,
    mut inbound: Streaming<AttachRequest>,
    table: Arc<TopicTable>,
    queries: Arc<Queries>,
    confirms: Arc<Confirms>,
    shutdown: CancellationToken,
) {
    let why = loop {
        let msg = tokio::select! {
            m = inbound.message() => m,
            _ = link.closed.cancelled() => break "replaced by a newer stream".to_owned(),
            _ = shutdown.cancelled() => break "hub shutting down".to_owned(),
        };
        let req = match msg {
            Ok(Some(req)) => req,
            Ok(None) => break "stream ended".to_owned(),
            Err(status) => break format!("stream error: {}", status.message()),
        };
        let (request_id, subscribe, topics) = match req.kind {
            Some(attach_request::Kind::Subscribe(c)) => (c.request_id, true, c.topics),
            Some(attach_request::Kind::Unsubscribe(c)) => (c.request_id, false, c.topics),
            Some(attach_request::Kind::QueryReply(r)) => {
                queries.complete(r);
                continue;
            }
            Some(attach_request::Kind::Acks(acks)) => {
                for ack in &acks.items {
                    confirms.complete(ack);
                }
                continue;
            }
            Some(attach_request::Kind::Links(links)) => {
                tracing::debug!(gateway = %link.gateway, hubs = ?links.hub_ids, "gateway declared its hubs");
                table.declare(&link, links);
                continue;
            }
            Some(attach_request::Kind::Hello(_)) | None => {
                tracing::warn!(gateway = %link.gateway, "ignoring unexpected attach message");
                continue;
            }
        };
        if subscribe {
            table.subscribe(&link, &topics);
        } else {
            table.unsubscribe(&link, &topics);
        }
        // The ack must not be dropped: wait for room behind the deliveries.
        if link.queue.send(Outbound::Ack(request_id)).await.is_err() {
            break "stream closed".to_owned();
        }
    };
    table.detach(&link);
    tracing::info!(gateway = %link.gateway, link = link.id, reason = %why, "gateway detached");
    // Dropping `link` (and the table's clones, gone with detach) closes the
    // queue; the forwarder then flushes and ends the response stream.
}

/// Drain the gateway's queue into the response stream until either ends.
/// If the stream ends first (the gateway left), what was queued for it is
/// counted as dropped: accepted messages are never lost uncounted.
async fn forward(
    mut queue: mpsc::Receiver<Outbound>,
    resp: mpsc::Sender<Result<AttachResponse, Status>>,
    metrics: HubMetrics,
    batch_max: usize,
) {
    let mut items = Vec::new();
    let lost = forward_until_gone(&mut queue, &resp, &metrics, batch_max, &mut items).await;
    if let Some(in_flight) = lost {
        queue.close();
        let mut n = in_flight;
        while let Ok(item) = queue.try_recv() {
            n += usize::from(matches!(item, Outbound::Delivery(_)));
        }
        if n > 0 {
            metrics.dropped.with_label_values(&["gateway_gone"]).inc_by(n as u64);
        }
    }
}

/// `None` when the queue ended (all forwarded); `Some(n)` when the stream
/// went away with `n` deliveries in the batch that could not be sent.
async fn forward_until_gone(
    queue: &mut mpsc::Receiver<Outbound>,
    resp: &mpsc::Sender<Result<AttachResponse, Status>>,
    metrics: &HubMetrics,
    batch_max: usize,
    items: &mut Vec<pushmesh_common::proto::Delivery>,
) -> Option<usize> {
    while let Some(first) = queue.recv().await {
        let mut next = Some(first);
        while let Some(item) = next.take() {
            match item {
                Outbound::Delivery(d) => {
                    items.push(d);
                    if items.len() < batch_max {
                        next = queue.try_recv().ok();
                    }
                }
                Outbound::Ack(_) | Outbound::Query(_) => {
                    // Deliveries queued before it go out before it.
                    if let Err(n) = flush(items, resp, metrics).await {
                        return Some(n);
                    }
                    let kind = match item {
                        Outbound::Ack(request_id) => attach_response::Kind::TopicsAck(TopicsAck { request_id }),
                        Outbound::Query(q) => attach_response::Kind::Query(q),
                        Outbound::Delivery(_) => unreachable!("matched above"),
                    };
                    if resp.send(Ok(AttachResponse { kind: Some(kind) })).await.is_err() {
                        return Some(0);
                    }
                    next = queue.try_recv().ok();
                }
            }
        }
        if let Err(n) = flush(items, resp, metrics).await {
            return Some(n);
        }
    }
    None
}

async fn flush(
    items: &mut Vec<pushmesh_common::proto::Delivery>,
    resp: &mpsc::Sender<Result<AttachResponse, Status>>,
    metrics: &HubMetrics,
) -> Result<(), usize> {
    if items.is_empty() {
        return Ok(());
    }
    let n = items.len();
    let batch =
        AttachResponse { kind: Some(attach_response::Kind::Deliveries(Deliveries { items: std::mem::take(items) })) };
    metrics.batches.inc();
    resp.send(Ok(batch)).await.map_err(|_| n)
}
