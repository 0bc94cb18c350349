//! `make run` (scripts/run.sh) as a user meets it: the real script starting
//! the real binaries on its fixed ports. Each test gives it a loopback
//! address of its own (`unique_loopback`), so the fixed ports collide with
//! neither other tests nor a developer's own `make run` on 127.0.0.1, and
//! its own log directory; PUSHMESH_RUN_BIN points it at the binaries cargo
//! already built, so it does not run cargo.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use pushmesh_tests::*;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// One `scripts/run.sh`, in its own process group (so the test can always
/// kill it and its children), its stdout and stderr collected line by line.
struct MakeRun {
    child: Child,
    output: Arc<Mutex<Vec<String>>>,
}

impl MakeRun {
    fn start(host: IpAddr, logs: &Path) -> Result<MakeRun> {
        Self::start_with(host, logs, &[])
    }

    fn start_with(host: IpAddr, logs: &Path, env: &[(&str, &str)]) -> Result<MakeRun> {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/run.sh");
        let mut child = Command::new(script)
            .env("PUSHMESH_RUN_HOST", host.to_string())
            .env("PUSHMESH_RUN_LOGS", logs)
            .env("PUSHMESH_RUN_BIN", bin_dir())
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .context("start scripts/run.sh")?;
        let output = Arc::new(Mutex::new(Vec::new()));
        tokio::spawn(collect(BufReader::new(child.stdout.take().expect("piped")).lines(), output.clone()));
        tokio::spawn(collect(BufReader::new(child.stderr.take().expect("piped")).lines(), output.clone()));
        Ok(MakeRun { child, output })
    }

    fn text(&self) -> String {
        self.output.lock().expect("lock").join("\n")
    }

    /// Wait until a line containing `needle` was printed; that line.
    async fn wait_for(&self, needle: &str) -> Result<String> {
        eventually(&format!("make run to print {needle:?}"), || async {
            self.output.lock().expect("lock").iter().find(|l| l.contains(needle)).cloned()
        })
        .await
        .with_context(|| format!("make run printed:\n{}", self.text()))
    }

    /// Its exit status, within `limit`.
    async fn exit(&mut self, limit: Duration) -> Result<std::process::ExitStatus> {
        let status = tokio::time::timeout(limit, self.child.wait())
            .await
            .with_context(|| format!("make run did not exit within {limit:?}; it printed:\n{}", self.text()))??;
        // Let the readers take the last lines.
        tokio::time::sleep(Duration::from_millis(50)).await;
        Ok(status)
    }

    /// Ctrl-C's signal to the script alone: it stops its services and exits 0.
    async fn stop(mut self) -> Result<()> {
        let pid = self.child.id().expect("running").to_string();
        assert!(std::process::Command::new("kill").args(["-INT", &pid]).status()?.success());
        let status = self.exit(WAIT).await?;
        assert!(status.success(), "make run exits 0 on Ctrl-C: {status:?}\n{}", self.text());
        assert!(self.text().contains("make run: stopped."), "{}", self.text());
        Ok(())
    }
}

impl Drop for MakeRun {
    fn drop(&mut self) {
        // Whatever happened, no process of this test outlives it.
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill").args(["-KILL", "--", &format!("-{pid}")]).status();
        }
    }
}

/// Append each line to `output` as it comes.
async fn collect<R: tokio::io::AsyncBufRead + Unpin>(mut lines: tokio::io::Lines<R>, output: Arc<Mutex<Vec<String>>>) {
    while let Ok(Some(l)) = lines.next_line().await {
        output.lock().expect("lock").push(l);
    }
}

