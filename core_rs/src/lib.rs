//! model-router's hot path. Pure Rust below `py`; only `py.rs` knows Python.

pub mod announce;
pub mod breaker;
pub mod chat;
pub mod clients;
pub mod connection;
pub mod cost;
pub mod door;
pub mod door_account;
pub mod engine;
pub mod failover;
pub mod ids;
pub mod key_files;
pub mod keys;
pub mod leases;
pub mod log_line;
pub mod metric_tally;
pub mod recent_record;
pub mod rollouts;
pub mod rollup;
pub mod routed;
pub mod rules;
pub mod select;
pub mod shape;
pub mod snapshot;
pub mod sse;
pub mod stats;
pub mod streamed;
pub mod trust;
pub mod upstream;
pub mod wire;

#[cfg(feature = "python")]
mod py;
