//! model-router's hot path. Pure Rust below `py`; only `py.rs` knows Python.

pub mod snapshot;

#[cfg(feature = "python")]
mod py;
