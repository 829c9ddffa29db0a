//! The `ferry` binary's library half: configuration, server start-up, the CLI and the
//! benchmark. `main.rs` only parses arguments and calls in here, so integration tests
//! start the very same server in-process.

pub mod app;
pub mod bench;
pub mod bench_sandbox;
pub mod bench_workflow;
pub mod cli;
pub mod client;
pub mod config;
pub mod view;
pub mod watch;
