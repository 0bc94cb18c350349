//! pushmesh http-ingress: the HTTP API backends publish through, and the
//! same API over gRPC.
//!
//! `routes` (HTTP) and `grpc` are thin adapters over `commands` (the API,
//! typed results), behind one `access` check (keys, rate limit, sizes);
//! `error` maps every failure to an HTTP status, a gRPC code and a JSON
//! body once. `relay` publishes through `hubs` (the hub pool: which hub,
//! failover, health) and bridges partitions with `replay`.

pub mod access;
pub mod commands;
pub mod config;
pub mod error;
pub mod grpc;
pub mod hubs;
pub mod keys;
pub mod metrics;
pub mod relay;
pub mod replay;
pub mod routes;
pub mod server;
pub mod state;
pub mod stream;

pub use config::Config;
pub use server::Ingress;
