//! The sequencer: positions a channel's publishes through the engine and
//! routes them, so that one channel's messages enter every gateway queue in
//! offset order, whichever engine answers and however late.
//!
//! **The problem.** With the memory engine the hub used to position and
//! route a publish under the stream's mutex: the offset order *was* the
//! routing order. A Redis answer arrives asynchronously: if each publish
//! were sent on its own and routed when its answer came back, two
//! publishes of one channel in flight together could be routed in the
//! opposite order of their offsets. Their answers come back in the order
//! Redis executed them only on one connection, and only if the calls were
//! written in that order; the tasks that await them are then woken in any
//! order the runtime likes. Holding a lock across the round trip would fix
//! the order by making every publish wait a whole round trip for the
//! previous one.
//!
//! **The rule.** At most one engine call per channel is in flight, and it
//! carries *every* publish of that channel that arrived meanwhile (group
//! commit). The engine positions a batch atomically and gives its new
//! publishes consecutive, increasing offsets in batch order; the sequencer
//! routes the batch in that order before it starts the channel's next call.
//! So, per channel: call k+1 is sent after call k was answered and routed,
//! hence executed after it, hence its offsets are higher, and its publishes
//! are routed after call k's. Routing order = offset order, with no
//! assumption about how the transport orders answers. Different channels
//! never wait for each other: their calls are in flight together and are
//! pipelined on the engine's multiplexed connections. A busy channel does
//! not pay one round trip per publish either: while its call is out, its
//! publishes queue up and the next call takes them all, so its throughput
//! grows with the batch, not with the round trip.
//!
//! **Failover.** Two hubs can write one channel for a moment (an ingress
//! moved it while the old owner still finishes a call). Offsets stay unique
//! and increasing across them because the engine assigns them; each hub
//! routes its own in order; a gateway can then see the two hubs' streams
//! interleaved, and drops an offset at or below the last it delivered for
//! that channel and epoch (ws-gateway `fanout`).
//!
//! **Cost with the memory engine.** Its appends are done before they
//! return, so the publishing task runs the call and routes in place: no
//! task, no wake-up, as before. A task is spawned only for an engine call
//! that is not ready when first polled (Redis), and it owns the call and
//! its routing, so a publisher that goes away (a cancelled RPC) can never
//! leave a positioned message unrouted.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::oneshot;

use pushmesh_common::ids::Channel;
use pushmesh_common::proto::{Delivery, PublishResponse};

use crate::engine::{Appended, EngineError, NewEntry, SharedEngine, Slot};
use crate::metrics::HubMetrics;
use crate::topics::TopicTable;

/// Channels are spread over this many independently locked maps.
const SHARDS: usize = 64;

/// Batches a publishing task runs in place before it hands the channel to
/// a task (so one hot channel cannot keep a publisher from returning).
const INLINE_BATCHES: usize = 4;

/// One channel publish, as the ingress sent it.
#[derive(Debug)]
pub struct Publish {
    pub data: Bytes,
    /// Idempotency key (empty: none).
    pub key: String,
    pub exclude: Vec<String>,
    pub id: u64,
}

struct Waiter {
    publish: Publish,
    started: Instant,
    done: oneshot::Sender<Result<PublishResponse, EngineError>>,
}

/// A channel's publishes waiting for the call in flight to finish. A
/// channel is in its shard's map exactly while a call for it is in flight.
type Shard = Mutex<HashMap<Channel, Vec<Waiter>>>;

pub struct Sequencer {
    engine: SharedEngine,
    table: Arc<TopicTable>,
    metrics: HubMetrics,
    shards: Box<[Shard]>,
    hasher: std::collections::hash_map::RandomState,
}

impl Sequencer {
    pub fn new(engine: SharedEngine, table: Arc<TopicTable>, metrics: HubMetrics) -> Self {
        Self {
            engine,
            table,
            metrics,
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: Default::default(),
        }
    }

    pub fn engine(&self) -> &SharedEngine {
        &self.engine
    }

    fn shard(&self, channel: &Channel) -> &Shard {
        &self.shards[self.hasher.hash_one(channel) as usize % SHARDS]
    }

