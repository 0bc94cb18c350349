//! Recovery: a client that subscribes with `since` (the last stream
//! position it saw) gets the messages it missed, in order, before any live
//! one, or is told that recovery was not possible. All of it lives here:
//! the per-(connection, channel) state, the decision the fan-out asks for
//! each live delivery to a recovering connection, and the sequence of a
//! recovering subscribe.
//!
//! The sequence: mark the pair *holding*, join the channel (live
//! deliveries now arrive and are held back), ask the hubs for the history
//! after `since`, then — under this module's lock, so no live delivery to
//! the pair can slip in between — queue the reply, the recovered messages
//! and the held-back live ones that the history did not already contain.
//! Afterwards the pair stays *covered* up to the last recovered position: a
//! live copy of a recovered message can still arrive after the history
//! answer (they travel on different HTTP/2 streams) and must not be
//! delivered twice.
//!
//! The state has its own lock, taken by the fan-out only for connections
//! the registry marks as recovering. Lock order: the fan-out holds the
//! registry's read lock and then takes this one; `finish` takes this one
//! and touches only the connection's own queue, never the registry, so
//! the two cannot deadlock.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_tungstenite::tungstenite::Utf8Bytes;

use pushmesh_common::ids::Channel;

use crate::links::HubLinks;
use crate::protocol::{self, Reply};
use crate::queue::{CloseSignal, Frame, Outbound};
use crate::registry::{JoinError, Registry};

/// One (connection, channel)'s recovery state.
enum State {
    /// The history is being fetched: live deliveries wait here.
    Holding(Vec<Held>),
    /// Recovered up to this position of this epoch.
    Covered { epoch: String, last: u64 },
}

/// A live delivery held back while its connection recovers the channel.
struct Held {
    epoch: String,
    offset: u64,
    text: Utf8Bytes,
}

/// What the fan-out should do with a live channel delivery to a
/// recovering connection.
#[derive(Debug, PartialEq, Eq)]
pub enum Admit {
    /// Send it now.
    Deliver,
    /// Held back; it goes out after the recovered messages.
    Held,
    /// Already delivered by the recovery: drop it silently.
    Covered,
    /// More held back than the outbound queue allows: a slow consumer.
    Overflow,
}

/// The connection a recovering subscribe is for.
pub struct Subscriber<'a> {
    pub seq: u64,
    pub out: &'a Outbound,
    pub close: &'a CloseSignal,
    pub raw: bool,
}

pub struct Recovery {
    registry: Arc<Registry>,
    links: Arc<HubLinks>,
    states: Mutex<HashMap<u64, Vec<(Channel, State)>>>,
    /// Most live deliveries held back per (connection, channel): the
    /// outbound queue's bound.
    hold_limit: usize,
}

impl Recovery {
    pub fn new(registry: Arc<Registry>, links: Arc<HubLinks>, hold_limit: usize) -> Self {
        Self { registry, links, states: Mutex::default(), hold_limit: hold_limit.max(1) }
    }

    /// Subscribe `who` to `channel`, recovering what it missed after
    /// `since` (epoch, offset). The answer `reply` builds from the outcome
    /// (`Reply::Subscribed`: the WebSocket reply, or an SSE `subscribed`
    /// event) and then the messages are queued to the connection; an error
    /// means nothing was.
    pub async fn subscribe(
        &self,
        who: Subscriber<'_>,
        channel: &Channel,
        since: (&str, u64),
        reply: impl FnOnce(&Reply) -> Utf8Bytes,
        max_channels: usize,
        timeout: Duration,
    ) -> Result<(), JoinError> {
        self.set(who.seq, channel, State::Holding(Vec::new()));
        self.registry.mark_recovering(who.seq);
        if let Err(e) = self.registry.join(who.seq, channel, max_channels, timeout).await {
            self.forget(who.seq, channel);
            return Err(e);
        }
        let (epoch, offset) = since;
        let hist = self.links.history(channel.as_str(), epoch, offset).await;
        let recovered = hist.as_ref().is_some_and(|h| h.recovered && h.epoch == epoch);
        let (current, top) = hist.as_ref().map_or((None, 0), |h| (Some(h.epoch.clone()), h.top));
        let mut frames = Vec::new();
        let mut last = offset;
        if recovered {
            for d in hist.into_iter().flat_map(|h| h.messages) {
                let Ok(data) = std::str::from_utf8(&d.data) else { continue };
                last = last.max(d.offset);
                frames.push(protocol::message_frame(&d, data, who.raw));
            }
        }
        let reply = reply(&Reply::Subscribed { recovered, epoch: current, offset: top });
        self.finish(&who, channel, reply, frames, recovered.then_some((epoch, last)));
        Ok(())
    }

