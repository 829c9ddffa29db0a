//! API tokens as stored (see [`ferry_core::auth`]): only their hashes.

use crate::row::Columns;
use ferry_core::auth::Role;
use ferry_core::time::Micros;
use uuid::Uuid;

/// A token to store.
#[derive(Debug, Clone)]
pub struct NewToken {
    pub id: Uuid,
    pub workspace: String,
    pub user: String,
    pub role: Role,
    /// [`ferry_core::auth::token_hash`] of the secret.
    pub hash: String,
}

/// A stored token (never its secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    pub id: Uuid,
    pub workspace: String,
    pub user: String,
    pub role: Role,
    pub created_at: Micros,
    pub revoked_at: Option<Micros>,
}

/// `TOKEN_COLUMNS`: id, workspace, user_id, role, created_at, revoked_at.
pub(crate) const TOKEN_COLUMNS: &str = "id, workspace, user_id, role, created_at, revoked_at";

pub(crate) fn token_row<R: Columns>(r: &R) -> Result<TokenRecord, R::Error> {
    Ok(TokenRecord {
        id: r.uuid(0)?,
        workspace: r.text(1)?,
        user: r.text(2)?,
        role: r.parsed(3)?,
        created_at: r.int(4)?,
        revoked_at: r.opt_int(5)?,
    })
}
