//! Configuration: merged once, validated at start, passed down explicitly.
//!
//! Sources, lowest precedence first: built-in defaults, an optional TOML file
//! (`--config FILE` or `FERRY_CONFIG`), environment variables `FERRY_*` (nested keys with
//! `__`, e.g. `FERRY_QUEUES__HEAVY__CONCURRENCY=2`), then command-line flags. Every setting
//! has a safe default; an unknown key or a bad value is an error that names its source.
//! `ferry config show` prints the merged result.
//!
//! Not every `FERRY_*` variable is a setting: the CLI's `FERRY_SERVER` and `FERRY_TOKEN`,
//! the test suite's `FERRY_TEST_DATABASE_URL` and a few others are read where they are
//! used, and are left out of the merge by name ([`NOT_SETTINGS`]), so that a shell that
//! exports them for the CLI can still start a server. Any other unknown `FERRY_*` variable
//! is refused, like an unknown key in the file.
//!
//! A refusal names the setting as the user wrote it and where it came from: `FERRY_NOSUCH`
//! for the environment, `key.path` and the file's name for the file, the flag otherwise.
//!
//! Secrets: the `webhook` kind's signing secrets (`[webhooks.secrets]`, or
//! `FERRY_WEBHOOKS__SECRETS__PARTNER=whsec_…`; names from the environment are lowercase)
//! and the `llm` kind's API keys and the base URLs each may go to (`[llm.secrets]`, or
//! `FERRY_LLM_SECRET_OPENAI=sk-…` and `FERRY_LLM_BASE_URLS_OPENAI=https://…`, see
//! [`secrets`]) are checked when read, a bad one refused naming its key, never its value,
//! and `ferry config show` prints each as `<redacted>`.
//!
//! The settings' types are in modules by concern: [`listen`] (the API's address),
//! [`limits`] (`[limits]` and `[http]`), [`queues`] (`[queues.NAME]` and each queue's
//! concurrency), [`secrets`] (secrets from the environment), [`describe`] (how a refusal
//! and a shown configuration read).

pub mod describe;
pub mod limits;
pub mod listen;
pub mod queues;
pub mod secrets;

pub use describe::{redact_password, redact_path};
pub use limits::{HttpSettings, LimitsConfig, MAX_HTTP_CONNECTIONS};
pub use listen::{ListenAddr, ListenAddrError};
pub use queues::{DEFAULT_MAX_DEPTH, QueueSettings};

use anyhow::{Context, bail};
use ferry_core::Limits;
use ferry_store::sqlite::Durability;
use ferry_worker::kinds::{ExecConfig, Llm, LlmConfig, Webhook, WebhookConfig, Workflow};
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// The default API address. 7700 collides with none of PostgreSQL (5432), Redis (6379),
/// RabbitMQ (5672), NATS (4222), MariaDB (3306) or MQTT (1883).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7700";

/// The prefix of the environment variables that hold settings.
pub const ENV_PREFIX: &str = "FERRY_";

/// `FERRY_*` variables that are not settings, without the prefix. They are read where they
/// are used, never merged into [`Config`]; without this list, exporting `FERRY_TOKEN` for
/// the CLI would stop `ferry server` from starting ("unknown field `token`"). Add a
/// variable here when something other than the configuration reads it.
pub const NOT_SETTINGS: &[&str] = &[
    // The configuration file's location: read before the merge (`--config`).
    "CONFIG",
    // The CLI's server URL and API token (`--server`, `--token`).
    "SERVER",
    "TOKEN",
    // Where the sandbox helper binary is (`ferry_sandbox`).
    "SANDBOX_HELPER",
    // The PostgreSQL server of the test suite.
    "TEST_DATABASE_URL",
];

