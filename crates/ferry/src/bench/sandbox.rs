//! `ferry bench sandbox`: what the `exec` sandbox costs. Runs a hello-world in Python
//! and in `sh`, alternately as a bare subprocess (spawn, capture output, wait) and in the
//! sandbox (namespaces, new root, rlimits, Landlock, seccomp, scratch directory made and
//! removed), and reports p50/p99 of each and the overhead at p50 and p99.

use super::stats::percentile;
use anyhow::{Context, bail};
use clap::Args;
use ferry_sandbox::{Sandbox, SandboxSpec};
use serde::Serialize;
use std::process::Stdio;
use std::time::Instant;

/// `ferry bench sandbox`'s flags.
#[derive(Debug, Clone, Args)]
pub struct SandboxArgs {
    /// Runs of each language, bare and sandboxed (at least 10)
    #[arg(long, default_value_t = 500)]
    pub samples: usize,
    /// Print the results as JSON
    #[arg(long)]
    pub json: bool,
}

/// One language's figures, in milliseconds.
#[derive(Debug, Serialize)]
pub struct SandboxFigures {
    pub language: &'static str,
    pub runs: usize,
    pub bare_p50_ms: f64,
    pub bare_p99_ms: f64,
    pub sandbox_p50_ms: f64,
    pub sandbox_p99_ms: f64,
    pub overhead_p50_ms: f64,
    pub overhead_p99_ms: f64,
}

async fn bare(program: &str, args: &[&str]) -> anyhow::Result<f64> {
    let started = Instant::now();
    let out = tokio::process::Command::new(program)
        .args(args)
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .await?;
    let ms = started.elapsed().as_secs_f64() * 1e3;
    if !out.status.success() || out.stdout != b"hello\n" {
        bail!("bare {program} failed: {:?}", out);
    }
    Ok(ms)
}

async fn sandboxed(sandbox: &Sandbox, program: &str, args: &[&str]) -> anyhow::Result<f64> {
    let spec = SandboxSpec::new(program, args.iter().copied());
    let started = Instant::now();
    let out = sandbox.run(spec).await?;
    let ms = started.elapsed().as_secs_f64() * 1e3;
    if out.exit_code != Some(0) || out.stdout != "hello\n" {
        bail!("sandboxed {program} failed: {out:?}");
    }
    Ok(ms)
}

/// Measures and prints.
pub async fn run(args: &SandboxArgs) -> anyhow::Result<()> {
    let runs = args.samples.max(10);
    let scratch = tempfile::Builder::new().prefix("ferry-bench-sandbox").tempdir_in(std::env::temp_dir())?;
    let sandbox = Sandbox {
        base_dir: scratch.path().to_path_buf(),
        helper: std::env::current_exe().context("cannot find the ferry binary")?,
        helper_args: vec![crate::app::SANDBOX_HELPER_ARG.into()],
        ..Sandbox::default()
    };
    let isolation = sandbox.probe().await;
    if !isolation.full() {
        eprintln!("note: this host lacks {}; measuring the weaker sandbox", isolation.missing().join(", "));
    }
    let cases: [(&'static str, &str, &[&str]); 2] =
        [("python", "python3", &["-c", "print('hello')"]), ("sh", "sh", &["-c", "echo hello"])];
    let mut figures = Vec::new();
    for (language, program, argv) in cases {
        for _ in 0..5 {
            bare(program, argv).await?;
            sandboxed(&sandbox, program, argv).await?;
        }
        let (mut b, mut s) = (Vec::with_capacity(runs), Vec::with_capacity(runs));
        // Alternating, so that drift on a shared machine hits both alike.
        for _ in 0..runs {
            b.push(bare(program, argv).await?);
            s.push(sandboxed(&sandbox, program, argv).await?);
        }
        b.sort_by(f64::total_cmp);
        s.sort_by(f64::total_cmp);
        let (bp50, bp99, sp50, sp99) =
            (percentile(&b, 0.5), percentile(&b, 0.99), percentile(&s, 0.5), percentile(&s, 0.99));
        figures.push(SandboxFigures {
            language,
            runs,
            bare_p50_ms: bp50,
            bare_p99_ms: bp99,
            sandbox_p50_ms: sp50,
            sandbox_p99_ms: sp99,
            overhead_p50_ms: sp50 - bp50,
            overhead_p99_ms: sp99 - bp99,
        });
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&serde_json::json!({"isolation": isolation, "figures": figures}))?);
        return Ok(());
    }
    println!("sandbox overhead, hello world, {runs} runs each (ms; target: overhead p50 < 10)");
    println!(
        "{:<8} {:>9} {:>9} {:>11} {:>11} {:>13} {:>13}",
        "", "bare p50", "bare p99", "sandbox p50", "sandbox p99", "overhead p50", "overhead p99"
    );
    for f in &figures {
        println!(
            "{:<8} {:>9.2} {:>9.2} {:>11.2} {:>11.2} {:>13.2} {:>13.2}",
            f.language,
            f.bare_p50_ms,
            f.bare_p99_ms,
            f.sandbox_p50_ms,
            f.sandbox_p99_ms,
            f.overhead_p50_ms,
            f.overhead_p99_ms
        );
    }
    Ok(())
}
