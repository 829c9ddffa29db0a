//! API tokens: who may do what.
//!
//! A token belongs to one user of one workspace and carries one role. Every request acts
//! within the token's workspace only: another workspace's objects do not exist for it.
//!
//! The roles form a ladder, each with every right of the ones below it:
//!
//! | role | may |
//! |---|---|
//! | `viewer` | read the workspace's jobs, runs, workflows, its own share of the queues, workers |
//! | `submitter` | also submit, cancel, replay and delete work, register workflows, start runs |
//! | `admin` | also manage the workspace's tokens, limits, label rates, and pause its own jobs on a queue |
//! | `operator` | also the server-wide settings of every queue (`concurrency`, `max_depth`, `rate`, `paused`) and server-wide queue counts |
//!
//! Beside the ladder, `worker` may do one thing only: serve remote kinds over the worker
//! protocol (`/v1/workers/sessions`, `docs/worker-protocol.md`). Its sessions lease the
//! jobs of every workspace on their queues, so, like `operator`, it is made only on the
//! store; an operator may do what it may.
//!
//! Queues are shared by every workspace, so only the operator of the server may change
//! them as a whole. An operator token is created only on the store itself (`ferry token
//! create --role operator`), never through the API ([`Role::issuable_through_api`]): a
//! workspace admin must not be able to mint a token that reaches beyond its workspace.
//! On loopback without any token (zero setup on a laptop) the local caller is the operator.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// What a token may do. Each role may do everything the ones before it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Read the workspace's jobs, runs, workflows, queues and workers.
    Viewer,
    /// Also submit, cancel, replay and delete work, register workflows, start runs.
    Submitter,
    /// Also manage the workspace's tokens, limits and label rates, and its own share of a
    /// queue (pause its own jobs there).
    Admin,
    /// Also the server-wide settings and counts of every queue. Only from the store.
    Operator,
    /// Off the ladder: only the worker protocol (a remote worker's sessions). Only from
    /// the store.
    Worker,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Submitter => "submitter",
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Worker => "worker",
        }
    }

    /// Whether `POST /v1/tokens` may hand out this role. An operator or worker token
    /// reaches past its workspace, so it is made only by whoever holds the store (`ferry
    /// token create`).
    pub fn issuable_through_api(self) -> bool {
        !matches!(self, Role::Operator | Role::Worker)
    }

    /// Whether this role may do what `needed` may: up the ladder, an operator everything,
    /// a worker only what needs `worker`.
    pub fn allows(self, needed: Role) -> bool {
        match (self, needed) {
            (Role::Operator, _) => true,
            (Role::Worker, needed) => needed == Role::Worker,
            (_, Role::Worker) => false,
            (me, needed) => me >= needed,
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "viewer" => Ok(Role::Viewer),
            "submitter" => Ok(Role::Submitter),
            "admin" => Ok(Role::Admin),
            "operator" => Ok(Role::Operator),
            "worker" => Ok(Role::Worker),
            _ => Err(format!("unknown role `{s}`: viewer, submitter, admin, operator or worker")),
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The prefix of every token, so that a leaked one is recognisable (secret scanners).
pub const TOKEN_PREFIX: &str = "ferry_";

/// A new token secret: the prefix and 244 random bits from the operating system's
/// generator (two version-4 UUIDs).
pub fn new_token() -> String {
    format!("{TOKEN_PREFIX}{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple())
}

/// A token's stored form: the SHA-256 of the whole secret, hex. The secret itself is
/// shown once and never stored.
pub fn token_hash(secret: &str) -> String {
    use sha2::{Digest as _, Sha256};
    format!("{:x}", Sha256::digest(secret.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_ordered() {
        assert!(Role::Admin.allows(Role::Submitter) && Role::Submitter.allows(Role::Viewer));
        assert!(!Role::Viewer.allows(Role::Submitter) && !Role::Submitter.allows(Role::Admin));
        assert_eq!("admin".parse::<Role>(), Ok(Role::Admin));
        assert!("root".parse::<Role>().is_err());
        assert!(Role::Operator.allows(Role::Admin) && !Role::Admin.allows(Role::Operator));
        assert_eq!("operator".parse::<Role>(), Ok(Role::Operator));
        assert!(!Role::Operator.issuable_through_api() && Role::Admin.issuable_through_api());
        assert_ne!(token_hash("a"), token_hash("b"));
        assert_eq!(token_hash("a").len(), 64);
    }

    #[test]
    fn a_worker_may_serve_and_nothing_else() {
        assert!(Role::Worker.allows(Role::Worker) && Role::Operator.allows(Role::Worker));
        for r in [Role::Viewer, Role::Submitter, Role::Admin] {
            assert!(!r.allows(Role::Worker), "{r} may not serve");
            assert!(!Role::Worker.allows(r), "a worker may not do what {r} may");
        }
        assert!(!Role::Worker.allows(Role::Operator));
        assert_eq!("worker".parse::<Role>(), Ok(Role::Worker));
        assert!(!Role::Worker.issuable_through_api());
    }
}
