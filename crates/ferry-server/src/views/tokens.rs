//! Tokens: what `/v1/tokens` takes and answers (a token's secret only once).

use chrono::{DateTime, Utc};
use ferry_core::auth::Role;
use ferry_core::time::to_datetime;
use ferry_store::TokenRecord;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

/// Create a token for a user of the caller's workspace.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    pub user: String,
    pub role: Role,
}

/// A token, without its secret.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TokenView {
    pub id: Uuid,
    pub workspace: String,
    pub user: String,
    pub role: Role,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
    /// The secret: in the creation's answer only, never again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

impl From<TokenRecord> for TokenView {
    fn from(t: TokenRecord) -> Self {
        TokenView {
            id: t.id,
            workspace: t.workspace,
            user: t.user,
            role: t.role,
            created_at: to_datetime(t.created_at),
            revoked_at: t.revoked_at.map(to_datetime),
            token: None,
        }
    }
}

/// The workspace's tokens.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TokenList {
    pub tokens: Vec<TokenView>,
}
