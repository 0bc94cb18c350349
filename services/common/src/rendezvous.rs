//! Which hub owns a topic: rendezvous (highest random weight) hashing of
//! (hub URL, topic). Every publisher — the ingresses, and gateways
//! publishing for their clients — must pick the same hub for one channel,
//! so its messages have one order and its history one place; this module is
//! the one definition they share.

/// Rendezvous score of (hub, key): FNV-1a over both, then a 64-bit mixer
/// (murmur3's fmix64) so near-identical hub names still spread well.
/// Stable across processes and versions: every publisher agrees.
pub fn score(hub: &str, key: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in hub.as_bytes().iter().chain(&[0xff]).chain(key.as_bytes()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

#[cfg(test)]
mod tests {
    use super::score;

    #[test]
    fn rendezvous_moves_only_the_departed_hubs_keys() {
        let hubs = ["http://hub-0:50051", "http://hub-1:50051", "http://hub-2:50051"];
        fn pick<'a>(set: &[&'a str], key: &str) -> &'a str {
            set.iter().copied().max_by_key(|h| score(h, key)).unwrap()
        }
        let mut counts = [0usize; 3];
        for i in 0..3000 {
            let key = format!("c:channel-{i}");
            let before = pick(&hubs, &key);
            counts[hubs.iter().position(|h| *h == before).unwrap()] += 1;
            let after = pick(&hubs[..2], &key);
            if before != hubs[2] {
                assert_eq!(before, after, "key {key} moved although its hub stayed");
            }
        }
        // Roughly even spread: each hub gets 1000 ± 150 of 3000 keys.
        for c in counts {
            assert!((850..=1150).contains(&c), "uneven spread: {counts:?}");
        }
    }
}
