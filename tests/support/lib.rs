//! Test support: start the real service binaries on ports the kernel picks,
//! and talk to them with real WebSocket and HTTP clients.
//!
//! Every service prints one JSON line on stdout once bound
//! (`{"service":…,"listening":{…}}`); `Proc::start` waits for it and reads
//! the addresses back, so tests never guess ports. Each process's logs go
//! to `target/test-logs/<name>-<pid>.log`. Processes are killed on drop,
//! also when a test fails.

pub mod backend;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use futures_util::{SinkExt, StreamExt};
use pushmesh_common::client::{ClientOp, ServerFrame, Since};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub mod pki;

/// How long any single expectation may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(15);

/// The directory cargo put the binaries in (next to this test binary).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/e2e-xxxx → target/<profile>; a binary of the
    // workspace (the benchmark: target/<profile>/pushmesh-bench) is there
    // already. (Redis data and logs go beside it, never into the checkout.)
    let dir = exe.parent().expect("exe dir");
    if dir.file_name().is_some_and(|n| n == "deps") { dir.parent().expect("target dir") } else { dir }.to_path_buf()
}

pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(p.exists(), "{} is missing: build the workspace binaries first (cargo build --bins)", p.display());
    p
}

/// A loopback address no other live test process uses: 127.A.B.C with
/// A.B.C taken from this process's pid (unique among live processes; nextest
/// runs each test in its own process) and `n` (0–2) picking one of three
/// addresses per test. A is never 0, so these never meet the 127.0.0.1 that
/// everything else binds. On it a test may use fixed ports, or re-bind a
/// port after killing its owner, with no other test able to take the port
/// in between.
pub fn unique_loopback(n: u8) -> std::net::IpAddr {
    assert!(n < 3, "three addresses per test process");
    let pid = std::process::id();
    // pid_max is at most 2^22 on Linux: 6 bits, then 8 and 8. A: 1..=192.
    let a = 1 + n + 3 * ((pid >> 16) & 0x3f) as u8;
    std::net::IpAddr::V4(std::net::Ipv4Addr::new(127, a, (pid >> 8) as u8, pid as u8))
}

/// One running service process.
pub struct Proc {
    pub name: String,
    child: Child,
    pub addrs: HashMap<String, SocketAddr>,
    pub log: PathBuf,
}

/// How `Proc::launch` starts a program.
pub struct Launch<'a> {
    /// The executable.
    pub program: &'a Path,
    /// The process's name in messages and `Proc::name`.
    pub name: &'a str,
    pub args: &'a [String],
    /// Where its stderr (the log) goes; the file is created afresh.
    pub log: PathBuf,
    /// PUSHMESH_LOG for it.
    pub log_filter: &'a str,
    /// How long it may take to announce its addresses.
    pub announce_within: Duration,
}

impl Proc {
    /// Start `binary` (from this build's target directory) with `args` and
    /// wait until it announces its addresses; its log goes to
    /// `target/test-logs/<binary>-<nonce>.log`.
    pub async fn start(binary: &str, args: &[&str]) -> Result<Proc> {
        let logs = bin_dir().parent().expect("target").join("test-logs");
        std::fs::create_dir_all(&logs)?;
        let nonce: u32 =
            std::process::id() ^ (std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.subsec_nanos());
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        Self::launch(Launch {
            program: &bin(binary),
            name: binary,
            args: &args,
            log: logs.join(format!("{binary}-{nonce:08x}.log")),
            log_filter: "info,pushmesh_ws_gateway=debug",
            announce_within: WAIT,
        })
        .await
    }

    /// Start a service process as `l` says and wait for its announce line
    /// (`{"service":…,"listening":{name: addr…}}`, the first line on
    /// stdout); the process is killed when the `Proc` is dropped. The one
    /// way the e2e tests, the CLI tests and the benchmark start services.
    pub async fn launch(l: Launch<'_>) -> Result<Proc> {
        let Launch { program, name, args, log, log_filter, announce_within } = l;
        if let Some(dir) = log.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let stderr = std::fs::File::create(&log).with_context(|| format!("create {}", log.display()))?;
        let mut child = Command::new(program)
            .args(args)
            .env("PUSHMESH_LOG", log_filter)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("spawn {}", program.display()))?;
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(announce_within, lines.next_line())
            .await
            .map_err(|_| {
                anyhow!("{name} did not announce its addresses within {announce_within:?}; see {}", log.display())
            })??
            .ok_or_else(|| anyhow!("{name} exited before announcing its addresses; see {}", log.display()))?;
        // Keep draining stdout so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let v: Value = serde_json::from_str(&line).with_context(|| format!("{name} announced {line:?}"))?;
        let addrs = v["listening"]
            .as_object()
            .ok_or_else(|| anyhow!("{name}: no listening map in {line}"))?
            .iter()
            .map(|(k, v)| Ok((k.clone(), v.as_str().unwrap_or_default().parse()?)))
            .collect::<Result<_>>()?;
        Ok(Proc { name: name.to_owned(), child, addrs, log })
    }

    pub fn addr(&self, name: &str) -> SocketAddr {
        self.addrs[name]
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("running")
    }

    /// The pid, or 0 once the process was reaped (for sampling that must
    /// not fail the run, as in the benchmark).
    pub fn pid_or_zero(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    /// SIGKILL and reap.
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }

    /// Send a signal by name (TERM, STOP, CONT…). STOP returns only once
    /// every thread of the process is stopped: kill(2) returns before a
    /// thread running on another CPU has stopped, and a request sent in
    /// that window would still be answered.
    pub fn signal(&self, sig: &str) {
        let status = std::process::Command::new("kill").arg(format!("-{sig}")).arg(self.pid().to_string()).status();
        assert!(status.is_ok_and(|s| s.success()), "kill -{sig} {} failed", self.pid());
        if sig == "STOP" {
            let deadline = std::time::Instant::now() + WAIT;
            while !all_threads_stopped(self.pid()) {
                assert!(std::time::Instant::now() < deadline, "{} did not stop within {WAIT:?}", self.name);
                std::thread::yield_now();
            }
        }
    }

    /// Wait for the process to exit; its exit status.
    pub async fn wait(&mut self, limit: Duration) -> Result<std::process::ExitStatus> {
        tokio::time::timeout(limit, self.child.wait())
            .await
            .map_err(|_| anyhow!("{} did not exit within {limit:?}", self.name))?
            .map_err(Into::into)
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Every thread of `pid` is in the stopped state (or the process is gone).
fn all_threads_stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return true };
    tasks.flatten().all(|t| {
        let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
        // The state is the field after the parenthesised command name.
        matches!(stat.rsplit_once(") ").and_then(|(_, rest)| rest.chars().next()), Some('T' | 't') | None)
    })
}

