//! Answers to the hub's queries about this gateway's connections: presence,
//! stats, a user's connections, and the server-side commands (subscribe,
//! unsubscribe, disconnect) that act on a connection this gateway owns.
//! See the hub's `query` module for why this is scatter-gather.

use std::sync::Arc;
use std::time::Duration;

use pushmesh_common::ids::{Channel, ConnectionId, GatewayId, UserId};
use pushmesh_common::proto::{Client, ConnectionChannel, Disconnect, GatewayQuery, QueryReply, query_op};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::metrics::GatewayMetrics;
use crate::protocol::{self, close};
use crate::queue::Frame;
use crate::recovery::Recovery;
use crate::registry::{JoinError, Left, Recipients, Registry};

/// Most channel names a stats answer carries.
const MAX_STATS_CHANNELS: usize = 10_000;

pub struct Queries {
    pub gateway: GatewayId,
    pub registry: Arc<Registry>,
    pub recovery: Arc<Recovery>,
    pub metrics: GatewayMetrics,
    pub subscribe_timeout: Duration,
    pub max_channels: usize,
}

impl Queries {
    pub async fn answer(&self, q: GatewayQuery) -> QueryReply {
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
        self.metrics.queries.with_label_values(&[label]).inc();
        match op {
            query_op::Op::Presence(channel) => {
                let Ok(channel) = Channel::new(channel) else { return refuse(reply, "invalid_channel", "bad channel") };
                let (matched, members) = self.registry.members(Recipients::Channel(channel.as_str()), limit);
                reply.matched = matched as u32;
                reply.clients = members.into_iter().map(|m| self.client(m.seq, m.user.as_ref())).collect();
            }
            query_op::Op::Stats(_) => {
                let (connections, channels) = self.registry.stats(MAX_STATS_CHANNELS);
                reply.connections = connections as u32;
                reply.channels = channels;
            }
            query_op::Op::UserConnections(user) => {
                let Ok(user) = UserId::new(user) else { return refuse(reply, "invalid_user", "bad user id") };
                let (matched, members) = self.registry.members(Recipients::User(user.as_str()), limit);
                reply.matched = matched as u32;
                reply.clients = members.into_iter().map(|m| self.client(m.seq, Some(&user))).collect();
            }
            query_op::Op::Subscribe(ConnectionChannel { connection, channel }) => {
                let (Some(seq), Ok(channel)) = (self.local_seq(&connection), Channel::new(channel)) else {
                    return reply;
                };
                match self.registry.join(seq, &channel, self.max_channels, self.subscribe_timeout).await {
                    Ok(added) => {
                        reply.matched = 1;
                        if added {
                            self.notify(seq, protocol::membership_frame(true, channel.as_str()));
                        }
                    }
                    Err(JoinError::Gone) => {}
                    Err(e @ JoinError::TooManyChannels(_)) => return refuse(reply, "limit_exceeded", &e.to_string()),
                    Err(e @ JoinError::Unconfirmed) => return refuse(reply, "unavailable", &e.to_string()),
                }
            }
            query_op::Op::Unsubscribe(ConnectionChannel { connection, channel }) => {
                let (Some(seq), Ok(channel)) = (self.local_seq(&connection), Channel::new(channel)) else {
                    return reply;
                };
                let left = self.registry.leave(seq, &channel);
                self.recovery.forget(seq, &channel);
                if left != Left::NotConnected {
                    reply.matched = 1;
                }
                if left == Left::Left {
                    self.notify(seq, protocol::membership_frame(false, channel.as_str()));
                }
            }
            query_op::Op::Disconnect(Disconnect { connection, user, code, reason }) => {
                let code = if (4000..5000).contains(&code) { code as u16 } else { close::DISCONNECTED };
                let reason = if reason.is_empty() { "disconnected by the server".to_owned() } else { reason };
                let user = UserId::new(user);
                let targets = if !connection.is_empty() {
                    match self.local_seq(&connection) {
                        Some(seq) => Recipients::One(seq),
                        None => return reply,
                    }
                } else if let Ok(user) = &user {
                    Recipients::User(user.as_str())
                } else {
                    return reply;
                };
                self.registry.for_each_recipient(targets, |_, c| {
                    c.close.fire(code, reason.clone(), "server");
                    reply.matched += 1;
                });
            }
        }
        reply
    }

    fn client(&self, seq: u64, user: Option<&UserId>) -> Client {
        Client {
            connection: ConnectionId::new(self.gateway.clone(), seq).to_string(),
            user: user.map(|u| u.to_string()).unwrap_or_default(),
        }
    }

    /// The sequence number of `connection` if this gateway owns it and it
    /// is open.
    fn local_seq(&self, connection: &str) -> Option<u64> {
        let id = ConnectionId::parse(connection).ok()?;
        (id.gateway() == &self.gateway && self.registry.is_connected(id.seq())).then_some(id.seq())
    }

    fn notify(&self, seq: u64, text: Utf8Bytes) {
        self.registry.with_connection(seq, |c| c.out.try_send(Frame { text, is_delivery: false }));
    }
}

fn refuse(mut reply: QueryReply, code: &str, message: &str) -> QueryReply {
    reply.error_code = code.to_owned();
    reply.error = message.to_owned();
    reply
}
