//! The limits stated up front: sizes and ranges of what a request may hold (`[limits]`),
//! and the HTTP server's timeouts and connection cap (`[http]`).

use ferry_core::Limits;
use serde::{Deserialize, Serialize};

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

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment::Jail's closure type, not ours
mod tests {
    use super::*;
    use crate::config::{Config, FlagOverrides};
    use std::path::PathBuf;

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
}
