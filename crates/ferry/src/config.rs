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
//! are checked when read, a bad one refused naming its key, never its value, and
//! `ferry config show` prints each as `<redacted>`.

use anyhow::{Context, bail};
use ferry_core::Limits;
use ferry_store::sqlite::Durability;
use ferry_worker::kinds::{ExecConfig, Webhook, WebhookConfig};
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

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

/// An address to listen on: `IP:PORT` or `HOST:PORT` (`localhost:7700`). A host name is
/// resolved when the server starts ([`ListenAddr::resolve`]); `localhost` is loopback, so
/// it keeps the unauthenticated open mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenAddr(String);

/// Why a text is not a [`ListenAddr`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenAddrError(String);

impl fmt::Display for ListenAddrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}` is not HOST:PORT (e.g. 127.0.0.1:7700, localhost:7700, [::1]:7700)", self.0)
    }
}

impl std::error::Error for ListenAddrError {}

impl FromStr for ListenAddr {
    type Err = ListenAddrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.parse::<SocketAddr>().is_ok() {
            return Ok(ListenAddr(s.to_string()));
        }
        let bad = || ListenAddrError(s.to_string());
        let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
        let host_ok = !host.is_empty()
            && host.len() <= 253
            && host.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.".contains(&b));
        if !host_ok || port.parse::<u16>().is_err() {
            return Err(bad());
        }
        Ok(ListenAddr(s.to_string()))
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for ListenAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for ListenAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl ListenAddr {
    /// The socket address to bind: an IP address as given, or the host name's first IPv4
    /// address (IPv6 if it has none), so that `localhost` means 127.0.0.1 like the CLI's
    /// default server URL.
    pub async fn resolve(&self) -> std::io::Result<SocketAddr> {
        if let Ok(addr) = self.0.parse() {
            return Ok(addr);
        }
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host(self.0.as_str()).await?.collect();
        addrs.iter().find(|a| a.is_ipv4()).or(addrs.first()).copied().ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::NotFound, format!("{} resolves to no address", self.0))
        })
    }
}

/// One queue's settings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueSettings {
    /// Attempts running at once in this process; defaults to `workers`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<usize>,
    /// The most jobs the queue may hold waiting (queued, scheduled or retrying); a
    /// submission past it is refused with 503. Default 10,000; 0 for no cap.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_depth: Option<u64>,
    /// The least severity of a failure that kills one of this queue's jobs
    /// (`ferry_core::severity`): `"critical"` for a queue whose lost jobs must page
    /// someone. A floor for dead jobs only (retries keep theirs); unset: `high`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub severity: Option<ferry_core::Severity>,
}

/// The default of [`QueueSettings::max_depth`].
pub const DEFAULT_MAX_DEPTH: u64 = 10_000;

/// Size and range limits, stated up front and enforced with a 4xx at the door.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest request body (413 above it).
    pub max_body_bytes: usize,
    /// Most jobs in one batch.
    pub max_batch: usize,
    /// Largest serialized `input` of one job (413 above it).
    pub max_input_bytes: usize,
    /// Largest serialized output of one attempt; above it the attempt fails with
    /// `resource_limit`.
    pub max_output_bytes: usize,
    /// Largest `max_attempts`.
    pub max_attempts: u32,
    /// Largest `timeout_ms`.
    pub max_timeout_ms: u64,
    /// `timeout_ms` when a job gives none.
    pub default_timeout_ms: u64,
    /// `max_attempts` when a job gives none.
    pub default_max_attempts: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        let l = Limits::default();
        LimitsConfig {
            max_body_bytes: 16 * 1024 * 1024,
            max_batch: 1000,
            max_input_bytes: l.max_input_bytes,
            // Room for an `exec` result: 1 MiB per stream, escaped, plus the rest.
            max_output_bytes: 4 * 1024 * 1024,
            max_attempts: l.max_attempts,
            max_timeout_ms: l.max_timeout_ms,
            default_timeout_ms: l.default_timeout_ms,
            default_max_attempts: l.default_max_attempts,
        }
    }
}

/// The HTTP server's timeouts and connection cap (`[http]`; see
/// `ferry_server::listener` for what each one cuts and why the defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSettings {
    /// How long a client has to send a request's line and headers (from the connection's
    /// start, or from the request's first byte); then the connection is closed.
    pub header_timeout_ms: u64,
    /// How long a client has to send a request's whole body, from the end of its head;
    /// then the request is answered 408 and the connection closed.
    pub body_timeout_ms: u64,
    /// How long a kept-alive connection may wait for its next request. An answer being
    /// sent (an event stream) is never cut by it.
    pub idle_timeout_ms: u64,
    /// The most connections served at once; past it, connections wait in the accept
    /// backlog until one closes.
    pub max_connections: usize,
}

impl Default for HttpSettings {
    fn default() -> Self {
        let l = ferry_server::listener::HttpLimits::default();
        HttpSettings {
            header_timeout_ms: l.header_timeout.as_millis() as u64,
            body_timeout_ms: l.body_timeout.as_millis() as u64,
            idle_timeout_ms: l.idle_timeout.as_millis() as u64,
            max_connections: l.max_connections,
        }
    }
}

impl HttpSettings {
    /// The listener's limits.
    pub fn limits(&self) -> ferry_server::listener::HttpLimits {
        use std::time::Duration;
        ferry_server::listener::HttpLimits {
            header_timeout: Duration::from_millis(self.header_timeout_ms),
            body_timeout: Duration::from_millis(self.body_timeout_ms),
            idle_timeout: Duration::from_millis(self.idle_timeout_ms),
            max_connections: self.max_connections,
        }
    }
}

/// The largest `http.max_connections`.
pub const MAX_HTTP_CONNECTIONS: usize = 1_000_000;

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
    /// Queues and their settings; `default` and `webhook` always exist.
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
            // concurrency is `webhooks.concurrency` unless set here.
            queues: BTreeMap::from([
                ("default".to_string(), QueueSettings::default()),
                ("heavy".to_string(), QueueSettings { concurrency: Some(2), max_depth: None, severity: None }),
                (Webhook::QUEUE.to_string(), QueueSettings::default()),
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
        fig = fig.merge(Env::prefixed(ENV_PREFIX).split("__").ignore(NOT_SETTINGS)).merge(Serialized::defaults(flags));
        let mut cfg: Config = fig.extract().map_err(|e| anyhow::anyhow!("invalid configuration: {}", describe(e)))?;
        cfg.queues.entry("default".into()).or_default();
        cfg.queues.entry(Webhook::QUEUE.into()).or_default();
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

    /// The attempts queue `name` runs at once in this process: its own `concurrency`;
    /// else, for the `webhook` queue, `webhooks.concurrency`; else `workers`.
    pub fn queue_concurrency(&self, name: &str) -> usize {
        match self.queues.get(name).and_then(|q| q.concurrency) {
            Some(n) => n,
            None if name == Webhook::QUEUE => self.webhooks.concurrency,
            None => self.workers,
        }
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
    /// of escalation endpoints redacted (and the webhook secrets, which never serialise as
    /// anything but `<redacted>`).
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

/// Settings that exist but are not documented for users (tests and benchmarks set them);
/// a refusal does not offer them.
const UNLISTED: &[&str] = &["exec_helper"];

/// Figment's errors, each as one line that names the setting as the user wrote it and its
/// source: `FERRY_NOSUCH` (environment), `nosuch` in FILE, or a flag.
fn describe(errors: figment::Error) -> String {
    use figment::error::Kind;
    let lines: Vec<String> = errors
        .into_iter()
        .map(|e| {
            let key = e.path.join(".");
            let file = e.metadata.as_ref().and_then(|m| m.source.as_ref()).and_then(|s| s.file_path());
            let from_env = e.metadata.as_ref().is_some_and(|m| m.name.contains("environment"));
            let name = if key.is_empty() { "the configuration".to_string() } else { format!("`{key}`") };
            let source = match file {
                Some(path) => format!(" in {}", path.display()),
                None if from_env => {
                    let var: Vec<String> = e.path.iter().map(|p| p.to_ascii_uppercase()).collect();
                    format!(" (environment variable {ENV_PREFIX}{})", var.join("__"))
                }
                None if e.metadata.is_some() => " (command-line flag)".to_string(),
                None => String::new(),
            };
            let one_of = |names: &[&str]| {
                let names: Vec<&str> = names.iter().copied().filter(|n| !UNLISTED.contains(n)).collect();
                names.join(", ")
            };
            match &e.kind {
                Kind::UnknownField(_, expected) => {
                    format!("unknown setting {name}{source}; the settings here are: {}", one_of(expected))
                }
                Kind::UnknownVariant(value, expected) => {
                    format!("{name}{source}: unknown value `{value}`; expected one of: {}", one_of(expected))
                }
                Kind::InvalidType(actual, expected) => format!("{name}{source}: expected {expected}, found {actual}"),
                Kind::InvalidValue(actual, expected) => format!("{name}{source}: expected {expected}, found {actual}"),
                Kind::Message(m) => format!("{name}{source}: {m}"),
                other => format!("{name}{source}: {}", other.to_string().replace("``", "`")),
            }
        })
        .collect();
    lines.join("; ")
}

