//! One long-lived publish stream to one hub (`Hub.PublishStream`).
//!
//! A unary `Publish` is a whole HTTP/2 request: new stream, HPACK-encoded
//! headers both ways, trailers, and a hop through tonic's request buffer
//! task. On this stream a publish is a few bytes of an already open one:
//! whatever publishes are waiting when the writer wakes go out as one
//! batch (one DATA frame), and the hub answers each batch with one message
//! of per-item results, matched back by `seq`. Concurrent publishes thus
//! coalesce by themselves under load, with no added delay when idle.
//!
//! A frame holds at most `frame_bytes` of publishes (one larger publish
//! goes alone): the hub refuses a message above its --max-message-bytes by
//! ending the whole stream, which would fail every publish in flight on it.
//! `frame_budget` checks at start-up that any one body fits.
//!
//! The stream is opened on first use and again after it breaks. When it
//! breaks, every publish waiting on it fails as UNAVAILABLE (the caller may
//! try the next hub, as after a unary call that got no answer: a publish
//! the hub did take may then be delivered twice, which idempotency keys
//! prevent for channel publishes).

use std::collections::HashMap;
use std::sync::Mutex;

use prost::Message as _;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::transport::Channel;
use tonic::{Code, Status};

use pushmesh_common::proto::hub_client::HubClient;
use pushmesh_common::proto::{PublishBatch, PublishItem, PublishRequest, PublishResponse, publish_result};

/// Set by a hub on an UNAVAILABLE that comes from its channel state engine
/// (the hub's `publish::ENGINE_ERROR_HEADER`).
pub const ENGINE_ERROR_HEADER: &str = "pushmesh-engine-error";

/// Most publishes in one batch.
const MAX_BATCH: usize = 512;

/// Room for a publish's own fields and a frame's framing, next to a body.
const FRAMING_BYTES: u64 = 64 << 10;

/// The byte budget of one publish stream frame for these limits, or why
/// they do not fit together: a body the ingress accepts must fit in one
/// hub message.
pub fn frame_budget(max_body_bytes: u64, hub_max_message_bytes: u64) -> anyhow::Result<usize> {
    anyhow::ensure!(
        max_body_bytes.saturating_add(FRAMING_BYTES) <= hub_max_message_bytes,
        "--max-body-bytes ({max_body_bytes}) must leave {FRAMING_BYTES} bytes of framing under the hubs' message limit \
         (--hub-max-message-bytes, {hub_max_message_bytes}; the hubs' --max-message-bytes): a larger publish would be \
         refused by the hub. Lower --max-body-bytes or raise both message limits"
    );
    Ok(usize::try_from(hub_max_message_bytes - FRAMING_BYTES).unwrap_or(usize::MAX))
}

/// Publishes waiting for the writer; past this, publishers wait.
const QUEUE: usize = 8192;

type Answer = oneshot::Sender<Result<PublishResponse, Status>>;

struct Pending {
    req: PublishRequest,
    done: Answer,
}

pub struct PublishStream {
    channel: Channel,
    frame_bytes: usize,
    current: Mutex<Option<mpsc::Sender<Pending>>>,
    tasks: TaskTracker,
    /// Ends the stream's task (the ingress is stopping).
    stop: CancellationToken,
}

impl PublishStream {
    pub fn new(channel: Channel, frame_bytes: usize, tasks: TaskTracker, stop: CancellationToken) -> Self {
        Self { channel, frame_bytes, current: Mutex::default(), tasks, stop }
    }

    /// Publish over the stream (opening it if needed); answered as a unary
    /// `Publish` would be.
    ///
    /// The publish is queued for the stream when this is first polled,
    /// with no await before it (tokio's cooperative budget could otherwise
    /// postpone it): publishes started in an order are sent in that order,
    /// which `/batch` and the gRPC stream rely on for one channel.
    pub async fn publish(&self, req: PublishRequest) -> Result<PublishResponse, Status> {
        let closed = || Status::unavailable("the publish stream to this hub closed");
        let (done, answer) = oneshot::channel();
        let tx = self.sender();
        match tx.try_send(Pending { req, done }) {
            Ok(()) => {}
            // A full queue: wait for room (order is not kept past this point).
            Err(mpsc::error::TrySendError::Full(p)) => tx.send(p).await.map_err(|_| closed())?,
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(closed()),
        }
        answer.await.map_err(|_| Status::unavailable("the publish stream to this hub ended before it answered"))?
    }

