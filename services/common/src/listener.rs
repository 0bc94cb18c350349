//! Binding a TCP listener with a real accept backlog.
//!
//! `TcpListener::bind` listens with the standard library's backlog of 128
//! whatever `net.core.somaxconn` allows, so a burst of connects (every
//! client of a restarted gateway reconnecting at once) overflows the queue,
//! the kernel drops SYNs and clients stall for a second on the retransmit.
//! The benchmark measured exactly that (docs/performance.md).

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpSocket};

/// Default backlog; the kernel caps it at `net.core.somaxconn`.
pub const DEFAULT_BACKLOG: u32 = 4096;

pub fn bind(addr: SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}
