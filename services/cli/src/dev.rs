//! `pushmesh dev`: a whole local system in one process. The three service
//! libraries are bound in dependency order (hub, then the gateway and the
//! ingress pointed at the hub's real address, so port 0 works), run as
//! tasks under one shutdown token, and stopped together on Ctrl-C or when
//! any of them fails.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use clap::Parser;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::cli::DevArgs;
use crate::duration::human;
use crate::failure::{Failure, Result};

pub async fn run(args: DevArgs) -> Result<()> {
    pushmesh_common::telemetry::init(&args.log, pushmesh_common::telemetry::LogFormat::Text);
    let shutdown = pushmesh_common::shutdown::on_signal();
    // Checked first: a bad file is the user's to fix, not a port in use.
    if let Some(path) = &args.namespaces {
        pushmesh_common::namespaces::Namespaces::load(path).map_err(|e| Failure::usage(e.to_string()))?;
    }

    let mut hub_cfg = pushmesh_hub::Config::parse_from(["hub"]);
    hub_cfg.grpc_addr = args.hub_grpc_addr;
    hub_cfg.admin_addr = args.hub_admin_addr;
    hub_cfg.namespaces = args.namespaces.clone();
    let hub = pushmesh_hub::Hub::bind(hub_cfg).await.map_err(|e| {
        in_use(format!(
            "cannot start the hub on {} (gRPC) and {} (admin): {e:#}",
            args.hub_grpc_addr, args.hub_admin_addr
        ))
    })?;
    let (grpc, admin) = (hub.grpc_addr(), hub.admin_addr());
    let hub_url = format!("http://{}", reachable(grpc));

    let mut gw_cfg = pushmesh_ws_gateway::Config::parse_from(["ws-gateway"]);
    gw_cfg.listen_addr = args.gateway_addr;
    gw_cfg.hubs = vec![hub_url.clone()];
    gw_cfg.gateway_id = Some(args.gateway_id.clone());
    gw_cfg.jwt_secret = args.jwt_secret.clone();
    gw_cfg.namespaces = args.namespaces.clone();
    let gateway = pushmesh_ws_gateway::Gateway::bind(gw_cfg)
        .await
        .map_err(|e| in_use(format!("cannot start the ws-gateway on {}: {e:#}", args.gateway_addr)))?;
    let gw = gateway.local_addr();

    let mut in_cfg = pushmesh_http_ingress::Config::parse_from(["http-ingress"]);
    in_cfg.listen_addr = args.ingress_addr;
    in_cfg.grpc_addr = args.ingress_grpc_addr;
    in_cfg.cors_allow_origins = page_origins(gw);
    in_cfg.cors_allow_origins.extend(args.cors_allow_origin.iter().cloned());
    in_cfg.hubs = vec![hub_url.clone()];
    // The hub runs inside the ingress: publishes reach it as calls, not
    // gRPC messages (docs/architecture.md, "A hub inside the ingress").
    let ingress = pushmesh_http_ingress::Ingress::bind_with_hub(in_cfg, hub_url, hub).await.map_err(|e| {
        in_use(format!(
            "cannot start the http-ingress on {} (HTTP) and {} (gRPC): {e:#}",
            args.ingress_addr, args.ingress_grpc_addr
        ))
    })?;
    let (api, api_grpc) = (ingress.local_addr(), ingress.grpc_addr());

    if args.announce {
        pushmesh_common::announce::listening(
            "dev",
            &[("grpc", grpc), ("admin", admin), ("gateway", gw), ("ingress", api), ("ingress_grpc", api_grpc)],
        );
    }

    let mut tasks = JoinSet::new();
    let t = shutdown.clone();
    tasks.spawn(async move { ("ws-gateway", gateway.run(t).await) });
    let t = shutdown.clone();
    tasks.spawn(async move { ("http-ingress", ingress.run(t).await) });

    let probes = [("ws-gateway", reachable(gw)), ("http-ingress", reachable(api))];
    let ready = tokio::select! {
        biased;
        () = shutdown.cancelled() => Ok(()),
        r = wait_ready(&probes, args.ready_timeout) => r,
        Some(ended) = tasks.join_next() => Err(ended_early(ended)),
    };
    if let Err(f) = ready {
        stop(&shutdown, &mut tasks).await;
        return Err(f);
    }
    if !shutdown.is_cancelled() {
        println!("{}", banner(grpc, admin, gw, api, api_grpc, args.jwt_secret.is_some()));
    }

    let outcome = tokio::select! {
        biased;
        () = shutdown.cancelled() => Ok(()),
        // A service that stops on its own, before any shutdown, is a failure.
        Some(ended) = tasks.join_next() => {
            if shutdown.is_cancelled() { Ok(()) } else { Err(ended_early(ended)) }
        }
    };
    eprintln!("stopping pushmesh dev…");
    stop(&shutdown, &mut tasks).await;
    eprintln!("stopped.");
    outcome
}