    /// Queue, in this order and atomically with respect to the fan-out:
    /// the reply, the recovered messages, then the held-back live ones the
    /// recovered messages did not already cover. With `covered` (epoch,
    /// last recovered offset), the pair stays covered; without, it is
    /// forgotten.
    fn finish(
        &self,
        who: &Subscriber<'_>,
        channel: &Channel,
        reply: Utf8Bytes,
        recovered: Vec<Utf8Bytes>,
        covered: Option<(&str, u64)>,
    ) {
        let mut states = self.states.lock().expect("recovery lock");
        let held = match covered {
            Some((epoch, last)) => {
                let state = State::Covered { epoch: epoch.to_owned(), last };
                match slot(&mut states, who.seq, channel.as_str()).map(|s| std::mem::replace(s, state)) {
                    Some(State::Holding(held)) => held,
                    _ => Vec::new(),
                }
            }
            None => match remove(&mut states, who.seq, channel.as_str()) {
                Some(State::Holding(held)) => held,
                _ => Vec::new(),
            },
        };
        let frames = std::iter::once(Frame { text: reply, is_delivery: false })
            .chain(recovered.into_iter().map(|text| Frame { text, is_delivery: true }))
            .chain(
                held.into_iter()
                    .filter(|h| !covered.is_some_and(|(epoch, last)| h.epoch == epoch && h.offset <= last))
                    .map(|h| Frame { text: h.text, is_delivery: true }),
            );
        for f in frames {
            if who.out.try_send(f).is_err() {
                who.close.slow_consumer();
                break;
            }
        }
    }

    /// The fan-out's question for a live delivery (`epoch`, `offset`) of
    /// `channel` to connection `seq` (one the registry marks as
    /// recovering); `text` builds its frame if it must be held.
    pub fn admit(&self, seq: u64, channel: &str, epoch: &str, offset: u64, text: impl FnOnce() -> Utf8Bytes) -> Admit {
        let mut states = self.states.lock().expect("recovery lock");
        match slot(&mut states, seq, channel) {
            None => Admit::Deliver,
            Some(State::Holding(held)) if held.len() >= self.hold_limit => Admit::Overflow,
            Some(State::Holding(held)) => {
                held.push(Held { epoch: epoch.to_owned(), offset, text: text() });
                Admit::Held
            }
            Some(State::Covered { epoch: e, last }) if e == epoch && offset <= *last => Admit::Covered,
            Some(State::Covered { .. }) => Admit::Deliver,
        }
    }

    /// The connection left `channel`: its recovery state goes.
    pub fn forget(&self, seq: u64, channel: &Channel) {
        remove(&mut self.states.lock().expect("recovery lock"), seq, channel.as_str());
    }

    /// The connection is gone.
    pub fn forget_connection(&self, seq: u64) {
        self.states.lock().expect("recovery lock").remove(&seq);
    }

    fn set(&self, seq: u64, channel: &Channel, state: State) {
        let mut states = self.states.lock().expect("recovery lock");
        let list = states.entry(seq).or_default();
        list.retain(|(c, _)| c != channel);
        list.push((channel.clone(), state));
    }
}

fn slot<'a>(states: &'a mut HashMap<u64, Vec<(Channel, State)>>, seq: u64, channel: &str) -> Option<&'a mut State> {
    states.get_mut(&seq)?.iter_mut().find(|(c, _)| c.as_str() == channel).map(|(_, s)| s)
}

fn remove(states: &mut HashMap<u64, Vec<(Channel, State)>>, seq: u64, channel: &str) -> Option<State> {
    let list = states.get_mut(&seq)?;
    let i = list.iter().position(|(c, _)| c.as_str() == channel)?;
    let (_, state) = list.swap_remove(i);
    if list.is_empty() {
        states.remove(&seq);
    }
    Some(state)
}