fn logs_dir(test: &str) -> Result<PathBuf> {
    let d = bin_dir().parent().expect("target").join("test-logs").join(format!("{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d)?;
    Ok(d)
}

/// The first number after `after` in `line` (a pid in run.sh's messages).
fn pid_in(line: &str, after: &str) -> Result<u32> {
    let rest = line.split(after).nth(1).with_context(|| format!("no {after:?} in {line:?}"))?;
    let digits: String = rest.chars().skip_while(|c| !c.is_ascii_digit()).take_while(char::is_ascii_digit).collect();
    digits.parse().with_context(|| format!("no pid after {after:?} in {line:?}"))
}

/// A client on the gateway subscribed to `channel` receives a publish made
/// through the ingress: the system serves end to end. Publishes are retried
/// until a gateway has the subscriber (after a restart the gateway may still
/// be re-attaching).
async fn serves(host: IpAddr, channel: &str) -> Result<()> {
    let gw = SocketAddr::new(host, 8080);
    let api = SocketAddr::new(host, 8081);
    let mut c = Client::connect(gw, "").await?;
    c.subscribe(channel).await?;
    eventually("a publish to reach the subscriber's gateway", || async {
        let r = post(api, "/publish", &json!({"channel": channel, "data": "hello"})).await.ok()?;
        (r.0 == 200 && r.1["gateways"] == json!(1)).then_some(())
    })
    .await?;
    // Earlier attempts may have been accepted with no recipient; this one was delivered.
    c.expect_data(&json!("hello")).await?;
    Ok(())
}

#[tokio::test]
async fn a_second_make_run_names_who_holds_its_ports_and_leaves_the_first_alone() -> Result<()> {
    let host = unique_loopback(0);
    let logs = logs_dir("make-run-twice")?;
    let first = MakeRun::start(host, &logs)?;
    let hint = first.wait_for("A service that dies is restarted").await?;
    let hub_pid = pid_in(&hint, "kill -9")?;
    serves(host, "first").await?;
    let log_before = std::fs::metadata(logs.join("hub.log"))?.len();
    assert!(log_before > 0, "the hub logged something");

    let mut second = MakeRun::start(host, &logs)?;
    let status = second.exit(WAIT).await?;
    let said = second.text();
    assert_eq!(status.code(), Some(1), "{said}");
    assert!(said.contains(&format!("{host}:50051 is already in use by hub (pid {hub_pid})")), "{said}");
    assert!(said.contains(&format!("{host}:8080 is already in use by ws-gateway (pid ")), "{said}");
    assert!(said.contains("not starting: is another `make run`"), "{said}");
    assert!(!said.contains("pushmesh is running"), "no banner for someone else's services: {said}");

    // The first one's logs were not truncated, and it still serves.
    assert!(std::fs::metadata(logs.join("hub.log"))?.len() >= log_before, "hub.log was truncated");
    serves(host, "still-first").await?;
    first.stop().await
}

#[tokio::test]
async fn make_run_restarts_a_killed_hub_and_the_system_serves_again() -> Result<()> {
    let host = unique_loopback(0);
    let logs = logs_dir("make-run-restart")?;
    let run = MakeRun::start(host, &logs)?;
    let hint = run.wait_for("A service that dies is restarted").await?;
    let hub_pid = pid_in(&hint, "kill -9")?;
    serves(host, "before").await?;

    assert!(std::process::Command::new("kill").args(["-KILL", &hub_pid.to_string()]).status()?.success());
    let said = run.wait_for(&format!("hub (pid {hub_pid}) was killed by signal KILL")).await?;
    assert!(said.contains("restarting it in 1s"), "{said}");
    let back = run.wait_for("hub is back (pid ").await?;
    assert_ne!(pid_in(&back, "(pid")?, hub_pid, "a new hub process");
    serves(host, "after").await?;

    // The gateway too: a client reconnects to the restarted gateway and is served.
    let text = run.text();
    let gw_pid = ss_pid(SocketAddr::new(host, 8080))?;
    assert!(std::process::Command::new("kill").args(["-KILL", &gw_pid.to_string()]).status()?.success());
    run.wait_for(&format!("ws-gateway (pid {gw_pid}) was killed by signal KILL")).await?;
    run.wait_for("ws-gateway is back (pid ").await?;
    serves(host, "after-gateway").await?;
    assert!(!run.text()[text.len()..].contains("giving up"), "{}", run.text());
    run.stop().await
}

#[tokio::test]
async fn make_run_exits_non_zero_when_its_services_cannot_start() -> Result<()> {
    let host = unique_loopback(0);
    let logs = logs_dir("make-run-broken")?;
    // Every service refuses this log format, so the hub exits at once.
    let mut run = MakeRun::start_with(host, &logs, &[("PUSHMESH_LOG_FORMAT", "rainbow")])?;
    let status = run.exit(WAIT).await?;
    let said = run.text();
    assert_eq!(status.code(), Some(1), "{said}");
    assert!(said.contains("hub did not start"), "{said}");
    assert!(said.contains("rainbow"), "the hub's own error is shown: {said}");
    assert!(!said.contains("pushmesh is running"), "{said}");
    Ok(())
}

/// The pid listening on `addr`, as `ss` shows it.
fn ss_pid(addr: SocketAddr) -> Result<u32> {
    let out = std::process::Command::new("ss").args(["-Hltnp", &format!("sport = :{}", addr.port())]).output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    for line in text.lines() {
        if line.split_whitespace().nth(3) == Some(addr.to_string().as_str()) {
            return pid_in(line, "pid=");
        }
    }
    bail!("nothing listens on {addr}: {text}")
}
