//! End-to-end tests: the real hub, ws-gateway and http-ingress binaries on
//! ports the kernel picked, driven by real WebSocket and HTTP clients.

mod api;
mod api_abuse;
mod bad_input;
mod client_abuse;
mod colocated;
mod engine;
mod faults;
mod grpc_api;
mod hub_identity;
mod image;
mod jwt_keys;
mod logs;
mod make_run;
mod message_limits;
mod metrics;
mod namespaces;
mod openapi;
mod partition;
mod per_message;
mod pipeline;
mod proxy;
mod refresh;
mod reliability;
mod security;
mod sockets;
mod sse;
mod stale_offsets;
mod tls;