/// `https://hooks.example/services/T0/B0/XXX` → `https://hooks.example/<redacted>`, for
/// showing a URL whose path or query may hold a credential.
pub fn redact_path(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_string() };
    match rest.find(['/', '?', '#']) {
        Some(cut) => format!("{scheme}://{}/<redacted>", &rest[..cut]),
        None => url.to_string(),
    }
}

/// `postgres://user:secret@host/db` → `postgres://user:***@host/db`, for showing a URL.
pub fn redact_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_string() };
    let Some((auth, host)) = rest.rsplit_once('@') else { return url.to_string() };
    match auth.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_string(),
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
    fn http_settings_come_from_the_http_table_and_env() {
        figment::Jail::expect_with(|jail| {
            let cfg = Config::load(None, &FlagOverrides::default()).unwrap();
            assert_eq!(cfg.http.limits(), ferry_server::listener::HttpLimits::default());
            jail.create_file("http.toml", "[http]\nheader_timeout_ms = 2000\nmax_connections = 50\n")?;
            jail.set_env("FERRY_HTTP__IDLE_TIMEOUT_MS", "5000");
            let cfg = Config::load(Some(&PathBuf::from("http.toml")), &FlagOverrides::default()).unwrap();
            let want = HttpSettings {
                header_timeout_ms: 2000,
                idle_timeout_ms: 5000,
                max_connections: 50,
                ..HttpSettings::default()
            };
            assert_eq!(cfg.http, want);
            jail.set_env("FERRY_HTTP__MAX_CONNECTIONS", "0");
            let err = Config::load(None, &FlagOverrides::default()).unwrap_err();
            assert!(err.to_string().contains("http.max_connections"), "{err}");
            jail.set_env("FERRY_HTTP__MAX_CONNECTIONS", "10");
            jail.set_env("FERRY_HTTP__BODY_TIMEOUT_MS", "0");
            let err = Config::load(None, &FlagOverrides::default()).unwrap_err();
            assert!(err.to_string().contains("http.body_timeout_ms"), "{err}");
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

    /// The Standard Webhooks test vector's secret.
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    #[test]
    fn webhook_secrets_come_from_the_file_and_env_and_are_never_shown() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("hooks.toml", &format!("[webhooks.secrets]\nbilling = \"{SECRET}\"\n"))?;
            jail.set_env("FERRY_WEBHOOKS__SECRETS__PARTNER", SECRET);
            let cfg = Config::load(Some(&PathBuf::from("hooks.toml")), &FlagOverrides::default()).unwrap();
            let names: Vec<&str> = cfg.webhooks.secrets.keys().map(String::as_str).collect();
            assert_eq!(names, ["billing", "partner"], "a nested env key adds a secret");
            let shown = cfg.show().unwrap();
            assert!(!shown.contains("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"), "{shown}");
            let shown: serde_json::Value = serde_json::from_str(&shown).unwrap();
            let redacted = serde_json::json!({"billing": "<redacted>", "partner": "<redacted>"});
            assert_eq!(shown["webhooks"]["secrets"], redacted);
            Ok(())
        });
    }

    #[test]
    fn a_bad_webhook_secret_is_refused_naming_its_key_not_its_value() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("FERRY_WEBHOOKS__SECRETS__PARTNER", "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
            let err = Config::load(None, &FlagOverrides::default()).unwrap_err().to_string();
            assert!(
                err.contains("`webhooks.secrets.partner`") && err.contains("FERRY_WEBHOOKS__SECRETS__PARTNER"),
                "{err}"
            );
            assert!(err.contains("whsec_") && !err.contains("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"), "{err}");
            jail.set_env("FERRY_WEBHOOKS__SECRETS__PARTNER", "whsec_c2hvcnQ=");
            let err = Config::load(None, &FlagOverrides::default()).unwrap_err().to_string();
            assert!(err.contains("webhooks.secrets.partner") && err.contains("at least 24"), "{err}");
            jail.set_env("FERRY_WEBHOOKS__SECRETS__PARTNER", SECRET);
            jail.create_file("bad.toml", "[webhooks.secrets]\nbilling = \"whsec_***\"\n")?;
            let err = Config::load(Some(&PathBuf::from("bad.toml")), &FlagOverrides::default()).unwrap_err();
            let err = err.to_string();
            assert!(err.contains("`webhooks.secrets.billing` in ") && err.contains("base64"), "{err}");
            assert!(!err.contains("***"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn the_webhook_queue_exists_with_its_own_concurrency() {
        figment::Jail::expect_with(|jail| {
            let cfg = Config::load(None, &FlagOverrides::default()).unwrap();
            assert!(cfg.queues.contains_key("webhook"), "built in");
            assert_eq!(cfg.queue_concurrency("webhook"), 20, "webhooks.concurrency, not workers");
            assert_eq!(cfg.queue_concurrency("default"), cfg.workers);
            assert_eq!(cfg.queue_concurrency("heavy"), 2);
            jail.set_env("FERRY_WEBHOOKS__CONCURRENCY", "7");
            let cfg = Config::load(None, &FlagOverrides::default()).unwrap();
            assert_eq!(cfg.queue_concurrency("webhook"), 7);
            jail.set_env("FERRY_QUEUES__WEBHOOK__CONCURRENCY", "50");
            let cfg = Config::load(None, &FlagOverrides::default()).unwrap();
            assert_eq!(cfg.queue_concurrency("webhook"), 50, "the queue's own setting wins");
            jail.set_env("FERRY_WEBHOOKS__CONCURRENCY", "0");
            let err = Config::load(None, &FlagOverrides::default()).unwrap_err().to_string();
            assert!(err.contains("webhooks.concurrency"), "{err}");
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

    #[test]
    fn listen_takes_an_address_or_a_host_name() {
        for ok in ["127.0.0.1:7700", "[::1]:0", "localhost:7803", "ferry-1.internal:80"] {
            assert_eq!(ok.parse::<ListenAddr>().expect(ok).to_string(), ok);
        }
        for bad in ["localhost", "localhost:http", ":7700", "local host:1", "127.0.0.1:70000"] {
            assert!(bad.parse::<ListenAddr>().is_err(), "{bad}");
        }
        figment::Jail::expect_with(|jail| {
            jail.set_env("FERRY_LISTEN", "nowhere");
            let err = Config::load(None, &FlagOverrides::default()).unwrap_err().to_string();
            assert!(err.contains("FERRY_LISTEN") && err.contains("HOST:PORT"), "{err}");
            Ok(())
        });
    }

    #[tokio::test]
    async fn localhost_resolves_to_loopback() {
        let addr = "localhost:0".parse::<ListenAddr>().unwrap().resolve().await.unwrap();
        assert!(addr.ip().is_loopback(), "{addr}");
    }
}
