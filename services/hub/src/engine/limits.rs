//! History limits per channel: how many messages a channel's stream keeps
//! and for how long. The hub's flags (`--history-size`,
//! `--history-ttl-secs`) are the defaults; a namespaces file
//! (`--namespaces`, the same file the gateways read) overrides them per
//! channel prefix with `history_size` / `history_ttl_secs`.
//!
//! The lookup is on the publish path (the Redis engine asks once per
//! append call, the memory engine once per stream it creates), so it is
//! built for that: the namespaces are boiled down at start-up to a short
//! list of (prefix, limit), longest prefix first. With no file, or a file
//! where no namespace's limits differ from the fallback's, the list is
//! empty and the lookup is one branch. A lookup never allocates: a
//! `starts_with` per entry over a few entries.
//!
//! `recover = false` does not change the history on its own: the hub also
//! keeps idempotency keys with the kept entries (an ingress retrying a
//! publish at the next hub relies on them) and backends may read it with
//! `GET /history`. A namespace that wants no history says
//! `history_size = 0`.

use std::time::Duration;

use pushmesh_common::namespaces::{Namespace, Namespaces};

/// One channel's history limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    /// Entries kept (0: positions only).
    pub size: usize,
    /// Entry age, and how long a stream without publishes lives.
    pub ttl: Duration,
}

/// The limits of every channel (see the module doc).
#[derive(Debug, Clone)]
pub struct HistoryLimits {
    /// Longest prefix first.
    by_prefix: Box<[(Box<str>, Limit)]>,
    fallback: Limit,
}

impl HistoryLimits {
    /// Every channel gets `default`.
    pub fn uniform(default: Limit) -> Self {
        Self { by_prefix: Box::new([]), fallback: default }
    }

    /// `default` (the hub's flags) overridden by the namespaces' options.
    pub fn new(default: Limit, namespaces: &Namespaces) -> Self {
        let of = |ns: &Namespace| Limit {
            size: ns.history_size().unwrap_or(default.size),
            ttl: ns.history_ttl().unwrap_or(default.ttl),
        };
        let fallback = of(namespaces.fallback());
        let all: Vec<(Box<str>, Limit)> =
            namespaces.iter().filter(|n| !n.prefix.is_empty()).map(|n| (n.prefix.as_str().into(), of(n))).collect();
        // Nothing differs from the fallback: the lookup is one branch.
        let by_prefix = if all.iter().all(|(_, l)| *l == fallback) { Box::new([]) as Box<[_]> } else { all.into() };
        Self { by_prefix, fallback }
    }

    /// The limits of `channel`: the longest matching prefix's, else the
    /// fallback's.
    #[inline]
    pub fn for_channel(&self, channel: &str) -> Limit {
        for (prefix, limit) in self.by_prefix.iter() {
            if channel.starts_with(&**prefix) {
                return *limit;
            }
        }
        self.fallback
    }

    /// The largest size any channel may keep (sizes a read's page).
    pub fn max_size(&self) -> usize {
        self.by_prefix.iter().map(|(_, l)| l.size).fold(self.fallback.size, usize::max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULT: Limit = Limit { size: 100, ttl: Duration::from_secs(300) };

    fn limits(text: &str) -> HistoryLimits {
        HistoryLimits::new(DEFAULT, &Namespaces::parse(text).unwrap())
    }

    #[test]
    fn the_longest_prefix_wins_and_unset_options_are_the_flags() {
        let l = limits(
            "[[namespace]]\nprefix = \"chat:\"\nhistory_size = 3\n\n\
             [[namespace]]\nprefix = \"chat:vip:\"\nhistory_ttl_secs = 5\n\n\
             [[namespace]]\nprefix = \"tmp\"\nhistory_size = 0\n",
        );
        assert_eq!(l.for_channel("chat:room"), Limit { size: 3, ..DEFAULT });
        // Its own namespace: the flags' size, its own TTL (not chat:'s size).
        assert_eq!(l.for_channel("chat:vip:1"), Limit { size: 100, ttl: Duration::from_secs(5) });
        assert_eq!(l.for_channel("tmp:x"), Limit { size: 0, ..DEFAULT });
        assert_eq!(l.for_channel("chat"), DEFAULT, "a prefix longer than the channel does not match");
        assert_eq!(l.for_channel("news"), DEFAULT);
        assert_eq!(l.max_size(), 100);
    }

    #[test]
    fn the_empty_prefix_sets_the_fallback() {
        let l = limits(
            "[[namespace]]\nprefix = \"\"\nhistory_size = 10\n\n[[namespace]]\nprefix = \"big:\"\nhistory_size = 1000\n",
        );
        assert_eq!(l.for_channel("news").size, 10);
        assert_eq!(l.for_channel("big:one").size, 1000);
        assert_eq!(l.max_size(), 1000);
    }

    #[test]
    fn a_file_without_history_options_costs_nothing_per_lookup() {
        let l = limits("[[namespace]]\nprefix = \"chat:\"\nclient_publish = true\nrecover = false\n");
        assert!(l.by_prefix.is_empty());
        assert_eq!(l.for_channel("chat:x"), DEFAULT, "recover = false keeps the history (see the module doc)");
        assert!(HistoryLimits::new(DEFAULT, &Namespaces::default()).by_prefix.is_empty());
    }
}
