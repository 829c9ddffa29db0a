//! API tokens: who may do what.
//!
//! A token belongs to one user of one workspace and carries one role. Every request acts
//! within the token's workspace only: another workspace's objects do not exist for it.

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
    /// Also manage tokens, limits and queues.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Submitter => "submitter",
            Role::Admin => "admin",
        }
    }

    /// Whether this role may do what `needed` may.
    pub fn allows(self, needed: Role) -> bool {
        self >= needed
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "viewer" => Ok(Role::Viewer),
            "submitter" => Ok(Role::Submitter),
            "admin" => Ok(Role::Admin),
            _ => Err(format!("unknown role `{s}`: viewer, submitter or admin")),
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
        assert_ne!(token_hash("a"), token_hash("b"));
        assert_eq!(token_hash("a").len(), 64);
    }
}
