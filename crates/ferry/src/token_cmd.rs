//! `ferry token`: create a token straight in the store (the first admin token, before any
//! server runs; any operator token), list and revoke them through the API, or reopen a
//! store whose tokens were all revoked.

use crate::cli::{ClientArgs, StoreArgs, print};
use crate::config::FlagOverrides;
use anyhow::bail;
use clap::Subcommand;
use reqwest::Method;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token in the store (`--data-dir` or `--database`) and print it once, alone
    /// on the last line. A SQLite data directory must not be in use by a running server:
    /// stop it first, or have an admin use `POST /v1/tokens` while it runs.
    Create {
        #[arg(long)]
        workspace: String,
        #[arg(long)]
        user: String,
        /// viewer, submitter, admin, operator (every right of an admin in its workspace,
        /// plus the server-wide queue settings) or worker (the worker protocol only: a
        /// remote worker's sessions); the last two are made only here, never through the API
        #[arg(long)]
        role: String,
        #[command(flatten)]
        store: StoreArgs,
        /// Data directory holding the SQLite file [env: FERRY_DATA_DIR] [default: ./ferry-data]
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Reopen a store whose tokens were all revoked: a server on it serves unauthenticated
    /// requests again on loopback (or with --insecure), as the operator. Refused while any
    /// unrevoked token exists. A SQLite data directory must not be in use by a running server.
    Reopen {
        #[command(flatten)]
        store: StoreArgs,
        /// Data directory holding the SQLite file [env: FERRY_DATA_DIR] [default: ./ferry-data]
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// List the workspace's tokens (without their secrets).
    List {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Revoke a token: refused from the next request on.
    Revoke {
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// Runs a `ferry token` command; returns the process exit code.
pub async fn run(command: TokenCommand) -> anyhow::Result<ExitCode> {
    match command {
        TokenCommand::List { client } => {
            print(&client.client()?.call(Method::GET, "/v1/tokens", None).await?);
            Ok(ExitCode::SUCCESS)
        }
        TokenCommand::Revoke { id, client } => {
            client.client()?.call(Method::DELETE, &format!("/v1/tokens/{id}"), None).await?;
            println!("revoked {id}");
            Ok(ExitCode::SUCCESS)
        }
        TokenCommand::Create { workspace, user, role, store, data_dir } => {
            create_token(workspace, user, role, store, data_dir).await
        }
        TokenCommand::Reopen { store, data_dir } => {
            let cfg = store.load(FlagOverrides { data_dir, ..FlagOverrides::default() })?;
            let store = crate::app::open_store(&cfg).await?;
            let outcome = store.reopen().await;
            store.close().await;
            match outcome? {
                ferry_store::ReopenOutcome::Reopened => println!(
                    "reopened: while no API token exists, a server on this store serves unauthenticated requests \
                     (on loopback, or with --insecure) as user `local` of workspace `default`, with every right, \
                     the operator's included; the first new token closes it again"
                ),
                ferry_store::ReopenOutcome::AlreadyOpen => {
                    println!("nothing to do: the store was not closed (it has had no token since it was last opened)")
                }
                ferry_store::ReopenOutcome::TokensRemain(n) => bail!(
                    "refused: {n} unrevoked API token(s) exist; revoke them first (`ferry token revoke ID`), \
                     the store stays closed"
                ),
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `ferry token create`: straight into the store, which must not be in use.
async fn create_token(
    workspace: String,
    user: String,
    role: String,
    store: StoreArgs,
    data_dir: Option<PathBuf>,
) -> anyhow::Result<ExitCode> {
    let cfg = store.load(FlagOverrides { data_dir, ..FlagOverrides::default() })?;
    let role: ferry_core::auth::Role = role.parse().map_err(|e: String| anyhow::anyhow!(e))?;
    let ok_name = |s: &str| {
        !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.@".contains(&b))
    };
    if !ok_name(&workspace) || !ok_name(&user) {
        bail!("--workspace and --user must be 1 to 64 letters, digits, `_`, `-`, `.` or `@`");
    }
    let store = match crate::app::open_store(&cfg).await {
        Ok(store) => store,
        Err(e) if e.chain().any(|c| matches!(c.downcast_ref(), Some(ferry_store::StoreError::Locked(_)))) => {
            bail!(
                "{e:#}\n`ferry token create` writes to the store directly, so the server must not be running: \
                 stop it (Ctrl-C or SIGTERM), create the token, and start it again; or, while it runs, create \
                 the token through the API as an admin: `curl -X POST localhost:7700/v1/tokens -H \
                 'Authorization: Bearer ADMIN_TOKEN' -d '{{\"user\": \"{user}\", \"role\": \"{role}\"}}'` \
                 (in the admin's workspace; with no tokens yet, a loopback server needs no Authorization \
                 header and the token is made in workspace `default`)"
            );
        }
        Err(e) => return Err(e),
    };
    let secret = ferry_core::auth::new_token();
    let token = store
        .create_token(ferry_store::NewToken {
            id: uuid::Uuid::now_v7(),
            workspace,
            user,
            role,
            hash: ferry_core::auth::token_hash(&secret),
        })
        .await?;
    store.close().await;
    println!("token {} for user `{}` of workspace `{}`, role {}", token.id, token.user, token.workspace, token.role);
    println!(
        "it is shown once; keep it secret (pass it with --token or FERRY_TOKEN, or send it as `Authorization: Bearer …`):"
    );
    println!("{secret}");
    Ok(ExitCode::SUCCESS)
}
