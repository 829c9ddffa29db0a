//! `ferry bench`: Ferry's own benchmarks, one subcommand each, on a fresh temporary store.
//!
//! - `ferry bench queue` ([`queue`]): end-to-end throughput and idle pickup latency of
//!   no-op jobs over real HTTP, beside the store's raw limit; on PostgreSQL also with
//!   `ferry worker` processes. `ferry bench [flags]`, naming no benchmark, runs this one.
//! - `ferry bench sandbox` ([`sandbox`]): what the `exec` sandbox adds to a bare spawn.
//! - `ferry bench workflow` ([`workflow`]): the workflow engine's overhead per step.
//! - `ferry bench breaker` ([`breaker`]): a dead target's requests while its breaker is
//!   open, and the drain once it recovers.
//! - `ferry bench agent` ([`agent`]): an agent step's overhead, and agent runs waiting on
//!   the provider together.
//!
//! Each benchmark's module owns its flags; the flags of the server under test, shared by
//! `queue` and `workflow`, and its temporary store are [`target`]'s. Figures and how they
//! were taken are in BENCHMARKS.md.

pub mod agent;
pub mod breaker;
pub mod queue;
mod runs;
pub mod sandbox;
mod stats;
pub mod target;
pub mod workflow;

use clap::{Args, Subcommand};

/// `ferry bench [BENCHMARK] [flags]`.
#[derive(Debug, Clone, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub benchmark: Option<Benchmark>,
    /// Without a benchmark named: `queue`'s flags (`ferry bench --jobs 2000` is
    /// `ferry bench queue --jobs 2000`).
    #[command(flatten)]
    pub queue: queue::QueueArgs,
}

/// One benchmark.
#[derive(Debug, Clone, Subcommand)]
pub enum Benchmark {
    /// End-to-end throughput and idle pickup latency of no-op jobs, beside the store's raw
    /// limit (the default)
    Queue(queue::QueueArgs),
    /// The `exec` sandbox's overhead: hello world in Python and sh, sandboxed against a
    /// bare spawn
    Sandbox(sandbox::SandboxArgs),
    /// The workflow engine's overhead: a 20-step chain and a 1,000-wide fan-out of `noop`
    /// nodes
    Workflow(workflow::WorkflowArgs),
    /// Agent runs: the engine's overhead per step, and runs waiting on the provider
    Agent(agent::AgentArgs),
    /// Circuit breakers: a dead target's requests while its breaker is open (target: only
    /// the probes), and the drain of 10,000 held-back jobs once it recovers
    Breaker(breaker::BreakerArgs),
}

/// Runs the benchmark named (`queue` when none is) and prints its report.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    match args.benchmark.unwrap_or(Benchmark::Queue(args.queue)) {
        Benchmark::Queue(args) => queue::run(args).await,
        Benchmark::Sandbox(args) => sandbox::run(&args).await,
        Benchmark::Workflow(args) => workflow::run(&args).await,
        Benchmark::Agent(args) => agent::run(&args).await,
        Benchmark::Breaker(args) => breaker::run(&args).await,
    }
}
