//! The system under test: one hub, G gateways and one ingress, started from
//! the release binaries on ports the kernel picks (each announces its
//! addresses in one JSON line on stdout), killed when dropped. Processes
//! are started by the tests' harness (tests/support), not a copy of it.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use serde::Serialize;

use crate::procstat;
use crate::scenario::Env;

/// The service processes, started by the same harness as the e2e tests
/// (`pushmesh_tests::Proc`); only startup goes through it, nothing on the
/// measured paths.
pub use pushmesh_tests::Proc;

/// Start `program` as `name` and wait for its announce line; its stderr
/// goes to `logs/<name>.log`, with warnings only (logging must not cost
/// the run anything).
pub async fn start(program: &Path, name: &str, args: &[String], logs: &Path) -> Result<Proc> {
    Proc::launch(pushmesh_tests::Launch {
        program,
        name,
        args,
        log: logs.join(format!("{name}.log")),
        log_filter: "warn",
        announce_within: Duration::from_secs(20),
    })
    .await
}

pub struct Cluster {
    /// The hub process; none when the hub runs inside the ingress
    /// (`--colocated-hub-addr`).
    pub hub: Option<Proc>,
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
        Self::start_with(env, gateways, gateway_args, hub_args, &[]).await
    }

    /// `start`, with extra arguments for the ingress too.
    pub async fn start_with(
        env: &Env,
        gateways: usize,
        gateway_args: &[String],
        hub_args: &[String],
        ingress_args: &[String],
    ) -> Result<Cluster> {
        if ingress_args.iter().any(|a| a.starts_with("--colocated-hub-addr")) {
            anyhow::ensure!(hub_args.is_empty(), "a co-located hub takes no hub arguments here");
            return Self::start_colocated(env, gateways, gateway_args, ingress_args).await;
        }
        let logs = env.out.join("logs");
        let mut args = ["--grpc-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0"].map(String::from).to_vec();
        args.extend_from_slice(hub_args);
        let hub = start(&env.bin("hub")?, "hub", &args, &logs).await?;
        let hub_url = format!("http://{}", hub.addr("grpc"));
        let gws = Self::start_gateways(env, gateways, gateway_args, &hub_url).await?;
        // Both listeners on kernel-chosen ports: a fixed gRPC port (the
        // default 8082) collides with anything else on the machine.
        let mut args: Vec<String> = ["--listen-addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0", "--hub", &hub_url]
            .map(String::from)
            .to_vec();
        args.extend_from_slice(ingress_args);
        let ingress = start(&env.bin("http-ingress")?, "ingress", &args, &logs).await?;
        let c = Cluster { hub: Some(hub), gateways: gws, ingress };
        c.wait_ready().await?;
        Ok(c)
    }

    /// The ingress with its hub in its own process: started first, then the
    /// gateways attach to the hub address it announces.
    async fn start_colocated(
        env: &Env,
        gateways: usize,
        gateway_args: &[String],
        ingress_args: &[String],
    ) -> Result<Cluster> {
        let logs = env.out.join("logs");
        let mut args: Vec<String> =
            ["--listen-addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0", "--colocated-hub-admin-addr", "127.0.0.1:0"]
                .map(String::from)
                .to_vec();
        args.extend_from_slice(ingress_args);
        let ingress = start(&env.bin("http-ingress")?, "ingress", &args, &logs).await?;
        let hub_url = format!("http://{}", ingress.addr("hub-grpc"));
        let gws = Self::start_gateways(env, gateways, gateway_args, &hub_url).await?;
        let c = Cluster { hub: None, gateways: gws, ingress };
        c.wait_ready().await?;
        Ok(c)
    }

    async fn start_gateways(env: &Env, gateways: usize, gateway_args: &[String], hub_url: &str) -> Result<Vec<Proc>> {
        let logs = env.out.join("logs");
        let mut gws = Vec::new();
        for i in 0..gateways {
            let mut args: Vec<String> =
                ["--listen-addr", "127.0.0.1:0", "--hub", hub_url, "--gateway-id", &format!("gw-{i}")]
                    .map(String::from)
                    .to_vec();
            args.extend_from_slice(gateway_args);
            gws.push(start(&env.bin("ws-gateway")?, &format!("gw-{i}"), &args, &logs).await?);
        }
        Ok(gws)
    }

    async fn wait_ready(&self) -> Result<()> {
        let c = self;
        for g in &c.gateways {
            pushmesh_tests::wait_ready(g.addr("http")).await?;
        }
        pushmesh_tests::wait_ready(c.ingress.addr("http")).await?;
        Ok(())
    }

    pub fn gateway_addrs(&self) -> Vec<SocketAddr> {
        self.gateways.iter().map(|g| g.addr("http")).collect()
    }

    pub fn procs(&self) -> Vec<&Proc> {
        let mut v: Vec<&Proc> = self.hub.iter().collect();
        v.extend(self.gateways.iter());
        v.push(&self.ingress);
        v
    }

    pub fn sample(&self) -> Vec<(String, procstat::Sample)> {
        self.procs()
            .into_iter()
            .map(|p| (p.name.clone(), procstat::sample(p.pid_or_zero()).unwrap_or_default()))
            .collect()
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
