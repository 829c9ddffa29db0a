//! The `ferry` binary's library half: configuration, server start-up, the CLI, the
//! benchmarks and the stand-in services of tests and demos. `main.rs` only parses
//! arguments and calls in here, so integration tests start the very same server
//! in-process.

pub mod agent_view;
pub mod app;
pub mod bench;
pub mod blob_cmd;
pub mod breaker_cmd;
pub mod cli;
pub mod client;
pub mod config;
pub mod errors_cmd;
pub mod schedule_cmd;
pub mod stand_in;
pub mod token_cmd;
pub mod view;
pub mod watch;