    /// Position and route one publish; answers once it is routed (or the
    /// engine failed).
    pub async fn publish(self: &Arc<Self>, channel: Channel, publish: Publish) -> Result<PublishResponse, EngineError> {
        if let Err(e) = self.engine.status() {
            self.metrics.engine_errors.with_label_values(&["refused_while_down"]).inc();
            return Err(e);
        }
        let (done, answer) = oneshot::channel();
        let waiter = Waiter { publish, started: Instant::now(), done };
        let lead = {
            let mut shard = self.shard(&channel).lock().expect("sequencer lock");
            match shard.get_mut(&channel) {
                Some(waiting) => {
                    waiting.push(waiter);
                    None
                }
                None => {
                    shard.insert(channel.clone(), Vec::new());
                    Some(waiter)
                }
            }
        };
        if let Some(waiter) = lead {
            self.clone().drive(channel, vec![waiter], INLINE_BATCHES);
        }
        answer.await.unwrap_or_else(|_| {
            Err(EngineError::Failed { engine: self.engine.name(), reason: "the publish was dropped".to_owned() })
        })
    }

    /// Run `batch`'s call and route it, then the channel's next batches,
    /// until none is waiting. In place while calls complete at once (up to
    /// `inline` batches); in a task from the first call that does not.
    fn drive(self: Arc<Self>, channel: Channel, mut batch: Vec<Waiter>, mut inline: usize) {
        loop {
            let entries =
                batch.iter().map(|w| NewEntry { data: w.publish.data.clone(), key: w.publish.key.clone() }).collect();
            self.metrics.sequencer_batch.observe(batch.len() as f64);
            let mut call = self.engine.append(&channel, entries);
            let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
            match Pin::new(&mut call).poll(&mut cx) {
                Poll::Ready(result) => self.finish(&channel, batch, result),
                Poll::Pending => {
                    tokio::spawn(async move {
                        let result = call.await;
                        self.finish(&channel, batch, result);
                        if let Some(next) = self.next_batch(&channel) {
                            self.drive(channel, next, 0);
                        }
                    });
                    return;
                }
            }
            let Some(next) = self.next_batch(&channel) else { return };
            if inline == 0 {
                tokio::spawn(async move { self.drive(channel, next, INLINE_BATCHES) });
                return;
            }
            inline -= 1;
            batch = next;
        }
    }

    /// The publishes that queued up behind the call just finished, or
    /// `None` (and the channel leaves the map) when there are none.
    fn next_batch(&self, channel: &Channel) -> Option<Vec<Waiter>> {
        let mut shard = self.shard(channel).lock().expect("sequencer lock");
        let waiting = shard.get_mut(channel).expect("a channel with a call in flight is in its shard");
        if waiting.is_empty() {
            shard.remove(channel);
            None
        } else {
            Some(std::mem::take(waiting))
        }
    }

    /// Route a positioned batch in order and answer its publishers.
    fn finish(&self, channel: &Channel, batch: Vec<Waiter>, result: Result<Appended, EngineError>) {
        let result = result.and_then(|a| {
            if a.slots.len() == batch.len() {
                Ok(a)
            } else {
                Err(EngineError::Failed {
                    engine: self.engine.name(),
                    reason: format!("{} positions for {} publishes", a.slots.len(), batch.len()),
                })
            }
        });
        let appended = match result {
            Ok(a) => a,
            Err(e) => {
                for w in batch {
                    let _ = w.done.send(Err(e.clone()));
                }
                return;
            }
        };
        let topic = channel.topic();
        for (w, slot) in batch.into_iter().zip(appended.slots) {
            let resp = match slot {
                Slot::Duplicate(offset) => {
                    PublishResponse { epoch: appended.epoch.clone(), offset, duplicate: true, ..Default::default() }
                }
                Slot::New(offset) => {
                    let delivery = Delivery {
                        topic: topic.clone(),
                        channel: channel.as_str().to_owned(),
                        data: w.publish.data,
                        exclude: w.publish.exclude,
                        epoch: appended.epoch.clone(),
                        offset,
                        id: w.publish.id,
                        ..Default::default()
                    };
                    let routed = self.table.route(delivery);
                    PublishResponse {
                        gateways: routed.queued,
                        epoch: appended.epoch.clone(),
                        offset,
                        ..Default::default()
                    }
                }
            };
            self.metrics.publishes.with_label_values(&["channel"]).inc();
            self.metrics.publish_duration.observe(w.started.elapsed().as_secs_f64());
            // The publisher may have gone (a cancelled RPC): the message is
            // positioned and routed all the same.
            let _ = w.done.send(Ok(resp));
        }
    }
}
