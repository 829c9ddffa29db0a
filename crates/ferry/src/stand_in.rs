//! Stand-ins for the services jobs call: real HTTP servers on loopback that answer from a
//! script, for tests, demos and benchmarks (never for production traffic). The
//! integration tests start them in-process; `ferry stand-in …` runs one from the command
//! line.
//!
//! - [`llm`]: an OpenAI-compatible chat-completions API ([`StandInLlm`]), for the `llm`
//!   kind: `ferry stand-in llm --script FILE --listen 127.0.0.1:8089`.

pub mod llm;

pub use llm::{Script as LlmScript, StandInLlm};

use anyhow::Context;
use clap::{Args, Subcommand};
use std::path::PathBuf;

/// `ferry stand-in SERVICE`.
#[derive(Debug, Clone, Subcommand)]
pub enum StandInCommand {
    /// An OpenAI-compatible chat-completions API answering from a script (docs/llm.md):
    /// `POST http://LISTEN/v1/chat/completions`. A test and demo aid; Ctrl-C stops it.
    Llm(LlmArgs),
}

/// `ferry stand-in llm`'s flags.
#[derive(Debug, Clone, Args)]
pub struct LlmArgs {
    /// The script: which reply each request gets (JSON, or YAML)
    #[arg(long)]
    pub script: PathBuf,
    /// The address to serve on, IP:PORT (port 0: any free port)
    #[arg(long, default_value = "127.0.0.1:8089")]
    pub listen: std::net::SocketAddr,
}

/// Runs a stand-in until SIGINT or SIGTERM.
pub async fn run(command: StandInCommand) -> anyhow::Result<()> {
    match command {
        StandInCommand::Llm(args) => {
            let file = args.script.display();
            let text = std::fs::read_to_string(&args.script).with_context(|| format!("cannot read {file}"))?;
            // YAML is a superset of JSON: one parser reads both.
            let script: serde_json::Value =
                yaml_serde::from_str(&text).with_context(|| format!("{file} is not valid JSON or YAML"))?;
            let script = llm::Script::parse(&script).map_err(|e| anyhow::anyhow!("{file}: {e}"))?;
            let listener = std::net::TcpListener::bind(args.listen)
                .with_context(|| format!("cannot listen on {}", args.listen))?;
            let server = StandInLlm::serve(script, listener)?;
            // Handlers first, then the announcement: a SIGTERM sent the moment the address
            // is read stops the stand-in cleanly instead of killing it.
            let stop = crate::app::shutdown_signal();
            println!("stand-in LLM serving {} (script {file}); Ctrl-C stops it", server.base_url());
            stop.await;
            server.stop().await;
            Ok(())
        }
    }
}
