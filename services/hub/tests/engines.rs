//! Both channel state engines answer the same calls the same way: the
//! memory engine in-process, the Redis engine against a real `redis-server`
//! started by the test.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use pushmesh_common::ids::Channel;
use pushmesh_hub::engine::limits::{HistoryLimits, Limit};
use pushmesh_hub::engine::memory::{HistoryConfig, Streams};
use pushmesh_hub::engine::redis::{RedisEngine, RedisSettings};
use pushmesh_hub::engine::{Engine, NewEntry, Page, ReadQuery, Slot};
use pushmesh_hub::metrics::HubMetrics;
use pushmesh_tests::Redis;

fn entry(data: &str, key: &str) -> NewEntry {
    NewEntry { data: Bytes::from(data.to_owned()), key: key.to_owned() }
}

fn redis_engine(redis: &Redis, size: usize, ttl: Duration) -> RedisEngine {
    redis_engine_with(redis, HistoryLimits::uniform(Limit { size, ttl }))
}

fn redis_engine_with(redis: &Redis, limits: HistoryLimits) -> RedisEngine {
    RedisEngine::new(
        RedisSettings {
            urls: vec![redis.url()],
            cluster: false,
            sentinel_master: None,
            password: None,
            tls_ca: None,
            prefix: "t".into(),
            connections: 2,
            timeout: Duration::from_secs(2),
            limits,
        },
        HubMetrics::new(),
    )
    .expect("engine")
}

fn memory_engine(size: usize, ttl: Duration) -> Arc<Streams> {
    memory_engine_with(HistoryLimits::uniform(Limit { size, ttl }))
}

fn memory_engine_with(limits: HistoryLimits) -> Arc<Streams> {
    Arc::new(Streams::new(HistoryConfig { limits, max_bytes: 1 << 30 }, HubMetrics::new()))
}

/// Default size 5; `small:` keeps 2, `none:` keeps none (positions only).
fn namespaced_limits() -> HistoryLimits {
    let file = "[[namespace]]\nprefix = \"small:\"\nhistory_size = 2\n\n\
                [[namespace]]\nprefix = \"none:\"\nhistory_size = 0\n";
    let namespaces = pushmesh_common::namespaces::Namespaces::parse(file).expect("valid file");
    HistoryLimits::new(Limit { size: 5, ttl: Duration::from_secs(60) }, &namespaces)
}

/// Each channel keeps its namespace's number of entries.
async fn per_namespace_sizes(e: &dyn Engine) -> anyhow::Result<()> {
    let four = || (1..=4).map(|i| entry(&i.to_string(), "")).collect::<Vec<_>>();
    let mut kept = Vec::new();
    for name in ["small:a", "none:a", "news"] {
        let ch = Channel::new(name)?;
        e.append(&ch, four()).await?;
        let p = e.read(&ch, ReadQuery { since: None, limit: 0 }).await?;
        assert_eq!(p.top, 4, "{name}: every publish is positioned: {p:?}");
        kept.push((name, p.entries.iter().map(|(o, _)| *o).collect::<Vec<u64>>()));
    }
    assert_eq!(kept, vec![("small:a", vec![3, 4]), ("none:a", vec![]), ("news", vec![1, 2, 3, 4])]);
    Ok(())
}

#[tokio::test]
async fn the_memory_engine_keeps_each_namespaces_history_size() -> anyhow::Result<()> {
    per_namespace_sizes(memory_engine_with(namespaced_limits()).as_ref()).await
}

#[tokio::test]
async fn the_redis_engine_keeps_each_namespaces_history_size() -> anyhow::Result<()> {
    let redis = Redis::start().await?;
    per_namespace_sizes(&redis_engine_with(&redis, namespaced_limits())).await
}

fn datas(p: &Page) -> Vec<(u64, &str)> {
    p.entries.iter().map(|(o, d)| (*o, std::str::from_utf8(d).unwrap())).collect()
}

