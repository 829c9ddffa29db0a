//! Queues: each one's settings, and how many attempts a process runs at once on each.

use super::Config;
use ferry_worker::kinds::{Llm, Webhook, Workflow};
use serde::{Deserialize, Serialize};

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

impl Config {
    /// The attempts queue `name` runs at once in this process: its own `concurrency`;
    /// else, for the `webhook` queue, `webhooks.concurrency`, for the `llm` queue,
    /// `llm.concurrency`, and for the `runs` queue 100 (its attempts wait for whole runs);
    /// else `workers`.
    pub fn queue_concurrency(&self, name: &str) -> usize {
        match self.queues.get(name).and_then(|q| q.concurrency) {
            Some(n) => n,
            None if name == Webhook::QUEUE => self.webhooks.concurrency,
            None if name == Llm::QUEUE => self.llm.concurrency,
            None if name == Workflow::QUEUE => Workflow::CONCURRENCY,
            None => self.workers,
        }
    }
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment::Jail's closure type, not ours
mod tests {
    use crate::config::{Config, FlagOverrides};

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
    fn the_llm_queue_exists_with_its_own_concurrency() {
        figment::Jail::expect_with(|jail| {
            let cfg = Config::load(None, &FlagOverrides::default()).unwrap();
            assert!(cfg.queues.contains_key("llm"), "built in");
            assert_eq!(cfg.queue_concurrency("llm"), 100, "llm.concurrency, not workers");
            jail.set_env("FERRY_LLM__CONCURRENCY", "7");
            let cfg = Config::load(None, &FlagOverrides::default()).unwrap();
            assert_eq!(cfg.queue_concurrency("llm"), 7);
            jail.set_env("FERRY_QUEUES__LLM__CONCURRENCY", "50");
            let cfg = Config::load(None, &FlagOverrides::default()).unwrap();
            assert_eq!(cfg.queue_concurrency("llm"), 50, "the queue's own setting wins");
            jail.set_env("FERRY_LLM__CONCURRENCY", "0");
            let err = Config::load(None, &FlagOverrides::default()).unwrap_err().to_string();
            assert!(err.contains("llm.concurrency"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn the_runs_queue_exists_with_its_own_concurrency() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("few.toml", "[queues.heavy]\nconcurrency = 1\n")?;
            let cfg = Config::load(Some(&"few.toml".into()), &FlagOverrides::default()).unwrap();
            assert!(cfg.queues.contains_key("runs"), "built in");
            assert_eq!(cfg.queue_concurrency("runs"), 100, "not workers: a waiting attempt holds its slot");
            jail.set_env("FERRY_QUEUES__RUNS__CONCURRENCY", "7");
            let cfg = Config::load(None, &FlagOverrides::default()).unwrap();
            assert_eq!(cfg.queue_concurrency("runs"), 7, "the queue's own setting wins");
            Ok(())
        });
    }
}
