//! Channel namespaces on the hub: `history_size` and `history_ttl_secs`
//! per prefix (the hub reads the gateways' file), on the memory engine and
//! on the Redis engine against a real `redis-server`, seen through the
//! ingress's `GET /history` and through client recovery (`since`); and a
//! bad file stopping the hub before it binds a port, naming the line.

use pushmesh_tests::*;
use serde_json::{Value, json};

/// `short:` keeps 3 messages, `brief:` keeps them 1 s; everything else the
/// hub's flags (100 messages, 300 s). The gateway-only keys are there too:
/// both services read this one file, so the hub must accept all of it.
const FILE: &str = r#"
[[namespace]]
prefix = "short:"
history_size = 3

[[namespace]]
prefix = "brief:"
history_ttl_secs = 1
client_publish = true

[[namespace]]
prefix = "quiet:"
recover = false
"#;

async fn publish(api: std::net::SocketAddr, channel: &str, data: u64) -> anyhow::Result<Value> {
    let (code, v) = post(api, "/publish", &json!({ "channel": channel, "data": data })).await?;
    anyhow::ensure!(code == 200, "publish to {channel}: {code} {v}");
    Ok(v)
}

async fn history(api: std::net::SocketAddr, channel: &str) -> anyhow::Result<Value> {
    let (code, body) = get(api, &format!("/history?channel={channel}")).await?;
    anyhow::ensure!(code == 200, "/history?channel={channel}: {code} {body}");
    Ok(serde_json::from_str(&body)?)
}

fn offsets(v: &Value) -> Vec<u64> {
    v["messages"].as_array().map(|a| a.iter().filter_map(|m| m["offset"].as_u64()).collect()).unwrap_or_default()
}

async fn namespace_history(redis: Option<Redis>) -> anyhow::Result<()> {
    let file = scratch_file("namespaces.toml", FILE)?;
    let file = file.to_str().expect("utf-8 path");
    let mut hub_args = redis.as_ref().map(Redis::hub_args).unwrap_or_default();
    hub_args.extend(["--namespaces".to_owned(), file.to_owned()]);
    let hub_args: Vec<&str> = hub_args.iter().map(String::as_str).collect();
    let sys = System::start_full(1, &hub_args, 1, &["--namespaces", file], &[]).await?;
    let api = sys.api();

    let mut epochs = std::collections::HashMap::new();
    for i in 1..=6 {
        for ch in ["short:a", "plain", "quiet:a"] {
            let v = publish(api, ch, i).await?;
            epochs.insert(ch, v["epoch"].as_str().expect("positioned").to_owned());
        }
    }
    // The history API: short: keeps its last 3, the others the default 100.
    let short = history(api, "short:a").await?;
    assert_eq!((short["offset"].as_u64(), offsets(&short)), (Some(6), vec![4, 5, 6]), "{short}");
    assert_eq!(offsets(&history(api, "plain").await?), vec![1, 2, 3, 4, 5, 6]);
    // recover = false is the gateway's business: the hub keeps the history
    // (idempotency keys and GET /history use it).
    assert_eq!(offsets(&history(api, "quiet:a").await?), vec![1, 2, 3, 4, 5, 6]);

    // Recovery: within short:'s 3 it works, before them it cannot.
    let mut c = Client::connect(sys.gw(0), "").await?;
    let r = c.subscribe_since("short:a", &epochs["short:a"], 3).await?;
    assert_eq!((&r["recovered"], &r["offset"]), (&json!(true), &json!(6)), "{r}");
    for i in 4..=6 {
        assert_eq!(c.expect_data(&json!(i)).await?["offset"], json!(i));
    }
    let mut d = Client::connect(sys.gw(0), "").await?;
    let r = d.subscribe_since("short:a", &epochs["short:a"], 2).await?;
    assert_eq!(r["recovered"], json!(false), "offset 3 was trimmed (history_size = 3): {r}");
    let r = d.subscribe_since("plain", &epochs["plain"], 2).await?;
    assert_eq!(r["recovered"], json!(true), "the default namespace keeps 100: {r}");
    for i in 3..=6 {
        d.expect_data(&json!(i)).await?;
    }

    // TTL: brief: forgets after 1 s, plain (300 s) does not.
    let brief = publish(api, "brief:x", 1).await?;
    let epoch = brief["epoch"].as_str().expect("positioned").to_owned();
    assert_eq!(offsets(&history(api, "brief:x").await?), vec![1]);
    eventually("brief:x's history to expire", || async move {
        let v = history(api, "brief:x").await.ok()?;
        offsets(&v).is_empty().then_some(())
    })
    .await?;
    let mut e = Client::connect(sys.gw(0), "").await?;
    let r = e.subscribe_since("brief:x", &epoch, 0).await?;
    assert_eq!(r["recovered"], json!(false), "an expired message cannot be recovered: {r}");
    assert_eq!(offsets(&history(api, "plain").await?), vec![1, 2, 3, 4, 5, 6], "the default TTL still holds");
    Ok(())
}

#[tokio::test]
async fn memory_engine_keeps_each_namespaces_history_size_and_ttl() -> anyhow::Result<()> {
    namespace_history(None).await
}

#[tokio::test]
async fn redis_engine_keeps_each_namespaces_history_size_and_ttl() -> anyhow::Result<()> {
    namespace_history(Some(Redis::start().await?)).await
}

/// A bad file stops the hub before it binds a port (it never announces),
/// and the error names the line; a file with every key the gateway uses
/// (`[proxy]` included) is accepted.
#[tokio::test]
async fn the_hub_refuses_a_bad_namespaces_file_naming_the_line() -> anyhow::Result<()> {
    let cases = [
        ("[[namespace]]\nprefix = \"chat:\"\nhistory_sise = 3\n", "line 3", "history_sise"),
        ("[[namespace]]\nprefix = \"chat:\"\n\nhistory_ttl_secs = 0\n", "line 4", "history_ttl_secs must be"),
        ("[[namespace]]\nprefix = \"a b\"\n", "line 1", "cannot start a channel name"),
    ];
    for (text, line, what) in cases {
        let bad = scratch_file("bad.toml", text)?;
        let out = std::process::Command::new(bin("hub"))
            .args(["--grpc-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0", "--namespaces"])
            .arg(&bad)
            .output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{text:?} was accepted");
        assert!(
            out.stdout.is_empty(),
            "the hub announced ports with a bad file: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(stderr.contains(line) && stderr.contains(what), "{text:?}: {stderr}");
    }
    let full = scratch_file(
        "full.toml",
        &format!(
            "[proxy]\nendpoint = \"http://127.0.0.1:1/pushmesh\"\nconnect = true\n{FILE}\n[[namespace]]\nprefix = \"chat:\"\nclient_publish = true\nproxy_publish = true\njoin_leave = true\npresence = true\nrequire_claims = {{ role = \"member\" }}\n"
        ),
    )?;
    hub_with(&["--namespaces", full.to_str().expect("utf-8 path")]).await?;
    Ok(())
}
