//! The one line a service prints on stdout once its sockets are bound:
//! `{"service":"hub","listening":{"grpc":"127.0.0.1:50051",...}}`.
//!
//! Logs go to stderr; stdout carries only this line, so a supervisor (the
//! `make run` script, the test harness) learns the real ports, including
//! ones the kernel picked for `:0`, without parsing logs.

use std::io::Write;
use std::net::SocketAddr;

pub fn listening(service: &str, addrs: &[(&str, SocketAddr)]) {
    let map: serde_json::Map<String, serde_json::Value> =
        addrs.iter().map(|(name, addr)| (name.to_string(), serde_json::Value::String(addr.to_string()))).collect();
    let line = serde_json::json!({ "service": service, "listening": map });
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}
