//! The `pushmesh` binary against the real services: what a user types,
//! what they see, and the exit codes scripts depend on.

use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use pushmesh_common::proto::ApiStatsRequest;
use pushmesh_common::proto::push_api_client::PushApiClient;
use pushmesh_tests::{SECRET, System, WAIT};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};

fn pushmesh() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_pushmesh"));
    c.env_remove("PUSHMESH_INGRESS_URL").env_remove("PUSHMESH_GATEWAY_URL").env_remove("PUSHMESH_JWT_SECRET");
    c.kill_on_drop(true);
    c
}

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

async fn run(args: &[&str], stdin: Option<&str>) -> Result<Out> {
    let mut c = pushmesh();
    c.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    c.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
    let mut child = c.spawn()?;
    if let Some(input) = stdin {
        use tokio::io::AsyncWriteExt;
        let mut s = child.stdin.take().expect("piped");
        s.write_all(input.as_bytes()).await?;
    }
    let out = tokio::time::timeout(WAIT, child.wait_with_output()).await.context("pushmesh did not exit")??;
    Ok(Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// A `pushmesh listen` running in the background, its stderr read line by
/// line so the test can wait for "subscribed to …".
struct Listener {
    child: Child,
    stderr: tokio::io::Lines<BufReader<tokio::process::ChildStderr>>,
    seen: Vec<String>,
}

impl Listener {
    async fn start(args: &[&str]) -> Result<Self> {
        let mut child = pushmesh()
            .arg("listen")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let stderr = BufReader::new(child.stderr.take().expect("piped")).lines();
        Ok(Self { child, stderr, seen: Vec::new() })
    }

    async fn wait_for(&mut self, needle: &str) -> Result<String> {
        let found = tokio::time::timeout(WAIT, async {
            while let Some(line) = self.stderr.next_line().await? {
                self.seen.push(line.clone());
                if line.contains(needle) {
                    return Ok(line);
                }
            }
            bail!("listen ended before printing {needle:?}; stderr so far: {:?}", self.seen)
        })
        .await;
        found.map_err(|_| anyhow::anyhow!("no {needle:?} on listen's stderr within {WAIT:?}: {:?}", self.seen))?
    }

    async fn finish(mut self) -> Result<Out> {
        let mut stdout = String::new();
        let mut pipe = self.child.stdout.take().expect("piped");
        let status = tokio::time::timeout(WAIT, async {
            pipe.read_to_string(&mut stdout).await?;
            self.child.wait().await
        })
        .await
        .context("listen did not exit")??;
        while let Ok(Some(line)) = self.stderr.next_line().await {
            self.seen.push(line);
        }
        Ok(Out { code: status.code().unwrap_or(-1), stdout, stderr: self.seen.join("\n") })
    }
}

#[tokio::test]
async fn publish_and_listen_round_trip_with_exit_codes() -> Result<()> {
    let sys = System::start(1, 1).await?;
    let gw = format!("ws://{}/ws", sys.gw(0));
    let api = format!("http://{}", sys.api());

    // A smoke client: exits 0 once 2 messages arrived.
    let mut l = Listener::start(&["--gateway", &gw, "--channel", "news", "--count", "2", "--timeout", "10s"]).await?;
    let welcome = l.wait_for("connected: connection ").await?;
    let conn = welcome.split_whitespace().nth(2).expect("connection id").to_owned();
    l.wait_for("subscribed to news").await?;

    let p = run(&["publish", "--ingress", &api, "--channel", "news", r#"{"text":"hi"}"#], None).await?;
    assert_eq!(p.code, 0, "{}", p.stderr);
    assert_eq!(p.stdout.trim(), "published to channel news (1 gateway has recipients)");
    // Meanwhile (the listener waits for a second message): presence and
    // stats see it, as tables.
    let pr = run(&["presence", "--ingress", &api, "news"], None).await;
    let st = run(&["stats", "--ingress", &api], None).await;
    // Data from stdin, not JSON: sent as a string, the trailing newline dropped.
    let p = run(&["publish", "--ingress", &api, "--channel", "news"], Some("plain text\n")).await?;
    assert_eq!(p.code, 0, "{}", p.stderr);

    let out = l.finish().await?;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout, "news: {\"text\":\"hi\"}\nnews: \"plain text\"\n");
    assert!(out.stderr.contains("received 2 message(s)"), "{}", out.stderr);
    assert!(out.stderr.contains("resume news from here: pushmesh listen --channel news --since "), "{}", out.stderr);

    let pr = pr?;
    assert_eq!(pr.code, 0, "{}", pr.stderr);
    assert!(pr.stdout.starts_with("channel news: 1 connection, 0 users\n"), "{}", pr.stdout);
    assert!(pr.stdout.contains(&format!("\n{conn}")), "presence lists {conn}: {}", pr.stdout);
    let st = st?;
    assert_eq!(st.code, 0, "{}", st.stderr);
    assert!(st.stdout.starts_with("connections  1\nchannels     1\n"), "{}", st.stdout);
    assert!(st.stdout.contains("GATEWAY"), "{}", st.stdout);

    // Nothing published: --timeout fails with exit 4 and says so.
    let t =
        run(&["listen", "--gateway", &gw, "--channel", "quiet", "--count", "1", "--timeout", "500ms"], None).await?;
    assert_eq!(t.code, 4, "{}", t.stderr);
    assert!(t.stderr.contains("timed out after 500ms: 0 of 1 message(s) arrived"), "{}", t.stderr);

    // --since is sent, and the reply's `recovered` flag is printed.
    let r =
        run(&["listen", "--gateway", &gw, "--channel", "news", "--since", "0:0", "--timeout", "300ms"], None).await?;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("subscribed to news; recovered: "), "{}", r.stderr);
    assert!(r.stderr.contains(r#""recovered":"#), "{}", r.stderr);

    // A refused request: exit 1, the server's reason, and what to do.
    let bad = run(&["publish", "--ingress", &api, "--channel", "bad name", "x"], None).await?;
    assert_eq!(bad.code, 1);
    assert!(bad.stderr.contains("error: 400 invalid_channel: "), "{}", bad.stderr);
    assert!(bad.stderr.contains("hint: channel names are"), "{}", bad.stderr);
    let gone = run(&["publish", "--ingress", &api, "--connection", "nobody:1", "x"], None).await?;
    assert_eq!(gone.code, 1, "{}", gone.stderr);
    assert!(gone.stderr.contains("hint:"), "{}", gone.stderr);

    // Usage errors: exit 2.
    let u = run(&["publish", "--ingress", &api, "x"], None).await?;
    assert_eq!(u.code, 2, "{}", u.stderr);
    let u = run(&["publish", "--ingress", &api, "--channel", "news", "--json", "{oops"], None).await?;
    assert_eq!(u.code, 2, "{}", u.stderr);
    assert!(u.stderr.contains("not valid JSON"), "{}", u.stderr);
    Ok(())
}

#[tokio::test]
async fn nothing_running_means_exit_3_and_a_hint_to_start_it() -> Result<()> {
    // A port nothing listens on, on this test's own loopback address (so no
    // other test can start listening there meanwhile).
    let free = pushmesh_tests::free_addr_on(pushmesh_tests::unique_loopback(0))?;
    let (ip, port) = (free.ip(), free.port());
    let p = run(&["publish", "--ingress", &format!("http://{free}"), "--broadcast", "x"], None).await?;
    assert_eq!(p.code, 3, "{}", p.stderr);
    assert!(p.stderr.contains("pushmesh dev"), "{}", p.stderr);
    let l = run(&["listen", "--gateway", &format!("{ip}:{port}"), "--connect-timeout", "1500ms"], None).await?;
    assert_eq!(l.code, 3, "{}", l.stderr);
    assert!(l.stderr.contains(&format!("waiting for the gateway at ws://{ip}:{port}")), "progress line: {}", l.stderr);
    assert!(l.stderr.contains("hint: is pushmesh running?"), "{}", l.stderr);
    Ok(())
}

#[tokio::test]
async fn tokens_minted_by_the_cli_are_accepted_and_enforced() -> Result<()> {
    let sys = System::start_with(1, 1, &["--jwt-secret", SECRET, "--auth-timeout-secs", "1"], &[]).await?;
    let gw = format!("ws://{}/ws", sys.gw(0));
    let api = format!("http://{}", sys.api());

    let t = run(&["token", "--secret", SECRET, "--user", "alice", "--channel", "chat:*", "--ttl", "5m"], None).await?;
    assert_eq!(t.code, 0, "{}", t.stderr);
    let token = t.stdout.trim().to_owned();
    assert_eq!(token.split('.').count(), 3, "a JWT on stdout: {token}");

    let mut l = Listener::start(&[
        "--gateway",
        &gw,
        "--token",
        &token,
        "--channel",
        "chat:1",
        "--count",
        "1",
        "--timeout",
        "10s",
    ])
    .await?;
    let welcome = l.wait_for("connected: ").await?;
    assert!(welcome.ends_with(", user alice"), "{welcome}");
    l.wait_for("subscribed to chat:1").await?;
    let p = run(&["publish", "--ingress", &api, "--user", "alice", "for alice"], None).await?;
    assert_eq!(p.code, 0, "{}", p.stderr);
    let out = l.finish().await?;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout, "(broadcast or direct): \"for alice\"\n");

    // A channel the token does not allow: refused, exit 1, with the fix.
    let r = run(&["listen", "--gateway", &gw, "--token", &token, "--channel", "news", "--timeout", "5s"], None).await?;
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("permission_denied"), "{}", r.stderr);
    assert!(r.stderr.contains("pushmesh token --user ID --channel 'news'"), "{}", r.stderr);

    // No token: the gateway closes with 4001, exit 5, and the hint says how.
    let n = run(&["listen", "--gateway", &gw, "--timeout", "15s"], None).await?;
    assert_eq!(n.code, 5, "{}", n.stderr);
    assert!(n.stderr.contains("code 4001"), "{}", n.stderr);
    assert!(n.stderr.contains("pass --token"), "{}", n.stderr);

    // A token signed with another secret is refused the same way.
    let other = run(&["token", "--secret", "not-the-secret", "--user", "mallory", "--channel", "*"], None).await?;
    let m = run(&["listen", "--gateway", &gw, "--token", other.stdout.trim(), "--timeout", "5s"], None).await?;
    assert_eq!(m.code, 5, "{}", m.stderr);
    Ok(())
}

/// The arguments of `pushmesh dev --help`'s "any free ports" example,
/// exactly as a user would copy them.
async fn free_ports_example() -> Result<Vec<String>> {
    let help = run(&["dev", "--help"], None).await?;
    assert_eq!(help.code, 0, "{}", help.stderr);
    // The example starts on the line that has `pushmesh dev --hub-grpc-addr`.
    let all: Vec<&str> = help.stdout.lines().collect();
    let first = all
        .iter()
        .position(|l| l.trim_start().starts_with("pushmesh dev --hub-grpc-addr"))
        .with_context(|| format!("no free-ports example in pushmesh dev --help:\n{}", help.stdout))?;
    let mut text = String::new();
    for l in &all[first..] {
        let l = l.split('#').next().unwrap_or_default().trim();
        match l.strip_suffix('\\') {
            Some(more) => text.push_str(more),
            None => {
                text.push_str(l);
                break;
            }
        }
        text.push(' ');
    }
    let args: Vec<String> = text.split_whitespace().skip(2).map(str::to_owned).collect();
    assert!(args.contains(&"--announce".to_owned()), "the example announces its ports: {text}");
    Ok(args)
}

/// A `pushmesh dev` started with `args`: its announced addresses, once its
/// banner said it is ready.
struct Dev {
    child: Child,
    listening: serde_json::Value,
    banner: String,
}

impl Dev {
    async fn start(args: &[String]) -> Result<Dev> {
        let mut child = pushmesh()
            .arg("dev")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let mut stdout = BufReader::new(child.stdout.take().expect("piped")).lines();
        let line = tokio::time::timeout(WAIT, stdout.next_line()).await??.context("dev printed nothing")?;
        let v: serde_json::Value = serde_json::from_str(&line).with_context(|| format!("announce line {line:?}"))?;
        // The banner comes once the gateway and ingress are ready.
        let mut banner = String::new();
        tokio::time::timeout(WAIT, async {
            while let Some(l) = stdout.next_line().await? {
                banner.push_str(&l);
                banner.push('\n');
                if l.starts_with("Ctrl-C stops") {
                    break;
                }
            }
            anyhow::Ok(())
        })
        .await
        .context("no banner")??;
        tokio::spawn(async move { while let Ok(Some(_)) = stdout.next_line().await {} });
        Ok(Dev { child, listening: v["listening"].clone(), banner })
    }

    fn addr(&self, k: &str) -> String {
        let a = self.listening[k].as_str().unwrap_or_default().to_owned();
        assert!(!a.is_empty(), "dev announced no {k:?}: {}", self.listening);
        a
    }

    /// SIGTERM: exits 0 and says "stopped.".
    async fn stop(mut self) -> Result<()> {
        let pid = self.child.id().expect("running").to_string();
        assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status()?.success());
        let status =
            tokio::time::timeout(Duration::from_secs(15), self.child.wait()).await.context("dev did not stop")??;
        let mut err = String::new();
        self.child.stderr.take().expect("piped").read_to_string(&mut err).await?;
        assert!(status.success(), "dev exits 0 on SIGTERM: {status:?}\n{err}");
        assert!(err.contains("stopped."), "{err}");
        Ok(())
    }
}

#[tokio::test]
async fn two_devs_side_by_side_on_the_free_ports_of_the_help_example() -> Result<()> {
    let args = free_ports_example().await?;
    let a = Dev::start(&args).await?;
    let b = Dev::start(&args).await?;
    let ports = |d: &Dev| -> Vec<String> {
        ["grpc", "admin", "gateway", "ingress", "ingress_grpc"].iter().map(|k| d.addr(k)).collect()
    };
    let (pa, pb) = (ports(&a), ports(&b));
    for p in pa.iter().chain(&pb) {
        assert!(!p.ends_with(":0") && p.starts_with("127.0.0.1:"), "a real bound port: {pa:?} {pb:?}");
    }
    assert!(pa.iter().all(|p| !pb.contains(p)), "no port shared: {pa:?} {pb:?}");

    for dev in [&a, &b] {
        let (gw, api, admin, api_grpc) =
            (dev.addr("gateway"), dev.addr("ingress"), dev.addr("admin"), dev.addr("ingress_grpc"));
        assert!(dev.banner.contains(&format!("demo page   http://{gw}/?ingress=http://{api}")), "{}", dev.banner);
        assert!(dev.banner.contains(&format!("(gRPC API: {api_grpc})")), "{}", dev.banner);

        // Each really works end to end, including the demo page and CORS for it.
        let mut l =
            Listener::start(&["--gateway", &gw, "--channel", "news", "--count", "1", "--timeout", "10s"]).await?;
        l.wait_for("subscribed to news").await?;
        let p = run(&["publish", "--ingress", &api, "--channel", "news", &format!("from dev {gw}")], None).await?;
        assert_eq!(p.code, 0, "{}", p.stderr);
        let out = l.finish().await?;
        assert_eq!(out.stdout, format!("news: \"from dev {gw}\"\n"), "{}", out.stderr);
        let page = reqwest::get(format!("http://{gw}/")).await?;
        assert_eq!(page.status(), 200);
        assert!(page.text().await?.contains("pushmesh"));
        let preflight = reqwest::Client::new()
            .request(reqwest::Method::OPTIONS, format!("http://{api}/publish"))
            .header("origin", format!("http://{gw}"))
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "content-type")
            .send()
            .await?;
        assert_eq!(
            preflight.headers().get("access-control-allow-origin").and_then(|h| h.to_str().ok()),
            Some(format!("http://{gw}").as_str()),
            "the ingress allows the demo page's origin"
        );
        let metrics = reqwest::get(format!("http://{admin}/metrics")).await?.text().await?;
        assert!(metrics.contains("pushmesh_hub_publishes_total"), "hub admin serves metrics");
        // The publish reached the hub in the same process as a call.
        let ingress_metrics = reqwest::get(format!("http://{api}/metrics")).await?.text().await?;
        assert!(
            ingress_metrics
                .lines()
                .any(|l| l.starts_with("pushmesh_ingress_colocated_publishes_total ") && !l.ends_with(" 0")),
            "the ingress handed its publish to the hub in its process"
        );
        // The announced gRPC port is this dev's ingress gRPC API: it answers Stats.
        let mut grpc = PushApiClient::connect(format!("http://{api_grpc}")).await?;
        let stats = grpc.stats(ApiStatsRequest::default()).await?.into_inner();
        assert_eq!(stats.gateways.len(), 1, "{stats:?}");
    }
    a.stop().await?;
    b.stop().await?;
    Ok(())
}

