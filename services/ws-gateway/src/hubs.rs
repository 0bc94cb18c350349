//! The gateway's links to the hubs: one task per hub endpoint, each holding
//! one `Attach` stream, reconnecting with capped exponential backoff (with
//! jitter, so a restarted hub is not stampeded) when it breaks.
//!
//! On every (re)attach a link sends `Hello`, then one subscribe carrying a
//! snapshot of everything this gateway needs (broadcast, its own topic,
//! every channel and user with local members), and counts as attached (and
//! the gateway as ready) only once the hub acked that snapshot. Later
//! interest changes arrive as commands from the registry (through
//! `links::HubLinks`), in order, are coalesced into as few stream messages
//! as possible, and their acks release the clients waiting for
//! "subscription live". Deliveries go to the fan-out, queries to `queries`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::transport::Endpoint;

use pushmesh_common::ids::{GatewayId, Topic};
use pushmesh_common::proto::hub_client::HubClient;
use pushmesh_common::proto::{
    AttachRequest, DeliveryAck, DeliveryAcks, Hello, TopicsChange, attach_request, attach_response,
};

use crate::fanout::Fanout;
use crate::links::{AttachedCount, HubLinks, LinkCmd, NewLink, unix_nanos};
use crate::metrics::GatewayMetrics;
use crate::queries::Queries;
use crate::registry::Registry;

/// What a link task works with.
pub struct LinkCtx {
    pub gateway: GatewayId,
    /// Drawn once per process and sent in every `Hello`: proves to a hub
    /// that a re-attach comes from this process (see `Hello.instance`).
    pub instance: String,
    pub links: Arc<HubLinks>,
    pub attached: Arc<AttachedCount>,
    /// Read for the interest snapshot on every (re)attach.
    pub registry: Arc<Registry>,
    pub fanout: Arc<Fanout>,
    pub queries: Arc<Queries>,
    pub metrics: GatewayMetrics,
    pub keepalive: Duration,
    pub reconnect_max: Duration,
    /// Owns the query tasks a link spawns.
    pub tasks: TaskTracker,
    /// The gateway's own shutdown (a link's stop token also fires when its
    /// hub leaves the hub set).
    pub shutdown: CancellationToken,
}

/// Keep one hub attached until shutdown, or until it leaves the hub set.
pub async fn run(link: NewLink, endpoint: Endpoint, ctx: Arc<LinkCtx>) {
    let NewLink { index, url, mut cmds, stop } = link;
    let min = Duration::from_millis(100);
    let max = ctx.reconnect_max.max(min);
    let mut backoff = min;
    loop {
        let ended = session(index, &endpoint, &mut cmds, &stop, &ctx).await;
        if stop.is_cancelled() {
            return;
        }
        let Some(error) = ended.error else { return };
        if ended.was_attached {
            backoff = min;
            tracing::warn!(hub = %url, %error, "hub link lost; re-attaching");
        } else if error.starts_with("attach refused") {
            // The hub answered and said no (a certificate without the
            // gateway role, another instance holding this id): an operator
            // must see it, not only a gateway that never gets ready.
            tracing::warn!(hub = %url, %error, "hub refused the attach; retrying");
        } else {
            tracing::debug!(hub = %url, %error, "hub not reachable; retrying");
        }
        // Jitter in [backoff/2, backoff].
        let wait = backoff.mul_f64(0.5 + rand::random::<f64>() * 0.5);
        let sleep = tokio::time::sleep(wait);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = &mut sleep => break,
                _ = stop.cancelled() => return,
                c = cmds.recv() => if c.is_none() { return },
            }
        }
        backoff = (backoff * 2).min(max);
    }
}

struct Ended {
    error: Option<String>,
    was_attached: bool,
}

