//! pushmesh http-ingress: the HTTP API backends publish through.
//!
//! `routes` is the API (one function per route), `error` maps every failure
//! to a status and a JSON error once, `hubs` picks the hub for a publish and
//! fails over.

pub mod commands;
pub mod config;
pub mod error;
pub mod grpc;
pub mod hubs;
pub mod keys;
pub mod metrics;
pub mod replay;
pub mod routes;
pub mod server;

pub use config::Config;
pub use server::Ingress;
