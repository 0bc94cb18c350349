//! pushmesh hub: the channel bus.
//!
//! Gateways attach with one bidirectional stream each and declare the
//! topics they have local interest in; publishes are routed once per
//! interested gateway. See `proto/pushmesh/v1/hub.proto` for the contract.

pub mod attach;
pub mod config;
pub mod engine;
pub mod identity;
pub mod metrics;
pub mod publish;
pub mod query;
pub mod sequencer;
pub mod server;
pub mod service;
pub mod topics;

pub use config::Config;
pub use server::Hub;
