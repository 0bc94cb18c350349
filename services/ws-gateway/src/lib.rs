//! pushmesh ws-gateway: client WebSocket connections and local fan-out.
//!
//! `http` accepts and upgrades; `connection` runs one client; `registry`
//! knows who is connected and subscribed; `hubs` keeps one attach stream
//! per hub; `fanout` turns a hub delivery into frames on sockets.

pub mod admission;
pub mod auth;
pub mod config;
pub mod connection;
pub mod dedupe;
pub mod fanout;
pub mod http;
pub mod hubs;
pub mod metrics;
pub mod protocol;
pub mod queries;
pub mod queue;
pub mod registry;
pub mod server;

pub use config::Config;
pub use server::Gateway;