async fn session(
    index: usize,
    endpoint: &Endpoint,
    cmds: &mut mpsc::Receiver<LinkCmd>,
    stop: &CancellationToken,
    ctx: &Arc<LinkCtx>,
) -> Ended {
    let fail = |e: String| Ended { error: Some(e), was_attached: false };
    // Connect, discarding interest changes meanwhile: the snapshot taken
    // right after covers them (waiting clients see their waiter dropped).
    let connect = endpoint.connect();
    tokio::pin!(connect);
    let channel = loop {
        tokio::select! {
            r = &mut connect => match r {
                Ok(c) => break c,
                Err(e) => return fail(format!("connect: {e}")),
            },
            c = cmds.recv() => if c.is_none() { return Ended { error: None, was_attached: false } },
            _ = stop.cancelled() => return Ended { error: None, was_attached: false },
        }
    };
    let mut client = HubClient::new(channel.clone()).max_decoding_message_size(64 << 20);
    let (out, out_rx) = mpsc::channel::<AttachRequest>(256);
    let mut interest = ctx.registry.interest();
    interest.push(Topic::Broadcast);
    interest.push(Topic::Gateway(ctx.gateway.clone()));
    let snapshot: Vec<String> = interest.iter().map(Topic::wire).collect();
    let hello = AttachRequest {
        kind: Some(attach_request::Kind::Hello(Hello {
            gateway_id: ctx.gateway.to_string(),
            instance: ctx.instance.clone(),
        })),
    };
    let snapshot_id = 1;
    let sub = AttachRequest {
        kind: Some(attach_request::Kind::Subscribe(TopicsChange { request_id: snapshot_id, topics: snapshot })),
    };
    // Capacity 256, nothing sent yet: these cannot fail.
    let _ = out.try_send(hello);
    let _ = out.try_send(sub);
    let response = tokio::select! {
        r = client.attach(ReceiverStream::new(out_rx)) => r,
        _ = stop.cancelled() => return Ended { error: None, was_attached: false },
    };
    let mut inbound = match response {
        Ok(r) => r.into_inner(),
        Err(status) => return fail(format!("attach refused: {}", status.message())),
    };

    let mut next_id = snapshot_id + 1;
    let mut pending: HashMap<u64, Vec<oneshot::Sender<()>>> = HashMap::new();
    let mut attached = false;
    let mut hub_id = None;
    let mut last_heard = Instant::now();
    let mut declared = ctx.links.declarations();
    let started = Instant::now();
    let error = loop {
        tokio::select! {
            _ = stop.cancelled() => break None,
            msg = inbound.message() => {
                let msg = match msg {
                    Ok(Some(m)) => {
                        last_heard = Instant::now();
                        m
                    }
                    Ok(None) => break Some("hub closed the stream".to_owned()),
                    Err(status) => break Some(format!("stream: {}", status.message())),
                };
                match msg.kind {
                    Some(attach_response::Kind::Deliveries(mut batch)) => {
                        ctx.metrics.hub_deliveries.inc_by(batch.items.len() as u64);
                        let dups = ctx.links.recent.retain_new(&mut batch.items);
                        if dups > 0 {
                            ctx.metrics.duplicates.inc_by(dups as u64);
                        }
                        let mut acks = Vec::new();
                        for d in &batch.items {
                            let delivered = ctx.fanout.deliver(d);
                            if d.confirm != 0 {
                                acks.push(DeliveryAck { confirm: d.confirm, delivered });
                            }
                        }
                        if !acks.is_empty() {
                            let msg = AttachRequest { kind: Some(attach_request::Kind::Acks(DeliveryAcks { items: acks })) };
                            if out.send(msg).await.is_err() {
                                break Some("attach stream closed".to_owned());
                            }
                        }
                    }
                    Some(attach_response::Kind::TopicsAck(ack)) => {
                        if ack.request_id == snapshot_id && !attached {
                            attached = true;
                            ctx.links.set_channel(index, Some(channel.clone()));
                            // The hub's id comes in its greeting, before any ack;
                            // a hub too old to greet is named by its endpoint.
                            let id = hub_id.take().unwrap_or_else(|| endpoint.uri().to_string());
                            ctx.links.set_attached(index, Some(id), 0, false);
                            ctx.attached.up();
                            tracing::info!(hub = ?endpoint.uri(), after_ms = started.elapsed().as_millis() as u64, "attached to hub");
                        } else if let Some(waiters) = pending.remove(&ack.request_id) {
                            for w in waiters {
                                let _ = w.send(());
                            }
                        }
                    }
                    Some(attach_response::Kind::Attached(a)) => {
                        tracing::debug!(hub_id = %a.hub_id, "hub greeted");
                        hub_id = (!a.hub_id.is_empty()).then_some(a.hub_id);
                    }
                    Some(attach_response::Kind::Query(q)) => {
                        // Answered on its own task: a server-side subscribe
                        // waits for this very stream's acks.
                        let (queries, out) = (ctx.queries.clone(), out.clone());
                        ctx.tasks.spawn(async move {
                            let reply = queries.answer(q).await;
                            let _ = out.send(AttachRequest { kind: Some(attach_request::Kind::QueryReply(reply)) }).await;
                        });
                    }
                    None => {}
                }
            }
            // Only once attached: the declaration includes this hub then.
            changed = declared.changed(), if attached => {
                if changed.is_err() {
                    break None;
                }
                let links = declared.borrow_and_update().clone();
                let msg = AttachRequest { kind: Some(attach_request::Kind::Links(links)) };
                if out.send(msg).await.is_err() {
                    break Some("attach stream closed".to_owned());
                }
            }
            cmd = cmds.recv() => {
                let Some(cmd) = cmd else { break None };
                let mut batch = vec![cmd];
                while batch.len() < 1024 {
                    match cmds.try_recv() {
                        Ok(c) => batch.push(c),
                        Err(_) => break,
                    }
                }
                if let Err(e) = send_commands(batch, &out, &mut next_id, &mut pending).await {
                    break Some(e);
                }
            }
        }
    };
    if attached {
        ctx.links.set_channel(index, None);
        // Silence on the link for up to two keepalive intervals went
        // unnoticed: messages may be missing from then (or from the last
        // thing heard, if later), with a margin for clock differences.
        let unnoticed = last_heard.elapsed().min(ctx.keepalive * 2) + Duration::from_millis(250);
        let since = unix_nanos(std::time::SystemTime::now().checked_sub(unnoticed).unwrap_or(std::time::UNIX_EPOCH));
        let removed = stop.is_cancelled() && !ctx.shutdown.is_cancelled();
        ctx.links.set_attached(index, None, since, removed);
        ctx.attached.down();
    }
    // Waiters still pending are dropped here: their clients learn the
    // subscription was not confirmed by this hub.
    Ended { error, was_attached: attached }
}