/// Everything `ferry server` needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address of the HTTP API: `IP:PORT` or `HOST:PORT`.
    pub listen: ListenAddr,
    /// Directory of the SQLite database.
    pub data_dir: PathBuf,
    /// Default concurrency of every queue's embedded worker pool; 0 runs the API only.
    pub workers: usize,
    /// `process` (survives a crash of the process) or `full` (survives a power cut).
    pub durability: Durability,
    /// This node's name in worker ids.
    pub node: String,
    /// How long a draining server lets running attempts finish before handing them back.
    pub shutdown_grace_ms: u64,
    /// Lease of a claimed job; at least three heartbeats long.
    pub lease_ms: u64,
    /// Interval between lease renewals.
    pub heartbeat_ms: u64,
    /// Longest a worker sleeps without being signalled (a safety net).
    pub poll_ms: u64,
    /// Interval of the expired-lease reaper.
    pub reap_ms: u64,
    /// Queues and their settings; `default`, `webhook`, `llm` and `runs` always exist.
    pub queues: BTreeMap<String, QueueSettings>,
    pub limits: LimitsConfig,
    /// The HTTP server's timeouts and connection cap.
    pub http: HttpSettings,
    /// Log filter (`info`, `ferry=debug`, …).
    pub log: String,
    /// `postgres://…` to use PostgreSQL; unset uses SQLite in `data_dir`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database_url: Option<String>,
    /// PostgreSQL schema for Ferry's tables (default: the connection's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database_schema: Option<String>,
    /// PostgreSQL connections per process.
    pub database_max_connections: u32,
    /// Finished (succeeded or cancelled) jobs and their events are deleted this long after
    /// they finished. Dead jobs are kept until replayed.
    pub retention_ms: u64,
    /// How often old jobs are pruned.
    pub prune_ms: u64,
    /// Interval of the keep-alive comments on event streams.
    pub sse_keep_alive_ms: u64,
    /// Most event streams open at once on this node. Each idle stream holds a connection
    /// and a little memory, no CPU; the cap keeps a node's file descriptors and memory
    /// for the rest of the API.
    pub sse_max_streams: usize,
    /// Most event streams one token (one workspace user, without tokens) may hold open on
    /// this node: a dashboard following a few dozen runs fits; a client leaking streams
    /// is stopped long before it can take the node's whole `sse_max_streams`.
    pub sse_max_streams_per_token: usize,
    /// Serve unauthenticated requests on a non-loopback address while no token exists.
    pub insecure: bool,
    /// Concurrency limits of workspaces that set none (`PUT /v1/limits` sets a
    /// workspace's own): runs 10 per workspace and 5 per user; standalone jobs unlimited.
    pub default_limits: ferry_store::WorkspaceLimits,
    /// The `exec` kind: interpreters, limits and their ceilings, the result cache.
    pub exec: ExecConfig,
    /// Circuit breakers: `enabled`, the `defaults`, and settings per queue
    /// (`[breakers.queues.NAME]`) and per target (`[breakers.targets."https://host:443"]`).
    pub breakers: ferry_core::breaker::BreakerConfig,
    /// The `webhook` kind: signing secrets by name, the `webhook` queue's concurrency.
    pub webhooks: WebhookConfig,
    /// The `llm` kind: API keys by name, the `llm` queue's concurrency.
    pub llm: LlmConfig,
    /// Blobs: the largest (`max_bytes`) and the size past which a job's input or output
    /// is kept as a blob and referenced (`claim_check_bytes`).
    pub blobs: ferry_store::BlobsConfig,
    /// Escalation rules and their endpoints (`[escalation]`, `docs/escalation.md`).
    pub escalation: ferry_core::escalation::EscalationConfig,
    /// The program run as the sandbox helper (`PROGRAM sandbox-helper SPEC`); default:
    /// this `ferry` binary.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exec_helper: Option<PathBuf>,
    /// The file this configuration was read from (hidden from sandboxes).
    #[serde(skip)]
    pub config_file: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: DEFAULT_LISTEN.parse().expect("valid default address"),
            data_dir: PathBuf::from("ferry-data"),
            workers: 10,
            durability: Durability::Process,
            node: "ferry".into(),
            shutdown_grace_ms: 30_000,
            lease_ms: 30_000,
            heartbeat_ms: 5_000,
            poll_ms: 1_000,
            reap_ms: 2_000,
            // `heavy`: the place for long or large runs (`exec` with big limits), so that
            // they cannot take every slot of `default`. `webhook`: where `webhook` jobs go
            // when they name no queue, so that slow endpoints cannot either; its
            // concurrency is `webhooks.concurrency` unless set here. `llm`: the same for
            // `llm` calls, which wait seconds on a provider (`llm.concurrency`). `runs`: where
            // `workflow` jobs wait for the runs they started, each holding its slot for the
            // run's whole life (100 at once unless set here), never `default`'s, which the
            // runs' own nodes need.
            queues: BTreeMap::from([
                ("default".to_string(), QueueSettings::default()),
                ("heavy".to_string(), QueueSettings { concurrency: Some(2), max_depth: None, severity: None }),
                (Webhook::QUEUE.to_string(), QueueSettings::default()),
                (Llm::QUEUE.to_string(), QueueSettings::default()),
                (Workflow::QUEUE.to_string(), QueueSettings::default()),
            ]),
            limits: LimitsConfig::default(),
            http: HttpSettings::default(),
            log: "info".into(),
            database_url: None,
            database_schema: None,
            database_max_connections: 16,
            retention_ms: 7 * 86_400_000,
            prune_ms: 60_000,
            sse_keep_alive_ms: 15_000,
            sse_max_streams: 1_000,
            sse_max_streams_per_token: 50,
            insecure: false,
            default_limits: ferry_store::WorkspaceLimits::default(),
            exec: ExecConfig::default(),
            breakers: ferry_core::breaker::BreakerConfig::default(),
            webhooks: WebhookConfig::default(),
            llm: LlmConfig::default(),
            blobs: ferry_store::BlobsConfig::default(),
            escalation: Default::default(),
            exec_helper: None,
            config_file: None,
        }
    }
}

