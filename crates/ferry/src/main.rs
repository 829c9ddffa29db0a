use clap::Parser;
use ferry::cli::{Cli, Command, ConfigCommand};
use std::process::ExitCode;
use tracing_subscriber::EnvFilter;

fn init_logs(default: &str) {
    let filter = EnvFilter::try_from_env("FERRY_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    // Colours only on a terminal: a log file or a collector gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr).try_init();
}

async fn serve(args: ferry::cli::ServerArgs) -> anyhow::Result<()> {
    let cfg = args.load()?;
    init_logs(&cfg.log);
    // Installed before the server says it listens (see `shutdown_signal`).
    let signal = ferry::app::shutdown_signal();
    let server = ferry::app::start(&cfg).await?;
    // The store it really uses: a PostgreSQL URL (password hidden) makes the data directory moot.
    let store = match &cfg.database_url {
        Some(url) => format!("PostgreSQL at {}", ferry::config::redact_password(url)),
        None => format!("SQLite in {}", cfg.data_dir.display()),
    };
    println!("Ferry listening on {} ({store})", server.url());
    signal.await;
    tracing::info!("signal received; draining");
    server.stop().await
}

async fn work(args: ferry::cli::WorkerArgs) -> anyhow::Result<()> {
    let cfg = args.load()?;
    init_logs(&cfg.log);
    let concurrency = args.concurrency.unwrap_or(cfg.workers);
    if concurrency == 0 {
        anyhow::bail!("--concurrency must be at least 1");
    }
    let signal = ferry::app::shutdown_signal();
    let worker = ferry::app::start_worker(&cfg, &args.queues, concurrency, &args.listen).await?;
    println!("Ferry worker on {} serving {} (health on http://{})", cfg.node, args.queues.join(","), worker.addr);
    signal.await;
    tracing::info!("signal received; draining");
    worker.stop().await
}

fn main() -> ExitCode {
    // The sandbox helper must stay single-threaded: it is dispatched before any runtime
    // (or anything else) starts.
    if std::env::args_os().nth(1).is_some_and(|a| a == ferry::app::SANDBOX_HELPER_ARG) {
        ferry_sandbox::helper_main();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run())
}

async fn run() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Server(args) => serve(args).await.map(|_| ExitCode::SUCCESS),
        Command::Worker(args) => work(args).await.map(|_| ExitCode::SUCCESS),
        Command::Config { command: ConfigCommand::Show(args) } => args.load().and_then(|c| {
            println!("{}", c.show()?);
            Ok(ExitCode::SUCCESS)
        }),
        Command::StandIn { command } => {
            // Each call it answers is logged (never its `Authorization` header).
            init_logs("info");
            ferry::stand_in::run(command).await.map(|_| ExitCode::SUCCESS)
        }
        Command::Bench(args) => {
            init_logs("warn");
            ferry::bench::run(args).await.map(|_| ExitCode::SUCCESS)
        }
        other => {
            init_logs("warn");
            ferry::cli::run_client(other).await
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
