//! Socket options on the live sockets of every service, read back from the
//! running processes themselves (`pidfd_getfd` duplicates each socket into
//! this test; root may, as a debugger could).
//!
//! Every connection on the publish path — backend → ingress (HTTP and
//! gRPC API), ingress → hub, hub ⇄ gateway, gateway → client — carries
//! small messages that must not wait for Nagle's algorithm: with it on, a
//! small write waits for the peer's delayed ACK, up to 40 ms, which is what
//! the per-message path's p99 showed before `TCP_NODELAY` was set where it
//! really applies (docs/performance.md).

use std::net::SocketAddr;
use std::os::fd::OwnedFd;

use pushmesh_common::proto::ApiSendRequest;
use pushmesh_common::proto::push_api_client::PushApiClient;
use pushmesh_tests::*;
use rustix::net::SocketType;
use serde_json::json;

/// A kind of connection a process must have, to be checked.
type Kind = (&'static str, Box<dyn Fn(&Conn) -> bool>);

/// One connected TCP socket of a process: (local, peer, TCP_NODELAY).
#[derive(Debug)]
struct Conn {
    local: SocketAddr,
    peer: SocketAddr,
    nodelay: bool,
}

/// Every connected TCP socket the process `pid` holds.
fn tcp_connections(pid: u32) -> anyhow::Result<Vec<Conn>> {
    let target = rustix::process::Pid::from_raw(pid as i32).ok_or_else(|| anyhow::anyhow!("pid {pid}"))?;
    let pidfd = rustix::process::pidfd_open(target, rustix::process::PidfdFlags::empty())?;
    let mut out = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd"))? {
        let entry = entry?;
        let Ok(link) = std::fs::read_link(entry.path()) else { continue };
        if !link.to_string_lossy().starts_with("socket:") {
            continue;
        }
        let Ok(fd) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(sock): Result<OwnedFd, _> =
            rustix::process::pidfd_getfd(&pidfd, fd, rustix::process::PidfdGetfdFlags::empty())
        else {
            continue; // closed meanwhile
        };
        if rustix::net::sockopt::socket_type(&sock)? != SocketType::STREAM {
            continue;
        }
        let (Ok(local), Ok(Some(peer))) = (rustix::net::getsockname(&sock), rustix::net::getpeername(&sock)) else {
            continue; // a listener, or not an IP socket
        };
        let (Ok(local), Ok(peer)) = (SocketAddr::try_from(local), SocketAddr::try_from(peer)) else { continue };
        out.push(Conn { local, peer, nodelay: rustix::net::sockopt::tcp_nodelay(&sock)? });
    }
    Ok(out)
}

#[tokio::test]
async fn every_connection_on_the_publish_path_has_tcp_nodelay() -> anyhow::Result<()> {
    let sys = System::start(1, 1).await?;
    // Open one of each: a WebSocket client, an HTTP client (keep-alive), a
    // gRPC API client; publish through each so every hop is connected.
    let mut client = Client::connect(sys.gw(0), "").await?;
    let http = http();
    let r = http
        .post(format!("http://{}/send", sys.api()))
        .json(&json!({ "connection": client.connection, "data": "over http" }))
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    client.expect_data(&json!("over http")).await?;
    let mut grpc = PushApiClient::connect(format!("http://{}", sys.ingress.addr("grpc"))).await?;
    grpc.send(ApiSendRequest {
        connection: client.connection.clone(),
        data_json: "\"over grpc\"".to_owned(),
        ..Default::default()
    })
    .await?;
    client.expect_data(&json!("over grpc")).await?;

    let hub = sys.hubs[0].addr("grpc");
    let gw = sys.gw(0);
    let (api, api_grpc) = (sys.api(), sys.ingress.addr("grpc"));
    let checks: [(&Proc, Vec<Kind>); 3] = [
        (
            &sys.hubs[0],
            vec![("accepted from a gateway or an ingress", Box::new(move |c: &Conn| c.local.port() == hub.port()))],
        ),
        (
            &sys.gateways[0],
            vec![
                ("accepted from a WebSocket client", Box::new(move |c: &Conn| c.local.port() == gw.port())),
                ("to the hub", Box::new(move |c: &Conn| c.peer.port() == hub.port())),
            ],
        ),
        (
            &sys.ingress,
            vec![
                ("accepted from an HTTP client", Box::new(move |c: &Conn| c.local.port() == api.port())),
                ("accepted from a gRPC API client", Box::new(move |c: &Conn| c.local.port() == api_grpc.port())),
                ("to the hub", Box::new(move |c: &Conn| c.peer.port() == hub.port())),
            ],
        ),
    ];
    for (proc, kinds) in checks {
        let conns = tcp_connections(proc.pid())?;
        for c in &conns {
            assert!(c.nodelay, "{} has a connection without TCP_NODELAY: {c:?} (all: {conns:?})", proc.name);
        }
        // Not vacuous: each kind of connection is there to be checked.
        for (what, is) in kinds {
            assert!(conns.iter().any(&is), "{}: no connection {what} among {conns:?}", proc.name);
        }
    }
    drop(http);
    Ok(())
}
