//! The system under test: one hub, G gateways and one ingress, started from
//! the release binaries on ports the kernel picks (each announces its
//! addresses in one JSON line on stdout), killed when dropped.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::procstat;
use crate::scenario::Env;

pub struct Proc {
    pub name: String,
    pub child: Child,
    pub addrs: HashMap<String, SocketAddr>,
}

impl Proc {
    /// Start `program` and wait for its announce line; stderr goes to a log
    /// file under `logs`.
    pub async fn start(program: &Path, name: &str, args: &[String], logs: &Path) -> Result<Proc> {
        std::fs::create_dir_all(logs)?;
        let log = logs.join(format!("{name}.log"));
        let stderr = std::fs::File::create(&log).with_context(|| format!("create {}", log.display()))?;
        let mut child = Command::new(program)
            .args(args)
            .env("PUSHMESH_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("spawn {}", program.display()))?;
        let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
        let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .map_err(|_| anyhow!("{name} did not announce its addresses; see {}", log.display()))??
            .ok_or_else(|| anyhow!("{name} exited before announcing its addresses; see {}", log.display()))?;
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let v: serde_json::Value = serde_json::from_str(&line).with_context(|| format!("{name} announced {line:?}"))?;
        let addrs = v["listening"]
            .as_object()
            .ok_or_else(|| anyhow!("{name}: no listening map in {line}"))?
            .iter()
            .map(|(k, v)| Ok((k.clone(), v.as_str().unwrap_or_default().parse()?)))
            .collect::<Result<_>>()?;
        Ok(Proc { name: name.to_owned(), child, addrs })
    }

    pub fn addr(&self, which: &str) -> SocketAddr {
        self.addrs[which]
    }

    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }
}

pub struct Cluster {
    pub hub: Proc,
    pub gateways: Vec<Proc>,
    pub ingress: Proc,
}

/// Resource use of one process over a measurement window.
#[derive(Debug, Clone, Serialize)]
pub struct Usage {
    pub name: String,
    pub rss_mib: f64,
    pub cpu_s: f64,
}

impl Cluster {
    pub async fn start(env: &Env, gateways: usize, gateway_args: &[String], hub_args: &[String]) -> Result<Cluster> {
        let logs = env.out.join("logs");
        let mut args = ["--grpc-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0"].map(String::from).to_vec();
        args.extend_from_slice(hub_args);
        let hub = Proc::start(&env.bin("hub")?, "hub", &args, &logs).await?;
        let hub_url = format!("http://{}", hub.addr("grpc"));
        let mut gws = Vec::new();
        for i in 0..gateways {
            let mut args: Vec<String> =
                ["--listen-addr", "127.0.0.1:0", "--hub", &hub_url, "--gateway-id", &format!("gw-{i}")]
                    .map(String::from)
                    .to_vec();
            args.extend_from_slice(gateway_args);
            gws.push(Proc::start(&env.bin("ws-gateway")?, &format!("gw-{i}"), &args, &logs).await?);
        }
        let ingress = Proc::start(
            &env.bin("http-ingress")?,
            "ingress",
            &["--listen-addr", "127.0.0.1:0", "--hub", &hub_url].map(String::from),
            &logs,
        )
        .await?;
        let c = Cluster { hub, gateways: gws, ingress };
        for g in &c.gateways {
            wait_ready(g.addr("http")).await?;
        }
        wait_ready(c.ingress.addr("http")).await?;
        Ok(c)
    }

    pub fn gateway_addrs(&self) -> Vec<SocketAddr> {
        self.gateways.iter().map(|g| g.addr("http")).collect()
    }

    pub fn procs(&self) -> Vec<&Proc> {
        let mut v = vec![&self.hub];
        v.extend(self.gateways.iter());
        v.push(&self.ingress);
        v
    }

    pub fn sample(&self) -> Vec<(String, procstat::Sample)> {
        self.procs().into_iter().map(|p| (p.name.clone(), procstat::sample(p.pid()).unwrap_or_default())).collect()
    }
}

/// Per-process RSS at the end and CPU seconds between two samples.
pub fn usage(before: &[(String, procstat::Sample)], after: &[(String, procstat::Sample)]) -> Vec<Usage> {
    after
        .iter()
        .map(|(name, a)| {
            let b = before.iter().find(|(n, _)| n == name).map(|(_, s)| *s).unwrap_or_default();
            Usage { name: name.clone(), rss_mib: a.rss_kib as f64 / 1024.0, cpu_s: a.cpu_s - b.cpu_s }
        })
        .collect()
}

async fn wait_ready(addr: SocketAddr) -> Result<()> {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(2)).build()?;
    for _ in 0..200 {
        if let Ok(r) = http.get(format!("http://{addr}/readyz")).send().await
            && r.status().is_success()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("{addr}/readyz never answered 200")
}