/// Send `batch` in order, one stream message per run of same-kind commands.
async fn send_commands(
    batch: Vec<LinkCmd>,
    out: &mpsc::Sender<AttachRequest>,
    next_id: &mut u64,
    pending: &mut HashMap<u64, Vec<oneshot::Sender<()>>>,
) -> Result<(), String> {
    let mut iter = batch.into_iter().peekable();
    while let Some(first) = iter.next() {
        let subscribe = first.is_subscribe();
        let mut topics = Vec::new();
        let mut waiters = Vec::new();
        let mut take = |cmd: LinkCmd| match cmd {
            LinkCmd::Subscribe { topics: t, done } => {
                topics.extend(t);
                waiters.extend(done);
            }
            LinkCmd::Unsubscribe { topics: t } => topics.extend(t),
        };
        take(first);
        while iter.peek().is_some_and(|c| c.is_subscribe() == subscribe) {
            take(iter.next().expect("peeked"));
        }
        let request_id = *next_id;
        *next_id += 1;
        let change = TopicsChange { request_id, topics };
        let kind =
            if subscribe { attach_request::Kind::Subscribe(change) } else { attach_request::Kind::Unsubscribe(change) };
        if !waiters.is_empty() {
            pending.insert(request_id, waiters);
        }
        out.send(AttachRequest { kind: Some(kind) }).await.map_err(|_| "attach stream closed".to_owned())?;
    }
    Ok(())
}
