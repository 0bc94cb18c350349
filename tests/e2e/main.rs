//! End-to-end tests: the real hub, ws-gateway and http-ingress binaries on
//! ports the kernel picked, driven by real WebSocket and HTTP clients.

mod api;
mod bad_input;
mod engine;
mod faults;
mod grpc_api;
mod metrics;
mod openapi;
mod partition;
mod pipeline;
mod reliability;
mod security;
mod tls;