/// `pushmesh dev --namespaces` gives the file to its hub too: a namespace's
/// `history_size` holds in `GET /history`.
#[tokio::test]
async fn dev_gives_the_namespaces_file_to_its_hub() -> Result<()> {
    let file =
        pushmesh_tests::scratch_file("namespaces.toml", "[[namespace]]\nprefix = \"short:\"\nhistory_size = 2\n")?;
    let mut args = free_ports_example().await?;
    args.extend(["--namespaces".to_owned(), file.to_str().expect("utf-8 path").to_owned()]);
    let dev = Dev::start(&args).await?;
    let api = dev.addr("ingress");
    let http = reqwest::Client::new();
    for ch in ["short:a", "long"] {
        for i in 0..4 {
            let r = http
                .post(format!("http://{api}/publish"))
                .json(&serde_json::json!({ "channel": ch, "data": i }))
                .send()
                .await?;
            assert_eq!(r.status(), 200, "{}", r.text().await?);
        }
    }
    let kept = |v: serde_json::Value| v["messages"].as_array().map(Vec::len);
    let short: serde_json::Value = reqwest::get(format!("http://{api}/history?channel=short:a")).await?.json().await?;
    let long: serde_json::Value = reqwest::get(format!("http://{api}/history?channel=long")).await?.json().await?;
    assert_eq!((kept(short), kept(long)), (Some(2), Some(4)));
    dev.stop().await
}