    fn sender(&self) -> mpsc::Sender<Pending> {
        let mut current = self.current.lock().expect("stream lock");
        if let Some(tx) = current.as_ref().filter(|tx| !tx.is_closed()) {
            return tx.clone();
        }
        let (tx, rx) = mpsc::channel(QUEUE);
        self.tasks.spawn(run(self.channel.clone(), rx, self.frame_bytes, self.stop.clone()));
        *current = Some(tx.clone());
        tx
    }
}

/// Drive one stream until it breaks or nobody can publish on it any more.
async fn run(channel: Channel, mut queue: mpsc::Receiver<Pending>, frame_bytes: usize, stop: CancellationToken) {
    let (batches, batches_rx) = mpsc::channel::<PublishBatch>(64);
    let mut client = HubClient::new(channel).max_decoding_message_size(64 << 20);
    let mut results = match client.publish_stream(ReceiverStream::new(batches_rx)).await {
        Ok(r) => r.into_inner(),
        Err(status) => return fail_all(&mut queue, HashMap::new(), &status),
    };
    let mut waiting: HashMap<u64, Answer> = HashMap::new();
    let mut next_seq = 1u64;
    let error = loop {
        tokio::select! {
            _ = stop.cancelled() => break Status::unavailable("the ingress is stopping"),
            first = queue.recv() => {
                let Some(first) = first else { return };
                let mut items = Vec::with_capacity(16);
                let mut bytes = 0;
                let mut next = Some(first);
                let mut carry = None;
                while let Some(Pending { req, done }) = next.take() {
                    let item = PublishItem { seq: next_seq, request: Some(req) };
                    let size = item.encoded_len() + 8;
                    if !items.is_empty() && bytes + size > frame_bytes {
                        // Full: this one opens the next frame.
                        carry = Some((item, done));
                        break;
                    }
                    bytes += size;
                    waiting.insert(next_seq, done);
                    items.push(item);
                    next_seq += 1;
                    if items.len() < MAX_BATCH {
                        next = queue.try_recv().ok();
                    }
                }
                if batches.send(PublishBatch { items }).await.is_err() {
                    break Status::unavailable("the publish stream to this hub closed");
                }
                if let Some((item, done)) = carry {
                    waiting.insert(next_seq, done);
                    next_seq += 1;
                    if batches.send(PublishBatch { items: vec![item] }).await.is_err() {
                        break Status::unavailable("the publish stream to this hub closed");
                    }
                }
            }
            answer = results.message() => match answer {
                Ok(Some(batch)) => {
                    for r in batch.items {
                        let Some(done) = waiting.remove(&r.seq) else { continue };
                        let _ = done.send(outcome(r.outcome));
                    }
                }
                Ok(None) => break Status::unavailable("the hub ended the publish stream"),
                Err(status) => break status,
            },
        }
    };
    tracing::debug!(error = %error.message(), "publish stream to a hub ended");
    // OUT_OF_RANGE (a frame over the hub's message limit) keeps its code:
    // the hub is up, the message too large (413), not "no hub" (503).
    let code = if error.code() == Code::OutOfRange { Code::OutOfRange } else { Code::Unavailable };
    fail_all(&mut queue, waiting, &Status::new(code, format!("publish stream ended: {}", error.message())));
}

/// Answer every publish sent on a broken stream, and every one still
/// queued for it, with `status`.
fn fail_all(queue: &mut mpsc::Receiver<Pending>, waiting: HashMap<u64, Answer>, status: &Status) {
    queue.close();
    let code = if status.code() == Code::Ok { Code::Unavailable } else { status.code() };
    for done in waiting.into_values() {
        let _ = done.send(Err(Status::new(code, status.message())));
    }
    while let Ok(p) = queue.try_recv() {
        let _ = p.done.send(Err(Status::new(code, status.message())));
    }
}

/// A result as a unary `Publish` would have answered.
fn outcome(outcome: Option<publish_result::Outcome>) -> Result<PublishResponse, Status> {
    match outcome {
        Some(publish_result::Outcome::Ok(resp)) => Ok(resp),
        Some(publish_result::Outcome::Failure(f)) => {
            let mut status = Status::new(Code::from_i32(f.code), f.message);
            if f.engine {
                status
                    .metadata_mut()
                    .insert(ENGINE_ERROR_HEADER, tonic::metadata::MetadataValue::from_static("unavailable"));
            }
            Err(status)
        }
        None => Err(Status::internal("the hub sent a result without an outcome")),
    }
}
