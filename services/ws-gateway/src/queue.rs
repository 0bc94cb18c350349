//! A connection's outbound queue: bounded, single consumer, and free while
//! empty.
//!
//! `tokio::sync::mpsc` allocates its first block of slots (and its channel
//! state) up front: about 1.8 KB for every connection, idle or not, which
//! the benchmark measured as the second-largest share of an idle
//! connection's memory. This queue is a `VecDeque` behind a mutex (held for
//! a push or a pop, never across an await) and a `Notify`: nothing is
//! allocated until a frame waits, and a burst's buffer is released once it
//! drains. The bound and the overflow policy are the caller's, as before:
//! `try_send` says `Full` and the fan-out applies the slow-consumer policy.

use std::collections::VecDeque;
use std::sync::Mutex;

use tokio::sync::Notify;

use crate::registry::Frame;

/// Capacity kept after a burst drains; more is given back (an idle
/// connection then holds no buffer at all).
const KEEP: usize = 0;

#[derive(Debug, PartialEq, Eq)]
pub enum SendError {
    Full,
    Closed,
}

pub struct OutQueue {
    state: Mutex<State>,
    notify: Notify,
    bound: usize,
}

#[derive(Default)]
struct State {
    frames: VecDeque<Frame>,
    closed: bool,
}

impl State {
    fn pop(&mut self) -> Option<Frame> {
        let f = self.frames.pop_front();
        if self.frames.is_empty() && self.frames.capacity() > KEEP {
            self.frames = VecDeque::new();
        }
        f
    }
}

impl OutQueue {
    pub fn new(bound: usize) -> Self {
        Self { state: Mutex::default(), notify: Notify::new(), bound: bound.max(1) }
    }

    pub fn try_send(&self, frame: Frame) -> Result<(), SendError> {
        let mut st = self.state.lock().expect("queue lock");
        if st.closed {
            return Err(SendError::Closed);
        }
        if st.frames.len() >= self.bound {
            return Err(SendError::Full);
        }
        st.frames.push_back(frame);
        drop(st);
        self.notify.notify_one();
        Ok(())
    }

    pub fn try_recv(&self) -> Option<Frame> {
        self.state.lock().expect("queue lock").pop()
    }

    /// The next frame; `None` once closed and drained.
    pub async fn recv(&self) -> Option<Frame> {
        loop {
            {
                let mut st = self.state.lock().expect("queue lock");
                if let Some(f) = st.pop() {
                    return Some(f);
                }
                if st.closed {
                    return None;
                }
            }
            // notify_one stores a permit when nobody waits, so a push
            // between the check above and this await is not missed.
            self.notify.notified().await;
        }
    }

    /// Refuse further frames; what is queued can still be drained.
    pub fn close(&self) {
        self.state.lock().expect("queue lock").closed = true;
        self.notify.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(s: &str) -> Frame {
        Frame { text: s.into(), is_delivery: true }
    }

    #[tokio::test]
    async fn bounded_fifo_that_closes() {
        let q = OutQueue::new(2);
        assert_eq!(q.try_send(f("a")), Ok(()));
        assert_eq!(q.try_send(f("b")), Ok(()));
        assert_eq!(q.try_send(f("c")), Err(SendError::Full));
        assert_eq!(q.recv().await.unwrap().text.as_str(), "a");
        assert_eq!(q.try_recv().unwrap().text.as_str(), "b");
        assert!(q.try_recv().is_none());
        q.close();
        assert_eq!(q.try_send(f("d")), Err(SendError::Closed));
        assert!(q.recv().await.is_none());
    }

    #[tokio::test]
    async fn a_waiting_receiver_is_woken() {
        let q = std::sync::Arc::new(OutQueue::new(4));
        let q2 = q.clone();
        let t = tokio::spawn(async move { q2.recv().await.map(|f| f.text.as_str().to_owned()) });
        tokio::task::yield_now().await;
        q.try_send(f("x")).unwrap();
        assert_eq!(t.await.unwrap().as_deref(), Some("x"));
    }
}
