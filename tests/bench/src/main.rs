//! pushmesh-bench: how fast pushmesh delivers, measured against what this
//! machine can do at all.
//!
//! The tool starts the real release binaries (hub, ws-gateways, ingress),
//! spreads WebSocket clients over several worker processes of its own (one
//! process may hold only 20,000 open files, and each worker binds its
//! sockets to its own 127.x source addresses so the ephemeral-port range is
//! no limit), publishes through the ingress with an open-loop publisher,
//! and reads every delivery's timestamp and sequence number back. The same
//! clients then read from a minimal frame writer (`ceiling`), which is the
//! most this machine can deliver to that many sockets; pushmesh's figures
//! are reported as a ratio to it.
//!
//! The targeted workloads (`unicast`, `channels`, `bulk`) measure the
//! per-message path instead: each message is for one client, published by
//! a lean open-loop HTTP generator (`loadgen`), and compared with a
//! per-message ceiling (`msgceiling`): one process that reads HTTP requests
//! and writes one frame to the addressed socket.
//!
//! The `client-ops` workload (issue 15) publishes the other way: clients
//! write `publish` (or `rpc`) ops over their own WebSockets, with no
//! backend proxy or through a minimal HTTP or gRPC backend the tool starts
//! as a process of its own (`proxy-backend`), so the proxy's cost per call
//! is the difference between the rows.
//!
//! Everything the tool starts is killed when it ends, also on failure or
//! Ctrl-C: services and workers are `kill_on_drop` children, and a worker
//! exits by itself when its parent's pipe closes.

mod ceiling;
mod clientops;
mod cluster;
mod enginebench;
mod fleet;
mod grpcstream;
mod hubbench;
mod loadgen;
mod msgceiling;
mod plot;
mod procstat;
mod proxybackend;
mod publisher;
mod report;
mod scenario;
mod suite;
mod targeted;
mod wire;
mod worker;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::scenario::ScenarioArgs;

/// pushmesh benchmark: deliveries/s, end-to-end latency, loss, connect rate
/// and memory of the real binaries, next to the machine's own ceiling.
#[derive(Debug, Parser)]
#[command(name = "pushmesh-bench", version)]
struct Cli {
    /// Where the hub, ws-gateway and http-ingress binaries are
    /// (default: the directory this tool runs from, e.g. target/release).
    #[arg(long, global = true, env = "PUSHMESH_BENCH_BIN_DIR")]
    bin_dir: Option<PathBuf>,

    /// Directory for the JSON results, the plot and the services' logs.
    #[arg(long, global = true, default_value = "target/bench")]
    out: PathBuf,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Latency under a given load: clients over gateways, publishes at a fixed delivery rate.
    Fixed(ScenarioArgs),
    /// The highest delivery rate whose p99 stays under --max-p99-ms with zero loss.
    Sweep(ScenarioArgs),
    /// Connect idle clients: connect rate and gateway RSS per connection; then one broadcast to all.
    Idle(ScenarioArgs),
    /// Hub only: fake gateways attached over gRPC, publishes as fast as the hub takes them.
    Hub(hubbench::HubArgs),
    /// Channel state engines at the hub: positioned publishes/s and added latency, Redis against memory.
    Engine(enginebench::EngineArgs),
    /// One POST /send per message, each to one client by its connection id; against the per-message ceiling.
    Unicast(targeted::MsgArgs),
    /// Publishes spread over many channels with one or two subscribers each.
    Channels(targeted::MsgArgs),
    /// Many sends per request (POST /batch); against the per-message ceiling.
    Bulk(targeted::MsgArgs),
    /// Client ops over the WebSocket: publish → every subscriber, or rpc
    /// round trips; with no backend proxy, or through an HTTP or gRPC one.
    ClientOps(clientops::ClientArgs),
    /// Seconds-long run with few clients; exits non-zero if a delivery is lost, duplicated or misdelivered.
    Smoke,
    /// Every target of the benchmark (what `make bench` runs), then the plot.
    Suite(suite::SuiteArgs),
    /// (internal) A client worker process, driven over stdin/stdout.
    #[command(hide = true)]
    Worker {
        #[arg(long)]
        spec: String,
    },
    /// (internal) The backend the client-ops workload proxies to.
    #[command(hide = true)]
    ProxyBackend {
        #[arg(long, value_enum)]
        kind: proxybackend::ProxyKind,
        #[arg(long, default_value_t = 2)]
        threads: usize,
    },
    /// (internal) The ceiling: writes pre-built frames to its sockets.
    #[command(hide = true)]
    CeilingServer {
        #[arg(long, default_value_t = 1)]
        threads: usize,
    },
    /// (internal) The per-message ceiling: HTTP request in, one frame to the addressed socket out.
    #[command(hide = true)]
    MsgCeilingServer {
        #[arg(long, default_value_t = 2)]
        threads: usize,
        /// Most clients (slots in its table).
        #[arg(long, default_value_t = 50_000)]
        capacity: usize,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Worker { spec } => return worker::main(&spec),
        Command::ProxyBackend { kind, threads } => return proxybackend::main(kind, threads),
        Command::CeilingServer { threads } => return ceiling::server_main(threads),
        Command::MsgCeilingServer { threads, capacity } => return msgceiling::server_main(threads, capacity),
        _ => {}
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let env = match scenario::Env::new(cli.bin_dir, cli.out) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("pushmesh-bench: {e:#}");
            return std::process::ExitCode::from(2);
        }
    };
    let outcome = rt.block_on(async move {
        let work = async move {
            match cli.command {
                Command::Fixed(a) => scenario::fixed_cmd(&env, a).await,
                Command::Sweep(a) => scenario::sweep_cmd(&env, a).await,
                Command::Idle(a) => scenario::idle_cmd(&env, a).await,
                Command::Hub(a) => hubbench::cmd(&env, a).await,
                Command::Engine(a) => enginebench::cmd(&env, a).await,
                Command::Unicast(a) => targeted::cmd(&env, targeted::Workload::Unicast, a).await,
                Command::Channels(a) => targeted::cmd(&env, targeted::Workload::Channels, a).await,
                Command::Bulk(a) => targeted::cmd(&env, targeted::Workload::Bulk, a).await,
                Command::ClientOps(a) => clientops::cmd(&env, a).await,
                Command::Smoke => scenario::smoke_cmd(&env).await,
                Command::Suite(a) => suite::cmd(&env, a).await,
                Command::Worker { .. }
                | Command::ProxyBackend { .. }
                | Command::CeilingServer { .. }
                | Command::MsgCeilingServer { .. } => {
                    unreachable!("handled above")
                }
            }
        };
        // Dropping `work` on a signal kills every child (kill_on_drop).
        tokio::select! {
            r = work => r,
            _ = shutdown_signal() => Err(anyhow::anyhow!("interrupted; every process this run started was stopped")),
        }
    });
    // Give kill_on_drop's reaping a moment, then leave.
    rt.shutdown_timeout(std::time::Duration::from_secs(2));
    match outcome {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("pushmesh-bench: FAILED (see above)");
            std::process::ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("pushmesh-bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