pub async fn hub() -> Result<Proc> {
    hub_with(&[]).await
}

/// A hub with extra arguments (e.g. the Redis engine: [`Redis::hub_args`]).
pub async fn hub_with(extra: &[&str]) -> Result<Proc> {
    let mut args = vec!["--grpc-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0", "--warmup-ms", "300"];
    args.extend_from_slice(extra);
    Proc::start("hub", &args).await
}

/// A hub on a given gRPC address (to start or restart one where gateways
/// expect it). The address must be on this test's own loopback address
/// (`free_addr_on(unique_loopback(n))`): there no other test can have taken
/// the port since it was learned or since its last owner was killed.
pub async fn hub_at(grpc: SocketAddr) -> Result<Proc> {
    assert!(
        grpc.ip() != std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
        "hub_at({grpc}): use an address of this test's own (unique_loopback), where no other test can take the port"
    );
    let grpc = grpc.to_string();
    Proc::start("hub", &["--grpc-addr", &grpc, "--admin-addr", "127.0.0.1:0", "--warmup-ms", "300"]).await
}

/// A port free now on `ip`, one of this test's own loopback addresses
/// (`unique_loopback`). Learning a free port and binding it later is a race
/// on a shared address (another test may take it in between); on an
/// address only this test process uses, nobody else can.
pub fn free_addr_on(ip: std::net::IpAddr) -> Result<SocketAddr> {
    Ok(std::net::TcpListener::bind((ip, 0))?.local_addr()?)
}

pub fn hub_url(hub: &Proc) -> String {
    format!("http://{}", hub.addr("grpc"))
}

pub async fn gateway(hubs: &[String], extra: &[&str]) -> Result<Proc> {
    let hubs = hubs.join(",");
    let mut args = vec!["--listen-addr", "127.0.0.1:0", "--hub", &hubs, "--reconnect-max-ms", "300"];
    args.extend_from_slice(extra);
    Proc::start("ws-gateway", &args).await
}

pub async fn ingress(hubs: &[String], extra: &[&str]) -> Result<Proc> {
    let hubs = hubs.join(",");
    let mut args =
        vec!["--listen-addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0", "--hub", &hubs, "--hub-probe-ms", "100"];
    args.extend_from_slice(extra);
    Proc::start("http-ingress", &args).await
}

