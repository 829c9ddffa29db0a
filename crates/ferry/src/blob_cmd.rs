//! `ferry blob get HASH [-o FILE]`: a blob of the workspace (a `blob_put` result, or a
//! claim-checked input or output) through `GET /v1/blobs/{hash}`, byte for byte.

use crate::cli::ClientArgs;
use anyhow::Context;
use clap::Subcommand;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Subcommand)]
pub enum BlobCommand {
    /// Writes a blob's bytes to standard output, or to a file with `-o`.
    Get {
        /// The blob's SHA-256 (64 lowercase hex digits), as a `blob_put` output or a
        /// `{"$blob": {"hash": …}}` reference shows it
        hash: String,
        /// Write the bytes to this file instead of standard output
        #[arg(short, long)]
        output: Option<PathBuf>,
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// Runs a `ferry blob` command.
pub async fn run(command: BlobCommand) -> anyhow::Result<ExitCode> {
    let BlobCommand::Get { hash, output, client } = command;
    if !ferry_store::blobs::valid_hash(&hash) {
        anyhow::bail!("`{hash}` is not a blob hash: 64 lowercase hex digits");
    }
    let bytes = client.client()?.bytes(&format!("/v1/blobs/{hash}")).await?;
    match output {
        Some(path) => std::fs::write(&path, &bytes).with_context(|| format!("cannot write {}", path.display()))?,
        None => std::io::stdout().lock().write_all(&bytes).context("cannot write to standard output")?,
    }
    Ok(ExitCode::SUCCESS)
}
