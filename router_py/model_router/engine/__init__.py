"""The engine: wraps the Rust core and keeps each worker's view of the config current."""