/// Poll `check` every 25 ms until it returns `Some`, or fail after `WAIT`.
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if tokio::time::Instant::now() > deadline {
            bail!("timed out after {WAIT:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// GET `http://addr/path`: (status, body).
pub async fn get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let r = http().get(format!("http://{addr}{path}")).send().await?;
    Ok((r.status().as_u16(), r.text().await?))
}

/// Wait until `addr` answers `/readyz` with 200.
pub async fn wait_ready(addr: SocketAddr) -> Result<()> {
    eventually(&format!("{addr}/readyz = 200"), || async move {
        matches!(get(addr, "/readyz").await, Ok((200, _))).then_some(())
    })
    .await
}

pub fn http() -> reqwest::Client {
    // Plain HTTP only: no TLS roots to load (the workspace's reqwest has
    // rustls with the system's roots, for the gateway's JWKS URLs, and
    // reading them costs tens of milliseconds per client).
    reqwest::Client::builder().timeout(WAIT).tls_built_in_root_certs(false).build().expect("http client")
}

/// POST JSON to the ingress: (status, parsed body or the raw text as a string).
pub async fn post(addr: SocketAddr, path: &str, body: &Value) -> Result<(u16, Value)> {
    post_raw(addr, path, body.to_string().into_bytes(), "application/json").await
}

pub async fn post_raw(addr: SocketAddr, path: &str, body: Vec<u8>, content_type: &str) -> Result<(u16, Value)> {
    let r = http().post(format!("http://{addr}{path}")).header("content-type", content_type).body(body).send().await?;
    let status = r.status().as_u16();
    let text = r.text().await?;
    Ok((status, serde_json::from_str(&text).unwrap_or(Value::String(text))))
}

/// The seed's publish form: `GET /?content=…[&to_worker_id=…&to_connection_id=…]`.
pub async fn seed_get(addr: SocketAddr, content: &str, to: Option<(&str, &str)>) -> Result<(u16, String)> {
    let mut path = format!("/?content={}", urlencoding::encode(content));
    if let Some((w, c)) = to {
        path.push_str(&format!("&to_worker_id={}&to_connection_id={}", urlencoding::encode(w), urlencoding::encode(c)));
    }
    get(addr, &path).await
}

/// One sample from a Prometheus text exposition: `name` with exactly the
/// given labels (in any order); 0 when the series is absent.
pub fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (n, l) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        if n != name {
            continue;
        }
        let mut have: Vec<(String, String)> = l
            .split(',')
            .filter(|p| !p.is_empty())
            .filter_map(|p| p.split_once('=').map(|(k, v)| (k.to_owned(), v.trim_matches('"').to_owned())))
            .collect();
        let mut want: Vec<(String, String)> = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        have.sort();
        want.sort();
        if have == want {
            return value.parse().unwrap_or(f64::NAN);
        }
    }
    0.0
}

pub async fn metrics(addr: SocketAddr) -> Result<String> {
    let (code, body) = get(addr, "/metrics").await?;
    if code != 200 {
        bail!("/metrics answered {code}");
    }
    Ok(body)
}

/// A real WebSocket client.
pub struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// From the welcome frame.
    pub connection: String,
    pub gateway: String,
    next_id: u64,
}

impl Client {
    /// Connect to `ws://addr/ws{query}` and read the welcome frame.
    pub async fn connect(addr: SocketAddr, query: &str) -> Result<Client> {
        let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(format!("ws://{addr}/ws{query}")))
            .await
            .map_err(|_| anyhow!("connect to {addr} timed out"))??;
        let mut c = Client { ws, connection: String::new(), gateway: String::new(), next_id: 1 };
        let first = c.next_text().await?;
        if let Some((gateway, seq)) = seed_welcome(&first) {
            // `?format=raw`: the seed's own welcome line.
            c.connection = format!("{gateway}:{seq}");
            c.gateway = gateway;
            return Ok(c);
        }
        match ServerFrame::parse(&first) {
            Some(ServerFrame::Welcome { connection, gateway, .. }) => {
                (c.connection, c.gateway) = (connection, gateway);
                Ok(c)
            }
            _ => bail!("expected a welcome frame first, got {first}"),
        }
    }

    /// The next frame of any kind (text, close…), skipping pings and pongs.
    pub async fn next_message(&mut self) -> Result<Message> {
        loop {
            let m = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .map_err(|_| anyhow!("no frame within {WAIT:?} on {}", self.connection))?
                .ok_or_else(|| anyhow!("connection {} ended", self.connection))??;
            if !matches!(m, Message::Ping(_) | Message::Pong(_)) {
                return Ok(m);
            }
        }
    }

    pub async fn next_text(&mut self) -> Result<String> {
        match self.next_message().await? {
            Message::Text(t) => Ok(t.as_str().to_owned()),
            other => bail!("expected a text frame on {}, got {other:?}", self.connection),
        }
    }

    pub async fn next_json(&mut self) -> Result<Value> {
        let t = self.next_text().await?;
        serde_json::from_str(&t).with_context(|| format!("frame is not JSON: {t}"))
    }

    /// The next frame must be a message whose data is `data`.
    pub async fn expect_data(&mut self, data: &Value) -> Result<Value> {
        let m = self.next_json().await?;
        if m["type"] != "message" || &m["data"] != data {
            bail!("{} expected a message with data {data}, got {m}", self.connection);
        }
        Ok(m)
    }

    pub async fn send_json(&mut self, v: &Value) -> Result<()> {
        self.ws.send(Message::Text(v.to_string().into())).await?;
        Ok(())
    }

    pub async fn send_raw(&mut self, m: Message) -> Result<()> {
        self.ws.send(m).await?;
        Ok(())
    }

    /// Send a command with a fresh id and return its reply (the next frame).
    pub async fn command(&mut self, mut cmd: Value) -> Result<Value> {
        let id = self.next_id;
        self.next_id += 1;
        cmd["id"] = json!(id);
        self.send_json(&cmd).await?;
        let reply = self.next_json().await?;
        if reply["type"] != "reply" || reply["id"] != json!(id) {
            bail!("expected the reply to command {id}, got {reply}");
        }
        Ok(reply)
    }

    /// Subscribe with a `since` position (recovery), require `ok`; the reply.
    pub async fn subscribe_since(&mut self, channel: &str, epoch: &str, offset: u64) -> Result<Value> {
        let since = Since { epoch: epoch.to_owned(), offset };
        let r = self.command(serde_json::to_value(ClientOp::subscribe(0, channel, Some(since)))?).await?;
        if r["ok"] != json!(true) {
            bail!("subscribe to {channel} with since failed: {r}");
        }
        Ok(r)
    }

    /// Subscribe and require `ok`.
    pub async fn subscribe(&mut self, channel: &str) -> Result<()> {
        let r = self.command(serde_json::to_value(ClientOp::subscribe(0, channel, None))?).await?;
        if r["ok"] != json!(true) {
            bail!("subscribe to {channel} failed: {r}");
        }
        Ok(())
    }

    /// Wait for the server to close the connection; its close code and reason.
    pub async fn expect_close(&mut self) -> Result<(u16, String)> {
        loop {
            match self.next_message().await {
                Ok(Message::Close(Some(f))) => {
                    return Ok((u16::from(f.code), f.reason.as_str().to_owned()));
                }
                Ok(Message::Close(None)) => return Ok((1005, String::new())),
                Ok(_) => continue,
                Err(e) => bail!("connection ended without a close frame: {e}"),
            }
        }
    }
}

