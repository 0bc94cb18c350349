//! The publishes this ingress sent in the last few seconds, by owner hub,
//! to replay to a gateway that turns out to be cut off from that hub.
//!
//! A partition is noticed only after a while: the gateway's keepalive to the
//! hub must fail (about twice `--keepalive-secs`), then the next hub poll
//! must see its new declaration. What the hub accepted meanwhile never
//! reached that gateway. When the relay plan gains a gateway, every
//! publish kept here for the hub it lost is sent to it again through a hub
//! it still has; the gateway drops those it did get (by publish id).
//!
//! Bounded by age (`--relay-replay-ms`) and bytes (`--relay-replay-bytes`);
//! the payloads are shared with the requests, not copied.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use pushmesh_common::proto::PublishRequest;

pub struct Kept {
    /// Position in this ring, counting up from 1: replay resumes after one.
    seq: u64,
    at: Instant,
    /// Wall clock at acceptance (unix ns), compared with the gateway's
    /// "missing since".
    wall: u64,
    pub owner: String,
    /// The accepted publish, its `relay` holding the owner's position.
    pub req: PublishRequest,
    bytes: usize,
}

pub struct ReplayRing {
    inner: Mutex<Inner>,
    max_age: Duration,
    max_bytes: usize,
}

#[derive(Default)]
struct Inner {
    items: VecDeque<Kept>,
    bytes: usize,
    next_seq: u64,
}

impl ReplayRing {
    pub fn new(max_age: Duration, max_bytes: usize) -> Self {
        Self { inner: Mutex::default(), max_age, max_bytes }
    }

    pub fn enabled(&self) -> bool {
        !self.max_age.is_zero() && self.max_bytes > 0
    }

    /// Keep a publish hub `owner` accepted; answers the bytes now held.
    pub fn keep(&self, owner: &str, req: PublishRequest) -> usize {
        let wall =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
        self.keep_at(owner, req, Instant::now(), wall)
    }

    /// `keep` with the clocks given (the tests' seam): `now` for the age
    /// bound, `wall` (unix ns) for `of`'s `since`.
    fn keep_at(&self, owner: &str, req: PublishRequest, now: Instant, wall: u64) -> usize {
        let bytes = req.data.len() + 128;
        let mut inner = self.inner.lock().expect("replay lock");
        inner.next_seq += 1;
        let seq = inner.next_seq;
        inner.items.push_back(Kept { seq, at: now, wall, owner: owner.to_owned(), req, bytes });
        inner.bytes += bytes;
        self.trim(&mut inner, now);
        inner.bytes
    }

    /// The kept publishes of hub `owner` accepted at or after `since`
    /// (unix ns), oldest first, with their ring positions.
    pub fn of(&self, owner: &str, since: u64) -> Vec<(u64, PublishRequest)> {
        self.of_at(owner, since, Instant::now())
    }

    fn of_at(&self, owner: &str, since: u64, now: Instant) -> Vec<(u64, PublishRequest)> {
        let mut inner = self.inner.lock().expect("replay lock");
        self.trim(&mut inner, now);
        inner.items.iter().filter(|k| k.owner == owner && k.wall >= since).map(|k| (k.seq, k.req.clone())).collect()
    }

    /// The newest ring position handed out so far.
    pub fn top(&self) -> u64 {
        self.inner.lock().expect("replay lock").next_seq
    }

    /// The kept publishes of hub `owner` after ring position `seq`.
    pub fn after(&self, owner: &str, seq: u64) -> Vec<(u64, PublishRequest)> {
        let inner = self.inner.lock().expect("replay lock");
        inner.items.iter().filter(|k| k.owner == owner && k.seq > seq).map(|k| (k.seq, k.req.clone())).collect()
    }

    fn trim(&self, inner: &mut Inner, now: Instant) {
        while let Some(front) = inner.items.front() {
            if inner.bytes <= self.max_bytes && now.duration_since(front.at) <= self.max_age {
                break;
            }
            inner.bytes -= front.bytes;
            inner.items.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(n: u8, len: usize) -> PublishRequest {
        PublishRequest { id: u64::from(n), data: vec![n; len].into(), ..Default::default() }
    }

    #[test]
    fn keeps_each_owners_publishes_in_order_within_the_byte_bound() {
        let ring = ReplayRing::new(Duration::from_secs(60), 3 * (100 + 128));
        for n in 1..=4 {
            ring.keep(["a", "b"][usize::from(n % 2)], req(n, 100));
        }
        // Four kept, the bound holds three: the oldest (1) went.
        assert_eq!(ring.of("a", 0).iter().map(|(_, r)| r.id).collect::<Vec<_>>(), [2, 4]);
        assert_eq!(ring.of("b", 0).iter().map(|(_, r)| r.id).collect::<Vec<_>>(), [3]);
    }

    #[test]
    fn forgets_what_is_older_than_the_window() {
        let ring = ReplayRing::new(Duration::from_millis(50), 1 << 20);
        let t0 = Instant::now();
        ring.keep_at("a", req(1, 10), t0, 1);
        // At the bound it is still kept; past it, gone.
        ring.keep_at("a", req(2, 10), t0 + Duration::from_millis(50), 2);
        assert_eq!(
            ring.of_at("a", 0, t0 + Duration::from_millis(50)).iter().map(|(_, r)| r.id).collect::<Vec<_>>(),
            [1, 2]
        );
        ring.keep_at("a", req(3, 10), t0 + Duration::from_millis(80), 3);
        assert_eq!(
            ring.of_at("a", 0, t0 + Duration::from_millis(80)).iter().map(|(_, r)| r.id).collect::<Vec<_>>(),
            [2, 3]
        );
    }

    #[test]
    fn replays_only_what_was_accepted_since_the_given_time() {
        let ring = ReplayRing::new(Duration::from_secs(60), 1 << 20);
        let t0 = Instant::now();
        let wall = 1_700_000_000_000_000_000;
        ring.keep_at("a", req(1, 10), t0, wall);
        let since = wall + 20_000_000;
        ring.keep_at("a", req(2, 10), t0 + Duration::from_millis(20), since);
        assert_eq!(
            ring.of_at("a", since, t0 + Duration::from_millis(20)).iter().map(|(_, r)| r.id).collect::<Vec<_>>(),
            [2]
        );
        // Resuming after the first one's position finds the second.
        let first = ring.of_at("a", 0, t0 + Duration::from_millis(20))[0].0;
        assert_eq!(ring.after("a", first).iter().map(|(_, r)| r.id).collect::<Vec<_>>(), [2]);
        assert!(ring.after("b", 0).is_empty());
    }
}