/// Values given as command-line flags; `None` leaves the lower sources in charge.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FlagOverrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<ListenAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workers: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub durability: Option<Durability>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub insecure: Option<bool>,
    /// Only the limits given (`{"per_user": {"runs": 3}}`), merged into the others.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_limits: Option<serde_json::Value>,
}

impl Config {
    /// Merges defaults, the file, the environment and the flags, then validates.
    pub fn load(file: Option<&PathBuf>, flags: &FlagOverrides) -> anyhow::Result<Config> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if !path.exists() {
                bail!("config file {} does not exist", path.display());
            }
            fig = fig.merge(Toml::file(path));
        }
        // `FERRY_LLM_SECRET_NAME` and `FERRY_LLM_BASE_URLS_NAME` are secrets, not settings:
        // they are added below.
        let env = Env::prefixed(ENV_PREFIX)
            .split("__")
            .ignore(NOT_SETTINGS)
            .filter(|k| !secrets::is_llm_variable(k.as_str()));
        fig = fig.merge(env).merge(Serialized::defaults(flags));
        let mut cfg: Config =
            fig.extract().map_err(|e| anyhow::anyhow!("invalid configuration: {}", describe::describe(e)))?;
        secrets::add_llm_secrets(&mut cfg.llm, std::env::vars_os())?;
        for queue in ["default", Webhook::QUEUE, Llm::QUEUE, Workflow::QUEUE] {
            cfg.queues.entry(queue.into()).or_default();
        }
        cfg.config_file = file.cloned();
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks values that are well-typed but unsafe together.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.heartbeat_ms == 0 || self.lease_ms < 3 * self.heartbeat_ms {
            bail!(
                "lease_ms ({}) must be at least three heartbeats (heartbeat_ms = {})",
                self.lease_ms,
                self.heartbeat_ms
            );
        }
        if self.poll_ms == 0 || self.reap_ms == 0 || self.prune_ms == 0 {
            bail!("poll_ms, reap_ms and prune_ms must be positive");
        }
        if let Some(url) = &self.database_url
            && !(url.starts_with("postgres://") || url.starts_with("postgresql://"))
        {
            bail!("database_url must be a postgres:// URL (unset, Ferry uses SQLite in data_dir)");
        }
        self.exec.validate().map_err(|e| anyhow::anyhow!(e))?;
        self.webhooks.validate().map_err(|e| anyhow::anyhow!(e))?;
        self.llm.validate().map_err(|e| anyhow::anyhow!(e))?;
        self.escalation.rules(|s| self.webhooks.secrets.contains_key(s)).map_err(anyhow::Error::msg)?;
        if self.database_max_connections < 2 {
            bail!("database_max_connections must be at least 2");
        }
        if self.workers > 10_000 {
            bail!("workers must be at most 10000");
        }
        if self.sse_max_streams == 0 || self.sse_max_streams_per_token == 0 {
            bail!("sse_max_streams and sse_max_streams_per_token must be at least 1");
        }
        for (name, q) in &self.queues {
            let ok = !name.is_empty()
                && name.len() <= 64
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b));
            if !ok {
                bail!("queue name `{name}` must be 1 to 64 letters, digits, `_`, `-` or `.`");
            }
            if q.concurrency.is_some_and(|c| c > 10_000) {
                bail!("queues.{name}.concurrency must be at most 10000");
            }
        }
        self.breakers.validate().map_err(anyhow::Error::msg)?;
        for name in self.breakers.queues.keys() {
            if !self.queues.contains_key(name) {
                bail!("breakers.queues.{name}: there is no queue `{name}`");
            }
        }
        let h = &self.http;
        if h.header_timeout_ms == 0 || h.body_timeout_ms == 0 || h.idle_timeout_ms == 0 {
            bail!("http.header_timeout_ms, http.body_timeout_ms and http.idle_timeout_ms must be positive");
        }
        if h.max_connections == 0 || h.max_connections > MAX_HTTP_CONNECTIONS {
            bail!("http.max_connections must be between 1 and {MAX_HTTP_CONNECTIONS}");
        }
        let l = &self.limits;
        if l.max_batch == 0 || l.max_body_bytes == 0 || l.max_input_bytes == 0 || l.max_output_bytes == 0 {
            bail!("limits must be positive");
        }
        if l.default_max_attempts == 0 || l.default_max_attempts > l.max_attempts {
            bail!("limits.default_max_attempts must be between 1 and limits.max_attempts");
        }
        if l.default_timeout_ms == 0 || l.default_timeout_ms > l.max_timeout_ms {
            bail!("limits.default_timeout_ms must be between 1 and limits.max_timeout_ms");
        }
        self.blobs.validate(l.max_input_bytes, l.max_output_bytes).map_err(anyhow::Error::msg)?;
        Ok(())
    }

    /// The core's validation limits.
    pub fn job_limits(&self) -> Limits {
        let l = &self.limits;
        Limits {
            max_input_bytes: l.max_input_bytes,
            max_attempts: l.max_attempts,
            max_timeout_ms: l.max_timeout_ms,
            default_timeout_ms: l.default_timeout_ms,
            default_max_attempts: l.default_max_attempts,
            ..Limits::default()
        }
    }

    /// The merged configuration as pretty JSON, with the database password and the paths
    /// of escalation endpoints redacted (and the webhook and llm secrets, which never
    /// serialise as anything but `<redacted>`).
    pub fn show(&self) -> anyhow::Result<String> {
        let mut shown = self.clone();
        shown.database_url = shown.database_url.map(|u| redact_password(&u));
        // An endpoint's path may be its credential (a Slack incoming webhook's is).
        for e in shown.escalation.endpoints.values_mut() {
            e.url = redact_path(&e.url);
        }
        serde_json::to_string_pretty(&shown).context("cannot render the configuration")
    }
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment::Jail's closure type, not ours
mod tests {
    use super::*;