/// Write `contents` to a fresh file named `name` under the test-logs
/// directory (config files for a service under test); its path.
pub fn scratch_file(name: &str, contents: &str) -> Result<PathBuf> {
    let dir = bin_dir().parent().expect("target").join("test-files");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!("{}-{}-{name}", std::process::id(), rand::random::<u32>()));
    std::fs::write(&path, contents)?;
    Ok(path)
}

/// The seed's welcome line, `worker id:GATEWAY connection id:N connected`
/// (what `?format=raw` clients get first): (gateway, N).
pub fn seed_welcome(line: &str) -> Option<(String, u64)> {
    let rest = line.strip_prefix("worker id:")?;
    let (gateway, rest) = rest.split_once(" connection id:")?;
    let seq = rest.strip_suffix(" connected")?.parse().ok()?;
    Some((gateway.to_owned(), seq))
}

/// A whole local system: hubs, gateways (each attached to every hub) and
/// one ingress, all ready.
pub struct System {
    pub hubs: Vec<Proc>,
    pub gateways: Vec<Proc>,
    pub ingress: Proc,
}

impl System {
    pub async fn start(hubs: usize, gateways: usize) -> Result<System> {
        Self::start_with(hubs, gateways, &[], &[]).await
    }

    pub async fn start_with(
        hubs: usize,
        gateways: usize,
        gateway_args: &[&str],
        ingress_args: &[&str],
    ) -> Result<System> {
        Self::start_full(hubs, &[], gateways, gateway_args, ingress_args).await
    }

    /// Like `start_with`, with extra hub arguments too.
    pub async fn start_full(
        hubs: usize,
        hub_args: &[&str],
        gateways: usize,
        gateway_args: &[&str],
        ingress_args: &[&str],
    ) -> Result<System> {
        let mut hub_procs = Vec::new();
        for _ in 0..hubs {
            hub_procs.push(hub_with(hub_args).await?);
        }
        let urls: Vec<String> = hub_procs.iter().map(hub_url).collect();
        let mut gws = Vec::new();
        for _ in 0..gateways {
            gws.push(gateway(&urls, gateway_args).await?);
        }
        let ingress = ingress(&urls, ingress_args).await?;
        for g in &gws {
            wait_ready(g.addr("http")).await?;
        }
        wait_ready(ingress.addr("http")).await?;
        Ok(System { hubs: hub_procs, gateways: gws, ingress })
    }

    pub fn api(&self) -> SocketAddr {
        self.ingress.addr("http")
    }

    pub fn gw(&self, i: usize) -> SocketAddr {
        self.gateways[i].addr("http")
    }

    /// Which hub (index) owns `channel`: publish a `"probe"` once and see
    /// whose counter moved.
    pub async fn owner_of(&self, channel: &str) -> Result<usize> {
        let mut before = Vec::new();
        for h in &self.hubs {
            before.push(sample(
                &metrics(h.addr("admin")).await?,
                "pushmesh_hub_publishes_total",
                &[("target", "channel")],
            ));
        }
        post(self.api(), "/publish", &json!({ "channel": channel, "data": "probe" })).await?;
        for (i, h) in self.hubs.iter().enumerate() {
            let now =
                sample(&metrics(h.addr("admin")).await?, "pushmesh_hub_publishes_total", &[("target", "channel")]);
            if now > before[i] {
                return Ok(i);
            }
        }
        bail!("no hub counted the probe publish")
    }

    pub fn hub_urls(&self) -> Vec<String> {
        self.hubs.iter().map(hub_url).collect()
    }
}

/// The HS256 secret the auth tests configure gateways with.
pub const SECRET: &str = "test-secret-not-for-production";

/// Mint an HS256 JWT: `sub`, the `channels` patterns, and `exp` this many
/// seconds from now (negative: already expired).
pub fn token(secret: &str, sub: &str, channels: &[&str], exp_in_secs: i64) -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs() as i64;
    let claims = json!({ "sub": sub, "channels": channels, "exp": now + exp_in_secs });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("encode token")
}

impl Client {
    /// Connect with a JWT in the query string.
    pub async fn connect_as(addr: SocketAddr, token: &str) -> Result<Client> {
        Self::connect(addr, &format!("?token={token}")).await
    }