#[tokio::test]
async fn broadcasts_api_key_hints_and_a_gateway_that_is_not_ready() -> Result<()> {
    let sys = System::start_with(1, 1, &[], &["--api-key", "right-key-0123456789"]).await?;
    let gw = format!("ws://{}/ws", sys.gw(0));
    let api = format!("http://{}", sys.api());

    // A broadcast is labelled as one of the channel-less deliveries, not as "(direct)".
    let mut l = Listener::start(&["--gateway", &gw, "--count", "1", "--timeout", "10s"]).await?;
    l.wait_for("no --channel").await?;
    let p =
        run(&["publish", "--ingress", &api, "--api-key", "right-key-0123456789", "--broadcast", "all"], None).await?;
    assert_eq!(p.code, 0, "{}", p.stderr);
    let out = l.finish().await?;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout, "(broadcast or direct): \"all\"\n");

    // No key: the hint says to pass one.
    let none = run(&["publish", "--ingress", &api, "--broadcast", "x"], None).await?;
    assert_eq!(none.code, 1, "{}", none.stderr);
    assert!(none.stderr.contains("hint: this ingress requires an API key: pass --api-key"), "{}", none.stderr);
    // A wrong key: the hint says the key given was refused, not "pass --api-key".
    let wrong =
        run(&["publish", "--ingress", &api, "--api-key", "wrong-key-0123456789", "--broadcast", "x"], None).await?;
    assert_eq!(wrong.code, 1, "{}", wrong.stderr);
    assert!(wrong.stderr.contains("did not accept the API key given"), "{}", wrong.stderr);
    assert!(!wrong.stderr.contains("pass --api-key"), "{}", wrong.stderr);

    // A gateway with no hub to attach to is up but not ready (503 on the
    // upgrade): listen keeps trying for --connect-timeout, then exits 3 as
    // its help says, with the gateway's reason.
    let unready = pushmesh_tests::gateway(&["http://127.0.0.1:1".to_owned()], &[]).await?;
    let u = run(
        &["listen", "--gateway", &format!("ws://{}/ws", unready.addr("http")), "--connect-timeout", "1500ms"],
        None,
    )
    .await?;
    assert_eq!(u.code, 3, "{}", u.stderr);
    assert!(u.stderr.contains("HTTP 503: this gateway is not attached to any hub yet"), "{}", u.stderr);
    Ok(())
}
