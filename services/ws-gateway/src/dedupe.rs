//! Publish ids seen recently, so one publish reaches local clients once.
//!
//! Normally every message arrives exactly once, from the hub that owns its
//! target. While a partition between this gateway and a hub heals, the
//! ingresses may still relay that hub's publishes through another hub for a
//! moment after the direct path is back: the same publish (same id) then
//! arrives twice, and the second copy is dropped here.
//!
//! A bounded set: the newest `capacity` ids, oldest forgotten first. Ids are
//! random 64-bit values chosen by the ingress, so they are their own hash.
//! One lock per delivery batch from a hub, never per connection.

use std::collections::{HashSet, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Mutex;

use pushmesh_common::proto::Delivery;

pub struct RecentIds {
    inner: Mutex<Inner>,
    capacity: usize,
}

#[derive(Default)]
struct Inner {
    seen: HashSet<u64, BuildHasherDefault<IdHasher>>,
    order: VecDeque<u64>,
}

impl RecentIds {
    pub fn new(capacity: usize) -> Self {
        Self { inner: Mutex::default(), capacity }
    }

    /// Keep only deliveries whose id was not seen before (id 0: no id, kept);
    /// answers how many were dropped.
    pub fn retain_new(&self, items: &mut Vec<Delivery>) -> usize {
        if self.capacity == 0 {
            return 0;
        }
        let before = items.len();
        let mut inner = self.inner.lock().expect("recent ids lock");
        items.retain(|d| d.id == 0 || inner.insert(d.id, self.capacity));
        before - items.len()
    }
}

impl Inner {
    fn insert(&mut self, id: u64, capacity: usize) -> bool {
        if !self.seen.insert(id) {
            return false;
        }
        self.order.push_back(id);
        if self.order.len() > capacity
            && let Some(old) = self.order.pop_front()
        {
            self.seen.remove(&old);
        }
        true
    }
}

/// The identity hash: ids are already uniformly random.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(id: u64) -> Delivery {
        Delivery { id, ..Default::default() }
    }

    #[test]
    fn a_second_copy_is_dropped_and_unnumbered_deliveries_pass() {
        let r = RecentIds::new(4);
        let mut first = vec![d(7), d(0), d(8), d(7)];
        assert_eq!(r.retain_new(&mut first), 1);
        assert_eq!(first.iter().map(|d| d.id).collect::<Vec<_>>(), [7, 0, 8]);
        let mut again = vec![d(8), d(0), d(9)];
        assert_eq!(r.retain_new(&mut again), 1);
        assert_eq!(again.iter().map(|d| d.id).collect::<Vec<_>>(), [0, 9]);
    }

    #[test]
    fn only_the_newest_ids_are_remembered() {
        let r = RecentIds::new(3);
        let mut v: Vec<_> = (1..=5).map(d).collect();
        assert_eq!(r.retain_new(&mut v), 0);
        // 3, 4, 5 are still known; 1 and 2 were forgotten.
        let mut v = vec![d(5), d(4), d(3)];
        assert_eq!(r.retain_new(&mut v), 3);
        let mut v = vec![d(2), d(1)];
        assert_eq!(r.retain_new(&mut v), 0);
    }

    #[test]
    fn capacity_zero_turns_it_off() {
        let r = RecentIds::new(0);
        let mut v = vec![d(1), d(1)];
        assert_eq!(r.retain_new(&mut v), 0);
        assert_eq!(v.len(), 2);
    }
}
