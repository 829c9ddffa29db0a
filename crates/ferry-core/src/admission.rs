//! Concurrency limits on what a workspace and each of its users have in flight: workflow
//! runs (until they end) and standalone jobs (from admission until a final state; jobs of
//! a run count toward the run). A submission is admitted whole or refused whole; the store
//! checks it in the transaction that stores it (PostgreSQL: under a per-workspace advisory
//! lock), so concurrent submissions on any number of nodes never exceed a limit.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::ToSchema;

/// Limits on runs and on standalone jobs in flight; `null` is no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct LimitPair {
    pub runs: Option<u64>,
    pub jobs: Option<u64>,
}

/// A workspace's limits (`GET/PUT /v1/limits`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct WorkspaceLimits {
    /// The whole workspace, all users together.
    pub per_workspace: LimitPair,
    /// Each user, unless `users` names them.
    pub per_user: LimitPair,
    /// Users with their own limits, replacing `per_user` for them.
    pub users: BTreeMap<String, LimitPair>,
    /// Tokens the workspace's agents may use per UTC day, counted from the providers'
    /// `usage` (default 5,000,000; `null`: no limit). Past it, new runs with agent nodes
    /// are refused (429 `token_budget`) and running agents stop at their next step.
    pub tokens_per_day: Option<u64>,
    /// Read-only: in `GET /v1/limits`, the tokens the workspace's agents used today (UTC);
    /// ignored when set, never stored.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokens_today: Option<u64>,
}

impl Default for WorkspaceLimits {
    fn default() -> Self {
        WorkspaceLimits {
            per_workspace: LimitPair { runs: Some(10), jobs: None },
            per_user: LimitPair { runs: Some(5), jobs: None },
            users: BTreeMap::new(),
            tokens_per_day: Some(crate::agent::DEFAULT_TOKENS_PER_DAY),
            tokens_today: None,
        }
    }
}

impl WorkspaceLimits {
    /// The limits one user's submission of runs must fit in.
    pub fn runs_for(&self, user: &str) -> Admission {
        let mine = self.users.get(user).unwrap_or(&self.per_user);
        Admission { per_workspace: self.per_workspace.runs, per_user: mine.runs, ..Admission::default() }
    }

    /// The limits one user's submission of standalone jobs must fit in.
    pub fn jobs_for(&self, user: &str) -> Admission {
        let mine = self.users.get(user).unwrap_or(&self.per_user);
        Admission { per_workspace: self.per_workspace.jobs, per_user: mine.jobs, ..Admission::default() }
    }
}

/// The limits a submission must fit in.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Admission {
    pub per_workspace: Option<u64>,
    pub per_user: Option<u64>,
    /// The most jobs each named queue may hold waiting (queued, scheduled or retrying);
    /// a queue not named has no cap.
    pub queue_caps: Vec<(String, u64)>,
    /// Beyond a limit, hold the jobs (or queue the run) instead of refusing.
    pub queue_on_limit: bool,
}

impl Admission {
    /// No concurrency limit to check (queue caps aside).
    pub fn is_unlimited(&self) -> bool {
        self.per_workspace.is_none() && self.per_user.is_none()
    }

    /// Whether `adding` more fit, given what is in flight now; the refusal otherwise.
    pub fn check(
        &self,
        what: &'static str,
        user_now: u64,
        workspace_now: u64,
        adding: u64,
    ) -> Result<(), LimitReached> {
        if let Some(limit) = self.per_user
            && user_now + adding > limit
        {
            return Err(LimitReached { scope: "user", what, limit });
        }
        if let Some(limit) = self.per_workspace
            && workspace_now + adding > limit
        {
            return Err(LimitReached { scope: "workspace", what, limit });
        }
        Ok(())
    }
}

/// A submission a limit refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{scope} concurrent {what} limit reached ({limit})")]
pub struct LimitReached {
    /// `user` or `workspace`.
    pub scope: &'static str,
    /// `run` or `job`.
    pub what: &'static str,
    pub limit: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_at_their_edge() {
        let a = Admission { per_workspace: Some(10), per_user: Some(5), ..Admission::default() };
        assert!(a.check("run", 4, 4, 1).is_ok(), "the fifth fits");
        assert_eq!(a.check("run", 5, 5, 1).unwrap_err().to_string(), "user concurrent run limit reached (5)");
        assert_eq!(a.check("run", 0, 10, 1).unwrap_err().scope, "workspace");
        assert!(a.check("job", 0, 0, 6).is_err(), "a batch is admitted whole or not at all");
        assert!(Admission::default().check("job", 1_000_000, 1_000_000, 1).is_ok());
        let mut w = WorkspaceLimits::default();
        w.users.insert("bob".into(), LimitPair { runs: Some(2), jobs: Some(50) });
        assert_eq!(w.runs_for("bob").per_user, Some(2));
        assert_eq!(w.runs_for("ann").per_user, Some(5));
        assert_eq!(w.jobs_for("ann"), Admission::default());
    }
}