    /// Connect without reading anything (for handshakes that must fail).
    pub async fn connect_raw(addr: SocketAddr, query: &str) -> Result<Client> {
        let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(format!("ws://{addr}/ws{query}")))
            .await
            .map_err(|_| anyhow!("connect to {addr} timed out"))??;
        Ok(Client { ws, connection: String::new(), gateway: String::new(), next_id: 1 })
    }

    /// Connect with extra request headers (e.g. a session `Cookie`),
    /// without reading anything.
    pub async fn connect_with_headers(addr: SocketAddr, query: &str, headers: &[(&str, &str)]) -> Result<Client> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut req = format!("ws://{addr}/ws{query}").into_client_request()?;
        for (k, v) in headers {
            req.headers_mut()
                .append(tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(k.as_bytes())?, v.parse()?);
        }
        let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(req))
            .await
            .map_err(|_| anyhow!("connect to {addr} timed out"))??;
        Ok(Client { ws, connection: String::new(), gateway: String::new(), next_id: 1 })
    }

    /// Close the connection (a normal close) and wait for the gateway's answer.
    pub async fn close(mut self) -> Result<()> {
        self.ws.close(None).await?;
        while let Ok(Some(_)) = tokio::time::timeout(WAIT, self.ws.next()).await {}
        Ok(())
    }

    /// Read the welcome frame (after `connect_raw` and an auth command).
    pub async fn read_welcome(&mut self) -> Result<Value> {
        let welcome = self.next_json().await?;
        if welcome["type"] != "welcome" {
            bail!("expected a welcome frame, got {welcome}");
        }
        self.connection = welcome["connection"].as_str().unwrap_or_default().to_owned();
        self.gateway = welcome["gateway"].as_str().unwrap_or_default().to_owned();
        Ok(welcome)
    }
}

/// A TCP forwarder standing for the network between two processes, which a
/// test can cut and heal: a stand-in for `ip route add blackhole` when the
/// test cannot use network namespaces. Cut, it stops moving bytes both ways
/// while keeping every socket open (packets vanish; nobody gets a reset),
/// and holds new connections without connecting them onward. Healed, it
/// closes the connections frozen by the cut (their peers gave up on them)
/// and forwards new ones again.
pub struct LinkProxy {
    pub addr: SocketAddr,
    cut: tokio::sync::watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl LinkProxy {
    pub async fn start(target: SocketAddr) -> Result<LinkProxy> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        // Even generation: open; odd: cut. Each cut or heal bumps it.
        let (cut, watch) = tokio::sync::watch::channel(0u64);
        let task = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let mut watch = watch.clone();
                tokio::spawn(async move {
                    let generation = *watch.borrow_and_update();
                    if generation % 2 == 1 {
                        // Cut: hold the socket, silently, until healed.
                        until(&mut watch, |g| g != generation).await;
                        return;
                    }
                    let Ok(outbound) = tokio::net::TcpStream::connect(target).await else { return };
                    let (mut ri, mut wi) = inbound.into_split();
                    let (mut ro, mut wo) = outbound.into_split();
                    let pump = async {
                        tokio::select! {
                            _ = tokio::io::copy(&mut ri, &mut wo) => {}
                            _ = tokio::io::copy(&mut ro, &mut wi) => {}
                        }
                    };
                    let cut = until(&mut watch, |g| g != generation);
                    tokio::select! {
                        _ = pump => return,
                        _ = cut => {}
                    }
                    // Cut: no more bytes move; keep the sockets until healed.
                    until(&mut watch, |g| g > generation + 1).await;
                });
            }
        });
        Ok(LinkProxy { addr, cut, task })
    }

    pub fn cut(&self) {
        self.cut.send_modify(|g| *g += 1 - *g % 2);
    }

    pub fn heal(&self) {
        self.cut.send_modify(|g| *g += *g % 2);
    }
}

/// Wait until the generation satisfies `done` (or the sender is gone);
/// no watch `Ref` lives across the await.
async fn until(watch: &mut tokio::sync::watch::Receiver<u64>, done: impl Fn(u64) -> bool) {
    let _ = watch.wait_for(|g| done(*g)).await.map(|_| ());
}

impl Drop for LinkProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What a [`Redis`] process is.
enum Role {
    Primary {
        aof: bool,
    },
    /// A primary with cluster mode on (no slots until the cluster is made).
    ClusterNode,
    Replica(SocketAddr),
    Sentinel(SocketAddr, String),
}

/// A real `redis-server` (the Debian package; `make test` installs it) on
/// a loopback address of its own.
///
/// redis-server cannot bind port 0 and announce the port, so each instance
/// takes the standard port on a random address of 127.0.0.0/8 (16 million
/// of them); a start that fails (the address was taken after all) is
/// retried on another. Data lives in a temporary directory, with AOF
/// (fsync on every write) when the test needs durability. Killed on drop.
pub struct Redis {
    child: Child,
    pub addr: SocketAddr,
    pub dir: PathBuf,
    aof: bool,
}

impl Redis {
    /// Without persistence.
    pub async fn start() -> Result<Redis> {
        Self::start_opts(false).await
    }

    /// With AOF, `appendfsync always`: what was acknowledged survives a kill.
    pub async fn start_with_aof() -> Result<Redis> {
        Self::start_opts(true).await
    }