fn in_use(message: String) -> Failure {
    Failure::unreachable(message).hint(
        "is `make run` or another `pushmesh dev` already running? Stop it, or pick other addresses \
         (e.g. --gateway-addr 127.0.0.1:0 for any free port; see pushmesh dev --help)",
    )
}

fn ended_early(ended: std::result::Result<(&'static str, anyhow::Result<()>), tokio::task::JoinError>) -> Failure {
    match ended {
        Ok((name, Ok(()))) => Failure::failed(format!("{name} stopped unexpectedly")),
        Ok((name, Err(e))) => Failure::failed(format!("{name} failed: {e:#}")),
        Err(e) => Failure::failed(format!("a service task panicked: {e}")),
    }
    .hint("run again with --log info (or debug) to see what happened")
}

async fn stop(shutdown: &CancellationToken, tasks: &mut JoinSet<(&'static str, anyhow::Result<()>)>) {
    shutdown.cancel();
    let drained = tokio::time::timeout(Duration::from_secs(15), async {
        while let Some(r) = tasks.join_next().await {
            if let Ok((name, Err(e))) = r {
                eprintln!("{name}: {e:#}");
            }
        }
    })
    .await;
    if drained.is_err() {
        eprintln!("some services did not stop within 15s; exiting anyway");
        tasks.abort_all();
    }
}

/// Poll each `/readyz` until it answers 200, saying every second what is
/// still awaited.
async fn wait_ready(services: &[(&str, SocketAddr)], limit: Duration) -> Result<()> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(1))
        .build()
        .map_err(|e| Failure::failed(format!("cannot build an HTTP client: {e}")))?;
    let started = Instant::now();
    let mut last_said = started;
    loop {
        let mut waiting = Vec::new();
        for (name, addr) in services {
            let ok = client.get(format!("http://{addr}/readyz")).send().await.is_ok_and(|r| r.status().is_success());
            if !ok {
                waiting.push(*name);
            }
        }
        if waiting.is_empty() {
            return Ok(());
        }
        let elapsed = started.elapsed();
        if elapsed > limit {
            return Err(Failure::unreachable(format!(
                "{} did not become ready within {}",
                waiting.join(" and "),
                human(limit)
            ))
            .hint("run again with --log info to see why (a gateway is ready once attached to the hub)"));
        }
        if last_said.elapsed() >= Duration::from_secs(1) {
            last_said = Instant::now();
            eprintln!("waiting for {} to become ready… {}", waiting.join(" and "), human(elapsed));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An address a local client can dial: 0.0.0.0 becomes 127.0.0.1.
fn reachable(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        let ip =
            if addr.is_ipv4() { IpAddr::V4(Ipv4Addr::LOCALHOST) } else { IpAddr::V6(std::net::Ipv6Addr::LOCALHOST) };
        SocketAddr::new(ip, addr.port())
    } else {
        addr
    }
}

/// The origins the demo page is loaded from, which the ingress must allow.
fn page_origins(gw: SocketAddr) -> Vec<String> {
    let port = gw.port();
    let mut v = vec![format!("http://{}", reachable(gw)), format!("http://localhost:{port}")];
    if gw.ip().is_unspecified() {
        // Reachable from other machines: their origin is this host's address,
        // unknown here. Allow any, since this is a development server.
        v.push("*".to_owned());
    }
    v.dedup();
    v
}

fn banner(
    grpc: SocketAddr,
    admin: SocketAddr,
    gw: SocketAddr,
    api: SocketAddr,
    api_grpc: SocketAddr,
    auth: bool,
) -> String {
    let (gw, api, api_grpc) = (reachable(gw), reachable(api), reachable(api_grpc));
    let default_gw = gw == "127.0.0.1:8080".parse().expect("addr");
    let default_api = api == "127.0.0.1:8081".parse().expect("addr");
    let page = if api.port() == 8081 && api.ip() == gw.ip() {
        format!("http://{gw}/")
    } else {
        format!("http://{gw}/?ingress=http://{api}")
    };
    let gw_flag = if default_gw { String::new() } else { format!(" --gateway ws://{gw}/ws") };
    let api_flag = if default_api { String::new() } else { format!(" --ingress http://{api}") };
    let mut s = format!(
        "\npushmesh dev is running (hub, ws-gateway and http-ingress in this process):\n  \
         demo page   {page}\n  \
         WebSocket   ws://{gw}/ws   (add ?format=raw for bare content)\n  \
         HTTP API    http://{api}   (gRPC API: {api_grpc})\n  \
         hub         gRPC {grpc}, metrics http://{admin}/metrics\n\n\
         Try, in another terminal:\n  \
         pushmesh listen{gw_flag} --channel news\n  \
         pushmesh publish{api_flag} --channel news '{{\"text\":\"hi\"}}'\n  \
         curl 'http://{api}/?content=hello'\n  \
         pushmesh stats{api_flag}\n"
    );
    if auth {
        s.push_str(&format!(
            "\nClients need a token (--jwt-secret is set):\n  \
             TOKEN=$(pushmesh token --user alice --channel '*')   # with PUSHMESH_JWT_SECRET set to the same secret\n  \
             pushmesh listen{gw_flag} --token \"$TOKEN\" --channel news     (demo page: {page}{}token=$TOKEN)\n",
            if page.contains('?') { "&" } else { "?" }
        ));
    }
    s.push_str("\nCtrl-C stops.");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn banner_with_default_ports_has_no_address_flags() {
        let b = banner(
            "127.0.0.1:50051".parse().unwrap(),
            "127.0.0.1:9090".parse().unwrap(),
            "127.0.0.1:8080".parse().unwrap(),
            "127.0.0.1:8081".parse().unwrap(),
            "127.0.0.1:8082".parse().unwrap(),
            false,
        );
        assert!(b.contains("demo page   http://127.0.0.1:8080/\n"), "{b}");
        assert!(b.contains("pushmesh listen --channel news"), "{b}");
    }

    #[test]
    fn banner_with_other_ports_says_where() {
        let b = banner(
            "127.0.0.1:1".parse().unwrap(),
            "127.0.0.1:2".parse().unwrap(),
            "0.0.0.0:3000".parse().unwrap(),
            "127.0.0.1:3001".parse().unwrap(),
            "127.0.0.1:3002".parse().unwrap(),
            true,
        );
        assert!(b.contains("http://127.0.0.1:3000/?ingress=http://127.0.0.1:3001"), "{b}");
        assert!(b.contains("pushmesh listen --gateway ws://127.0.0.1:3000/ws --channel news"), "{b}");
        assert!(b.contains("&token=$TOKEN"), "{b}");
        assert!(b.contains("(gRPC API: 127.0.0.1:3002)"), "{b}");
        assert_eq!(
            page_origins("0.0.0.0:3000".parse().unwrap()),
            vec!["http://127.0.0.1:3000", "http://localhost:3000", "*"]
        );
    }
}
