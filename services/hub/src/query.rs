//! Queries: the hub asks gateways about their connections (presence,
//! stats, a user's connections) or tells them to act on one (server-side
//! subscribe, unsubscribe, disconnect), and gathers the answers.
//!
//! Scatter-gather instead of replicating every connection's state into the
//! hubs: gateways stay the one owner of connection state, nothing has to be
//! re-synchronised after a hub restart, and the price (one round trip per
//! query) is paid only by the API calls that need it. Each gateway answers
//! on its Attach stream; a gateway that does not answer within the deadline
//! is left out and the response says how many were asked.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::sync::oneshot;

use pushmesh_common::proto::{GatewayAnswer, GatewayQuery, QueryReply, QueryRequest, QueryResponse};

use crate::topics::{Outbound, TopicTable};

#[derive(Default)]
pub struct Queries {
    next_id: AtomicU64,
    pending: Mutex<HashMap<u64, oneshot::Sender<QueryReply>>>,
}

/// Why a query could not be asked.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("gateway {0} is not attached to this hub")]
    UnknownGateway(String),
}

impl Queries {
    /// An answer arrived on a gateway's stream.
    pub fn complete(&self, reply: QueryReply) {
        let tx = self.pending.lock().expect("queries lock").remove(&reply.id);
        if let Some(tx) = tx {
            let _ = tx.send(reply);
        }
    }

    pub async fn ask(
        &self,
        table: &TopicTable,
        req: QueryRequest,
        deadline: Duration,
    ) -> Result<QueryResponse, QueryError> {
        let links = if req.gateway.is_empty() {
            table.links()
        } else {
            vec![table.link(&req.gateway).ok_or_else(|| QueryError::UnknownGateway(req.gateway.clone()))?]
        };
        let asked = links.len() as u32;
        let mut waits = FuturesUnordered::new();
        let mut ids = Vec::with_capacity(links.len());
        for link in links {
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            let (tx, rx) = oneshot::channel();
            self.pending.lock().expect("queries lock").insert(id, tx);
            ids.push(id);
            let q = GatewayQuery { id, op: req.op.clone(), limit: req.limit };
            let gateway = link.gateway.clone();
            waits.push(async move {
                // Queued behind deliveries already waiting for this gateway;
                // the deadline covers a full queue too.
                link.queue.send(Outbound::Query(q)).await.ok()?;
                let reply = rx.await.ok()?;
                Some(GatewayAnswer { gateway, reply: Some(reply) })
            });
        }
        let mut answers = Vec::new();
        let _ = tokio::time::timeout(deadline, async {
            while let Some(a) = waits.next().await {
                answers.extend(a);
            }
        })
        .await;
        let mut pending = self.pending.lock().expect("queries lock");
        for id in ids {
            pending.remove(&id);
        }
        Ok(QueryResponse { asked, answers })
    }
}