    #[test]
    fn show_redacts_the_database_password() {
        let c = Config { database_url: Some("postgres://ferry:s3cret@db:5432/ferry".into()), ..Config::default() };
        let shown = c.show().unwrap();
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("postgres://ferry:***@db:5432/ferry"), "{shown}");
    }

    #[test]
    fn defaults_are_valid_and_safe() {
        let c = Config::default();
        c.validate().unwrap();
        assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
        assert!(c.lease_ms >= 3 * c.heartbeat_ms);
    }

    #[test]
    fn precedence_is_file_then_env_then_flags() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("ferry.toml", "workers = 3\nnode = \"from-file\"\n[queues.heavy]\nconcurrency = 2\n")?;
            jail.set_env("FERRY_NODE", "from-env");
            jail.set_env("FERRY_QUEUES__HEAVY__CONCURRENCY", "4");
            let flags = FlagOverrides { workers: Some(7), ..Default::default() };
            let cfg = Config::load(Some(&PathBuf::from("ferry.toml")), &flags).unwrap();
            assert_eq!(cfg.workers, 7, "flag beats file");
            assert_eq!(cfg.node, "from-env", "env beats file");
            assert_eq!(cfg.queues["heavy"].concurrency, Some(4), "nested env key");
            assert!(cfg.queues.contains_key("default"));
            Ok(())
        });
    }

    #[test]
    fn bad_values_name_their_source() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("FERRY_WORKERS", "many");
            let err = Config::load(None, &FlagOverrides::default()).unwrap_err().to_string();
            assert!(err.contains("WORKERS") && err.contains("FERRY_") && err.contains("many"), "{err}");
            jail.set_env("FERRY_WORKERS", "2");
            jail.create_file("bad.toml", "lease_ms = 100\nheartbeat_ms = 50\n")?;
            let err = Config::load(Some(&PathBuf::from("bad.toml")), &FlagOverrides::default()).unwrap_err();
            assert!(err.to_string().contains("three heartbeats"), "{err}");
            jail.create_file("typo.toml", "wrokers = 2\n")?;
            let err = Config::load(Some(&PathBuf::from("typo.toml")), &FlagOverrides::default()).unwrap_err();
            assert!(err.to_string().contains("wrokers"), "{err}");
            jail.create_file("streams.toml", "sse_max_streams_per_token = 0\n")?;
            let err = Config::load(Some(&PathBuf::from("streams.toml")), &FlagOverrides::default()).unwrap_err();
            assert!(err.to_string().contains("sse_max_streams_per_token"), "{err}");
            jail.create_file("streams.toml", "sse_max_streams = 1\nsse_max_streams_per_token = 1\n")?;
            Config::load(Some(&PathBuf::from("streams.toml")), &FlagOverrides::default()).expect("1 is a cap");
            Ok(())
        });
    }

    #[test]
    fn client_and_test_variables_are_not_settings_but_unknown_ones_are_refused() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("FERRY_TOKEN", "ferry_secret");
            jail.set_env("FERRY_SERVER", "127.0.0.1:7899");
            jail.set_env("FERRY_TEST_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/test");
            Config::load(None, &FlagOverrides::default()).expect("client and test variables are ignored");
            jail.set_env("FERRY_NOSUCH", "1");
            let err = Config::load(None, &FlagOverrides::default()).unwrap_err().to_string();
            assert!(err.contains("unknown setting `nosuch`") && err.contains("FERRY_NOSUCH"), "{err}");
            assert!(!err.contains("``") && !err.contains("default.") && !err.contains("exec_helper"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn a_typo_in_the_file_is_named_with_its_file() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("typo.toml", "[queues.webhook]\nconcurency = 5\n")?;
            let err = Config::load(Some(&PathBuf::from("typo.toml")), &FlagOverrides::default()).unwrap_err();
            let err = err.to_string();
            assert!(err.contains("`queues.webhook.concurency` in ") && err.contains("typo.toml"), "{err}");
            assert!(err.contains("concurrency, max_depth"), "the settings it could be: {err}");
            Ok(())
        });
    }

    #[test]
    fn escalation_rules_come_from_the_file_or_one_env_list_and_a_bad_one_stops_the_start() {
        figment::Jail::expect_with(|jail| {
            let file = "[webhooks.secrets]\nops = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"\n\
                [escalation.endpoints.ops]\nurl = \"https://hooks.example/x\"\nsecret = \"ops\"\n\
                [[escalation.rules]]\nname = \"storm\"\nwhen = \"severity >= high and count >= 20 in 5m\"\nnotify = \"ops\"\n";
            jail.create_file("esc.toml", file)?;
            let cfg = Config::load(Some(&PathBuf::from("esc.toml")), &FlagOverrides::default()).unwrap();
            assert_eq!(cfg.escalation.rules[0].name, "storm");
            jail.set_env(
                "FERRY_ESCALATION__RULES",
                r#"[{name = "lost", when = "dead on queue heavy", notify = "ops"}]"#,
            );
            let cfg = Config::load(Some(&PathBuf::from("esc.toml")), &FlagOverrides::default()).unwrap();
            let shown = cfg.show().unwrap();
            assert!(shown.contains("https://hooks.example/<redacted>") && !shown.contains("/x\""), "{shown}");
            let names: Vec<&str> = cfg.escalation.rules.iter().map(|r| r.name.as_str()).collect();
            assert_eq!(names, ["lost"], "the environment's list replaces the file's");
            jail.set_env("FERRY_ESCALATION__RULES", r#"[{name = "lost", when = "dead on heavy", notify = "ops"}]"#);
            let err = Config::load(Some(&PathBuf::from("esc.toml")), &FlagOverrides::default()).unwrap_err();
            let err = err.to_string();
            assert!(err.contains("escalation rule `lost`: when = \"dead on heavy\""), "{err}");
            Ok(())
        });
    }
}