    async fn start_opts(aof: bool) -> Result<Redis> {
        Self::start_role(Role::Primary { aof }).await
    }

    /// A replica of `primary` (no persistence).
    pub async fn start_replica_of(primary: &Redis) -> Result<Redis> {
        Self::start_role(Role::Replica(primary.addr)).await
    }

    /// A Sentinel watching `primary` as master `name` (quorum 1, down after
    /// 1 s): it promotes a replica when the primary dies.
    pub async fn start_sentinel(primary: &Redis, name: &str) -> Result<Redis> {
        Self::start_role(Role::Sentinel(primary.addr, name.to_owned())).await
    }

    /// A Redis Cluster of `n` primaries (no replicas), slots spread evenly
    /// by `redis-cli --cluster create`; returns once every node says
    /// `cluster_state:ok`.
    pub async fn start_cluster(n: usize) -> Result<Vec<Redis>> {
        let mut nodes = Vec::new();
        for _ in 0..n {
            nodes.push(Self::start_role(Role::ClusterNode).await?);
        }
        let cli = which("redis-cli").ok_or_else(|| anyhow!("redis-cli is not installed (package redis-tools)"))?;
        let out = Command::new(cli)
            .arg("--cluster")
            .arg("create")
            .args(nodes.iter().map(|r| r.addr.to_string()))
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(WAIT, out)
            .await
            .map_err(|_| anyhow!("redis-cli --cluster create did not finish within {WAIT:?}"))?
            .context("redis-cli --cluster create")?;
        if !out.status.success() {
            bail!("redis-cli --cluster create failed: {}", String::from_utf8_lossy(&out.stdout));
        }
        for node in &nodes {
            let deadline = tokio::time::Instant::now() + WAIT;
            loop {
                let mut c = node.connection().await?;
                let info: String = redis::cmd("CLUSTER").arg("INFO").query_async(&mut c).await?;
                if info.contains("cluster_state:ok") {
                    break;
                }
                if tokio::time::Instant::now() > deadline {
                    bail!("cluster node {} never reached cluster_state:ok: {info}", node.addr);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(nodes)
    }

    /// Keys stored on this server.
    pub async fn dbsize(&self) -> Result<u64> {
        Ok(redis::cmd("DBSIZE").query_async(&mut self.connection().await?).await?)
    }

    async fn start_role(role: Role) -> Result<Redis> {
        let mut last = None;
        for _ in 0..5 {
            let ip =
                std::net::Ipv4Addr::new(127, rand::random_range(1..=254), rand::random(), rand::random_range(1..=254));
            let port = if matches!(role, Role::Sentinel(..)) { 26379 } else { 6379 };
            let addr = SocketAddr::new(ip.into(), port);
            let dir = bin_dir().parent().expect("target").join("test-redis").join(format!("{ip}"));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir)?;
            match Self::spawn(addr, &dir, &role).await {
                Ok(child) => {
                    let aof = matches!(role, Role::Primary { aof: true });
                    return Ok(Redis { child, addr, dir, aof });
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.expect("tried"))
    }

    async fn spawn(addr: SocketAddr, dir: &std::path::Path, role: &Role) -> Result<Child> {
        let server = which("redis-server").ok_or_else(|| {
            anyhow!("redis-server is not installed: run `apt-get install redis-server` (make test does it)")
        })?;
        let mut args: Vec<String> = Vec::new();
        if let Role::Sentinel(primary, name) = role {
            // Sentinel rewrites its config file: it must be its own and writable.
            let conf = dir.join("sentinel.conf");
            std::fs::write(
                &conf,
                format!(
                    "sentinel monitor {name} {} {} 1\nsentinel down-after-milliseconds {name} 1000\nsentinel failover-timeout {name} 5000\n",
                    primary.ip(),
                    primary.port()
                ),
            )?;
            args.extend([conf.to_str().expect("utf-8 path").to_owned(), "--sentinel".to_owned()]);
        }
        let (ip, port) = (addr.ip().to_string(), addr.port().to_string());
        let dir_arg = dir.to_str().expect("utf-8 path").to_owned();
        args.extend(["--bind", &ip, "--port", &port, "--dir", &dir_arg, "--logfile", "redis.log"].map(str::to_owned));
        args.extend(["--daemonize", "no", "--protected-mode", "no"].map(str::to_owned));
        let persistence: Vec<String> = match role {
            Role::Primary { aof: true } => {
                ["--save", "", "--appendonly", "yes", "--appendfsync", "always"].map(str::to_owned).to_vec()
            }
            Role::Primary { aof: false } => ["--save", "", "--appendonly", "no"].map(str::to_owned).to_vec(),
            Role::Replica(p) => vec![
                "--save".into(),
                String::new(),
                "--appendonly".into(),
                "no".into(),
                "--replicaof".into(),
                p.ip().to_string(),
                p.port().to_string(),
                // Its connections leave from 127.0.0.1: say where it listens.
                "--replica-announce-ip".into(),
                ip.clone(),
            ],
            Role::ClusterNode => {
                let mut a =
                    ["--save", "", "--appendonly", "no", "--cluster-enabled", "yes"].map(str::to_owned).to_vec();
                a.extend(["--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "2000"].map(str::to_owned));
                // Its bus connections leave from 127.0.0.1: say where it listens.
                a.extend(["--cluster-announce-ip".to_owned(), ip.clone()]);
                a
            }
            Role::Sentinel(..) => Vec::new(),
        };
        args.extend(persistence);
        let mut child = Command::new(server)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("spawn redis-server")?;
        let url = format!("redis://{addr}");
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(status) = child.try_wait()? {
                let log = std::fs::read_to_string(dir.join("redis.log")).unwrap_or_default();
                bail!(
                    "redis-server on {addr} exited ({status}): {}",
                    log.lines().rev().take(3).collect::<Vec<_>>().join(" | ")
                );
            }
            if ping(&url).await.is_ok() {
                return Ok(child);
            }
            if tokio::time::Instant::now() > deadline {
                bail!("redis-server on {addr} did not answer PING within {WAIT:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// Hub arguments for the Redis engine on this server.
    pub fn hub_args(&self) -> Vec<String> {
        vec!["--engine".into(), "redis".into(), "--redis-url".into(), self.url()]
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("running")
    }

    /// Send a signal by name (STOP, CONT…); STOP returns once every thread
    /// of the server is stopped.
    pub fn signal(&self, sig: &str) {
        let status = std::process::Command::new("kill").arg(format!("-{sig}")).arg(self.pid().to_string()).status();
        assert!(status.is_ok_and(|s| s.success()), "kill -{sig} redis {} failed", self.pid());
        if sig == "STOP" {
            let deadline = std::time::Instant::now() + WAIT;
            while !all_threads_stopped(self.pid()) {
                assert!(std::time::Instant::now() < deadline, "redis {} did not stop", self.pid());
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }

    /// SIGKILL it (and reap).
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }

    /// SIGKILL it and start it again on the same address and directory
    /// (with AOF, everything acknowledged comes back).
    pub async fn restart(&mut self) -> Result<()> {
        let _ = self.child.kill().await;
        let mut last = None;
        for _ in 0..50 {
            match Self::spawn(self.addr, &self.dir, &Role::Primary { aof: self.aof }).await {
                Ok(child) => {
                    self.child = child;
                    return Ok(());
                }
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(last.expect("tried"))
    }

    /// A client connection for checks.
    pub async fn connection(&self) -> Result<redis::aio::MultiplexedConnection> {
        let client = redis::Client::open(self.url())?;
        Ok(client.get_multiplexed_async_connection().await?)
    }
}

async fn ping(url: &str) -> Result<()> {
    let client = redis::Client::open(url)?;
    let mut c = tokio::time::timeout(Duration::from_millis(500), client.get_multiplexed_async_connection()).await??;
    let _: String = redis::cmd("PING").query_async(&mut c).await?;
    Ok(())
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| PathBuf::from(d).join(name)).find(|p| p.exists())
}

/// One Server-Sent Event: its type (`message` when unnamed), id and data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    pub event: String,
    pub id: Option<String>,
    pub data: String,
}

impl SseEvent {
    pub fn json(&self) -> Result<Value> {
        serde_json::from_str(&self.data).with_context(|| format!("event data is not JSON: {}", self.data))
    }
}

/// A real Server-Sent Events client over HTTP/1.1 (what `EventSource` and
/// `curl -N` do): parses the `text/event-stream` as it arrives.
pub struct SseClient {
    body: std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    buf: String,
    /// The last `id` seen, as a browser keeps it for `Last-Event-ID`.
    pub last_id: Option<String>,
}

impl SseClient {
    /// GET `http://addr/sse{query}` with optional `Last-Event-ID`; fails
    /// unless the answer is 200 `text/event-stream`.
    pub async fn connect(addr: SocketAddr, query: &str, last_event_id: Option<&str>) -> Result<SseClient> {
        Self::connect_with_headers(addr, query, last_event_id, &[]).await
    }

    /// `connect`, with request headers (e.g. a session `Cookie`).
    pub async fn connect_with_headers(
        addr: SocketAddr,
        query: &str,
        last_event_id: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Result<SseClient> {
        // No overall timeout (the stream lives on); no TLS roots to load.
        let client = reqwest::Client::builder().tls_built_in_root_certs(false).build()?;
        let mut req = client.get(format!("http://{addr}/sse{query}"));
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id);
        }
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        let r = tokio::time::timeout(WAIT, req.send()).await.map_err(|_| anyhow!("GET /sse timed out"))??;
        if r.status() != 200 {
            let status = r.status();
            bail!("GET /sse{query} answered {status}: {}", r.text().await.unwrap_or_default());
        }
        let ct = r.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
        if ct != "text/event-stream" {
            bail!("content type {ct:?}, expected text/event-stream");
        }
        Ok(SseClient {
            body: Box::pin(r.bytes_stream()),
            buf: String::new(),
            last_id: last_event_id.map(str::to_owned),
        })
    }

    /// The next event (comments and `retry:` lines are skipped).
    pub async fn next_event(&mut self) -> Result<SseEvent> {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut ev = SseEvent { event: "message".to_owned(), id: None, data: String::new() };
                let mut has_data = false;
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("data: ") {
                        if has_data {
                            ev.data.push('\n');
                        }
                        ev.data.push_str(v);
                        has_data = true;
                    } else if let Some(v) = line.strip_prefix("event: ") {
                        ev.event = v.to_owned();
                    } else if let Some(v) = line.strip_prefix("id: ") {
                        ev.id = Some(v.to_owned());
                    }
                }
                if !has_data {
                    continue; // a comment (heartbeat) or `retry:` only
                }
                if ev.id.is_some() {
                    self.last_id.clone_from(&ev.id);
                }
                return Ok(ev);
            }
            let chunk = tokio::time::timeout(WAIT, futures_util::StreamExt::next(&mut self.body))
                .await
                .map_err(|_| anyhow!("no event within {WAIT:?}"))?
                .ok_or_else(|| anyhow!("the event stream ended"))??;
            self.buf.push_str(std::str::from_utf8(&chunk).context("event stream is not UTF-8")?);
        }
    }

    /// The next event of type `event`, skipping others.
    pub async fn expect(&mut self, event: &str) -> Result<SseEvent> {
        loop {
            let ev = self.next_event().await?;
            if ev.event == event {
                return Ok(ev);
            }
        }
    }
}

/// A WebSocket client at the frame level, over a plain TCP socket: for
/// tests that send what a well-behaved client library never would
/// (floods, pipelined commands, bad close codes, endless fragments) and
/// must see exactly what the server answers, byte for byte.
pub struct RawWs {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

/// A frame as the server sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawFrame {
    pub fin: bool,
    pub opcode: u8,
    pub payload: Vec<u8>,
}

impl RawFrame {
    /// A close frame's (code, reason).
    pub fn close(&self) -> Option<(u16, String)> {
        (self.opcode == 8 && self.payload.len() >= 2).then(|| {
            (u16::from_be_bytes([self.payload[0], self.payload[1]]), String::from_utf8_lossy(&self.payload[2..]).into())
        })
    }
}

impl RawWs {
    /// Connect, upgrade and read the welcome frame.
    pub async fn connect(addr: SocketAddr) -> Result<RawWs> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = TcpStream::connect(addr).await?;
        let req = format!(
            "GET /ws HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        );
        stream.write_all(req.as_bytes()).await?;
        let mut buf = Vec::new();
        let head_end = loop {
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(WAIT, stream.read(&mut chunk)).await??;
            if n == 0 {
                bail!("closed during the handshake");
            }
            buf.extend_from_slice(&chunk[..n]);
            if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
        };
        if !buf.starts_with(b"HTTP/1.1 101") {
            bail!("upgrade refused: {}", String::from_utf8_lossy(&buf));
        }
        buf.drain(..head_end);
        let mut ws = RawWs { stream, buf };
        let welcome = ws.read_frame().await?.ok_or_else(|| anyhow!("closed before the welcome"))?;
        if welcome.opcode != 1 {
            bail!("expected the welcome text frame, got {welcome:?}");
        }
        Ok(ws)
    }

    /// One client frame: masked, as RFC 6455 requires of clients.
    pub fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x12u8, 0x34, 0x56, 0x78];
        let mut out = vec![(u8::from(fin) << 7) | opcode];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n <= 0xffff => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    /// Write raw bytes (one frame, or many at once).
    pub async fn write(&mut self, bytes: &[u8]) -> Result<()> {
        use tokio::io::AsyncWriteExt;
        self.stream.write_all(bytes).await?;
        Ok(())
    }

    /// The next frame from the server; `None` at a clean EOF. A reset
    /// (the server closed with unread input) is an error.
    pub async fn read_frame(&mut self) -> Result<Option<RawFrame>> {
        use tokio::io::AsyncReadExt;
        loop {
            if self.buf.len() >= 2 {
                let (b0, b1) = (self.buf[0], self.buf[1]);
                let (len, head) = match b1 & 0x7f {
                    126 if self.buf.len() >= 4 => (u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize, 4),
                    127 if self.buf.len() >= 10 => {
                        (u64::from_be_bytes(self.buf[2..10].try_into().expect("8 bytes")) as usize, 10)
                    }
                    n if n < 126 => (n as usize, 2),
                    _ => (usize::MAX, 0),
                };
                if len != usize::MAX && self.buf.len() >= head + len {
                    let payload = self.buf[head..head + len].to_vec();
                    self.buf.drain(..head + len);
                    return Ok(Some(RawFrame { fin: b0 & 0x80 != 0, opcode: b0 & 0x0f, payload }));
                }
            }
            let mut chunk = vec![0u8; 64 * 1024];
            let n = tokio::time::timeout(WAIT, self.stream.read(&mut chunk))
                .await
                .map_err(|_| anyhow!("no frame within {WAIT:?}"))??;
            if n == 0 {
                return Ok(None);
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Read until the server's close frame: its (code, reason). Fails if the
    /// connection ends (EOF or reset) without one.
    pub async fn expect_close(&mut self) -> Result<(u16, String)> {
        loop {
            match self.read_frame().await? {
                Some(f) if f.opcode == 8 => {
                    return f.close().ok_or_else(|| anyhow!("a close frame without a code: {f:?}"));
                }
                Some(_) => continue,
                None => bail!("the connection ended without a close frame"),
            }
        }
    }
}