/// The contract, on any engine with history size 3.
async fn contract(e: &dyn Engine) -> anyhow::Result<()> {
    let ch = Channel::new("news")?;
    let a = e.append(&ch, vec![entry("1", ""), entry("2", "k2"), entry("3", "k2")]).await?;
    assert_eq!(
        a.slots,
        vec![Slot::New(1), Slot::New(2), Slot::Duplicate(2)],
        "a key repeated in one batch is a duplicate"
    );
    let epoch = a.epoch.clone();
    assert_eq!(epoch.len(), 16, "epoch {epoch:?}");
    let b = e.append(&ch, vec![entry("3", "k2"), entry("4", "k4")]).await?;
    assert_eq!(
        b,
        pushmesh_hub::engine::Appended { epoch: epoch.clone(), slots: vec![Slot::Duplicate(2), Slot::New(3)] }
    );

    // Since a position: exactly what follows.
    let p = e.read(&ch, ReadQuery { since: Some((epoch.clone(), 1)), limit: 0 }).await?;
    assert!(p.recovered);
    assert_eq!((p.epoch.as_str(), p.top), (epoch.as_str(), 3));
    assert_eq!(datas(&p), vec![(2, "2"), (3, "4")]);
    let p = e.read(&ch, ReadQuery { since: Some((epoch.clone(), 3)), limit: 0 }).await?;
    assert!(p.recovered && p.entries.is_empty(), "nothing missed at the top: {p:?}");
    let p = e.read(&ch, ReadQuery { since: Some(("0123456789abcdef".into(), 1)), limit: 0 }).await?;
    assert!(!p.recovered && p.entries.is_empty(), "another epoch is not recovered: {p:?}");
    let p = e.read(&ch, ReadQuery { since: Some((epoch.clone(), 9)), limit: 0 }).await?;
    assert!(!p.recovered, "a position past the top is not recovered: {p:?}");

    // Past the size bound (3): the oldest goes, and recovery from before it fails.
    e.append(&ch, vec![entry("5", ""), entry("6", "")]).await?;
    let p = e.read(&ch, ReadQuery { since: Some((epoch.clone(), 1)), limit: 0 }).await?;
    assert!(!p.recovered, "entry 2 was trimmed: {p:?}");
    let p = e.read(&ch, ReadQuery { since: Some((epoch.clone(), 2)), limit: 0 }).await?;
    assert!(p.recovered);
    assert_eq!(datas(&p), vec![(3, "4"), (4, "5"), (5, "6")]);
    // The key of a trimmed entry is forgotten with it.
    let c = e.append(&ch, vec![entry("x", "k4"), entry("again", "k2")]).await?;
    assert_eq!(c.slots, vec![Slot::Duplicate(3), Slot::New(6)], "k4 (offset 3) is kept, k2 (offset 2) is not");

    // From the oldest kept, with a limit.
    let p = e.read(&ch, ReadQuery { since: None, limit: 2 }).await?;
    assert!(p.recovered);
    assert_eq!(datas(&p), vec![(4, "5"), (5, "6")]);
    let p = e.read(&Channel::new("nothing-here")?, ReadQuery { since: None, limit: 0 }).await?;
    assert_eq!((p.epoch.as_str(), p.top, p.entries.len()), ("", 0, 0));

    // Removed: the next publish starts a new epoch at offset 1.
    e.remove(&ch).await?;
    let d = e.append(&ch, vec![entry("fresh", "k2")]).await?;
    assert_ne!(d.epoch, epoch);
    assert_eq!(d.slots, vec![Slot::New(1)]);
    Ok(())
}

#[tokio::test]
async fn the_memory_engine_keeps_the_contract() -> anyhow::Result<()> {
    contract(memory_engine(3, Duration::from_secs(60)).as_ref()).await
}

#[tokio::test]
async fn the_redis_engine_keeps_the_contract() -> anyhow::Result<()> {
    let redis = Redis::start().await?;
    contract(&redis_engine(&redis, 3, Duration::from_secs(60))).await
}

/// Entries older than the TTL are not recovered, and a stream without
/// publishes for the TTL starts a new epoch.
#[tokio::test]
async fn the_redis_engine_expires_history_and_streams_after_the_ttl() -> anyhow::Result<()> {
    let redis = Redis::start().await?;
    let e = redis_engine(&redis, 10, Duration::from_secs(1));
    let ch = Channel::new("short")?;
    let a = e.append(&ch, vec![entry("1", "k")]).await?;
    let p = e.read(&ch, ReadQuery { since: Some((a.epoch.clone(), 0)), limit: 0 }).await?;
    assert!(p.recovered && p.entries.len() == 1, "{p:?}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let p = e.read(&ch, ReadQuery { since: Some((a.epoch.clone(), 0)), limit: 0 }).await?;
        if !p.recovered {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "history never expired");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let b = e.append(&ch, vec![entry("2", "k")]).await?;
    assert_ne!(b.epoch, a.epoch, "an expired stream starts a new epoch");
    assert_eq!(b.slots, vec![Slot::New(1)], "and its keys are gone with it");
    Ok(())
}

/// Many appends of many channels in flight at once on two connections:
/// per channel, offsets are unique and consecutive.
#[tokio::test]
async fn concurrent_redis_appends_get_unique_consecutive_offsets() -> anyhow::Result<()> {
    let redis = Redis::start().await?;
    let e = Arc::new(redis_engine(&redis, 100, Duration::from_secs(60)));
    let mut tasks = Vec::new();
    for c in 0..20 {
        for _ in 0..10 {
            let e = e.clone();
            tasks.push(tokio::spawn(async move {
                let ch = Channel::new(format!("c{c}")).unwrap();
                let mut got = Vec::new();
                for i in 0..10 {
                    let a = e.append(&ch, vec![entry(&i.to_string(), "")]).await.unwrap();
                    got.extend(a.slots);
                }
                (c, got)
            }));
        }
    }
    let mut per = vec![Vec::new(); 20];
    for t in tasks {
        let (c, got) = t.await?;
        per[c].extend(got.into_iter().map(|s| match s {
            Slot::New(o) => o,
            Slot::Duplicate(_) => panic!("no keys were used"),
        }));
    }
    for (c, mut offsets) in per.into_iter().enumerate() {
        offsets.sort_unstable();
        assert_eq!(offsets, (1..=100).collect::<Vec<u64>>(), "channel c{c}");
    }
    Ok(())
}
