//! Answers to the hub's queries about this gateway's connections: presence,
//! stats, a user's connections, and the server-side commands (subscribe,
//! unsubscribe, disconnect) that act on a connection this gateway owns.
//! See the hub's `query` module for why this is scatter-gather.

use std::time::Duration;

use pushmesh_common::ids::{Channel, ConnectionId, UserId};
use pushmesh_common::proto::{Client, ConnectionChannel, Disconnect, GatewayQuery, QueryReply, query_op};

use crate::protocol::{self, close};
use crate::registry::{Frame, JoinError};
use crate::server::Shared;

/// Most channel names a stats answer carries.
const MAX_STATS_CHANNELS: usize = 10_000;

pub async fn answer(shared: &Shared, q: GatewayQuery) -> QueryReply {
    let mut reply = QueryReply { id: q.id, ..Default::default() };
    let limit = q.limit as usize;
    let Some(op) = q.op.and_then(|o| o.op) else {
        return refuse(reply, "invalid", "query without an op");
    };
    let label = match &op {
        query_op::Op::Presence(_) => "presence",
        query_op::Op::Stats(_) => "stats",
        query_op::Op::Subscribe(_) => "subscribe",
        query_op::Op::Unsubscribe(_) => "unsubscribe",
        query_op::Op::Disconnect(_) => "disconnect",
        query_op::Op::UserConnections(_) => "user_connections",
    };
    shared.metrics.queries.with_label_values(&[label]).inc();
    match op {
        query_op::Op::Presence(channel) => {
            let Ok(channel) = Channel::new(channel) else { return refuse(reply, "invalid_channel", "bad channel") };
            let inner = shared.registry.read();
            if let Some(members) = inner.topics.get(&channel.topic()) {
                reply.matched = members.len() as u32;
                reply.clients = members
                    .iter()
                    .take(limit)
                    .filter_map(|seq| inner.conns.get(seq).map(|c| client(shared, *seq, c.user.as_ref())))
                    .collect();
            }
        }
        query_op::Op::Stats(_) => {
            let inner = shared.registry.read();
            reply.connections = inner.conns.len() as u32;
            reply.channels = inner
                .topics
                .keys()
                .take(MAX_STATS_CHANNELS)
                .map(|t| t.strip_prefix(pushmesh_common::ids::topic::CHANNEL_PREFIX).unwrap_or(t).to_owned())
                .collect();
        }
        query_op::Op::UserConnections(user) => {
            let Ok(user) = UserId::new(user) else { return refuse(reply, "invalid_user", "bad user id") };
            let inner = shared.registry.read();
            if let Some(conns) = inner.users.get(&user.topic()) {
                reply.matched = conns.len() as u32;
                reply.clients = conns.iter().take(limit).map(|seq| client(shared, *seq, Some(&user))).collect();
            }
        }
        query_op::Op::Subscribe(ConnectionChannel { connection, channel }) => {
            let (Some(seq), Ok(channel)) = (local_seq(shared, &connection), Channel::new(channel)) else {
                return reply;
            };
            let timeout = Duration::from_millis(shared.config.subscribe_timeout_ms);
            let max = shared.config.max_channels_per_connection;
            match shared.registry.join(seq, &channel.topic(), max, timeout).await {
                Ok(added) => {
                    reply.matched = 1;
                    if added {
                        notify(shared, seq, protocol::membership_frame(true, channel.as_str()));
                    }
                }
                Err(JoinError::Gone) => {}
                Err(e @ JoinError::TooManyChannels(_)) => return refuse(reply, "limit_exceeded", &e.to_string()),
                Err(e @ JoinError::Unconfirmed) => return refuse(reply, "unavailable", &e.to_string()),
            }
        }
        query_op::Op::Unsubscribe(ConnectionChannel { connection, channel }) => {
            let (Some(seq), Ok(channel)) = (local_seq(shared, &connection), Channel::new(channel)) else {
                return reply;
            };
            let was_member = shared.registry.read().topics.get(&channel.topic()).is_some_and(|m| m.contains(&seq));
            if shared.registry.leave(seq, &channel.topic()) {
                reply.matched = 1;
                if was_member {
                    notify(shared, seq, protocol::membership_frame(false, channel.as_str()));
                }
            }
        }
        query_op::Op::Disconnect(Disconnect { connection, user, code, reason }) => {
            let code = if (4000..5000).contains(&code) { code as u16 } else { close::DISCONNECTED };
            let reason = if reason.is_empty() { "disconnected by the server".to_owned() } else { reason };
            let inner = shared.registry.read();
            let targets: Vec<u64> = if !connection.is_empty() {
                local_seq(shared, &connection).into_iter().collect()
            } else if let Ok(user) = UserId::new(user) {
                inner.users.get(&user.topic()).map(|s| s.iter().copied().collect()).unwrap_or_default()
            } else {
                Vec::new()
            };
            for seq in targets {
                if let Some(c) = inner.conns.get(&seq) {
                    c.close.fire(code, reason.clone(), "server");
                    reply.matched += 1;
                }
            }
        }
    }
    reply
}

fn refuse(mut reply: QueryReply, code: &str, message: &str) -> QueryReply {
    reply.error_code = code.to_owned();
    reply.error = message.to_owned();
    reply
}

fn client(shared: &Shared, seq: u64, user: Option<&UserId>) -> Client {
    Client {
        connection: ConnectionId::new(shared.gateway.clone(), seq).to_string(),
        user: user.map(|u| u.to_string()).unwrap_or_default(),
    }
}

/// The sequence number of `connection` if this gateway owns it and it is open.
fn local_seq(shared: &Shared, connection: &str) -> Option<u64> {
    let id = ConnectionId::parse(connection).ok()?;
    (id.gateway() == &shared.gateway && shared.registry.read().conns.contains_key(&id.seq())).then_some(id.seq())
}

fn notify(shared: &Shared, seq: u64, text: tokio_tungstenite::tungstenite::Utf8Bytes) {
    if let Some(c) = shared.registry.read().conns.get(&seq) {
        let _ = c.tx.try_send(Frame { text, is_delivery: false });
    }
}
