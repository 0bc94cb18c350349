//! Binding a TCP listener the way every pushmesh port needs it.
//!
//! **Backlog.** `TcpListener::bind` listens with the standard library's
//! backlog of 128 whatever `net.core.somaxconn` allows, so a burst of
//! connects (every client of a restarted gateway reconnecting at once)
//! overflows the queue, the kernel drops SYNs and clients stall for a
//! second on the retransmit. The benchmark measured exactly that
//! (docs/performance.md).
//!
//! **No Nagle.** Every pushmesh connection carries small request/response
//! messages (an HTTP publish and its answer, a gRPC publish, a delivery
//! batch, a WebSocket frame). With Nagle's algorithm on, a small write
//! waits for the ACK of the previous one, and the peer delays that ACK by
//! up to 40 ms: the per-message path's p99 showed exactly those stalls.
//! `TCP_NODELAY` is set on the *listening* socket, and Linux gives every
//! accepted socket the listener's setting, so it holds for whoever accepts
//! from it (warp and tonic alike, which offer no hook of their own when
//! handed a listener). `tests/e2e/sockets.rs` reads it back from the live
//! sockets of every service.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpSocket};

/// Default backlog; the kernel caps it at `net.core.somaxconn`.
pub const DEFAULT_BACKLOG: u32 = 4096;

pub fn bind(addr: SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}
