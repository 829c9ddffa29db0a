//! `/v1/tokens`: an admin creates, lists and revokes its workspace's API tokens.
//!
//! An `operator` token is never made here: it reaches past its workspace (the queues of
//! every workspace), so it comes only from whoever holds the store (`ferry token create
//! --role operator`). For the same reason only an operator may revoke one: a workspace
//! admin must not be able to take the server's operator away.

use crate::error::{ApiError, ErrorBody};
use crate::extract::{JsonBody, Path};
use crate::views::{TokenList, TokenRequest, TokenView};
use crate::{ApiState, Caller};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use ferry_core::auth::{Role, new_token, token_hash};
use ferry_store::NewToken;
use uuid::Uuid;

fn forbidden_role(message: &str) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "forbidden", message.to_string()).field("role")
}

fn check_user(user: &str) -> Result<(), ApiError> {
    let ok =
        !user.is_empty() && user.len() <= 64 && user.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.@".contains(&b));
    if ok { Ok(()) } else { Err(ApiError::bad_field("user", "must be 1 to 64 letters, digits, `_`, `-`, `.` or `@`")) }
}

/// Create a token (admin) with role `viewer`, `submitter` or `admin`; `operator` is
/// refused (403): operator tokens come only from `ferry token create` on the store. The
/// answer holds the secret, shown this once.
#[utoipa::path(
    post, path = "/v1/tokens", tag = "tokens", operation_id = "createToken",
    request_body = TokenRequest,
    responses((status = 201, body = TokenView), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody))
)]
pub async fn create(
    State(st): State<ApiState>,
    caller: Caller,
    JsonBody(req): JsonBody<TokenRequest>,
) -> Result<(StatusCode, Json<TokenView>), ApiError> {
    check_user(&req.user)?;
    if !req.role.issuable_through_api() {
        return Err(forbidden_role(&format!(
            "a{} {} token is created only on the store: `ferry token create --role {}`",
            if req.role == ferry_core::auth::Role::Operator { "n" } else { "" },
            req.role,
            req.role
        )));
    }
    let secret = new_token();
    let record = st
        .store
        .create_token(NewToken {
            id: Uuid::now_v7(),
            workspace: caller.workspace.clone(),
            user: req.user,
            role: req.role,
            hash: token_hash(&secret),
        })
        .await?;
    st.auth.invalidate();
    Ok((StatusCode::CREATED, Json(TokenView { token: Some(secret), ..TokenView::from(record) })))
}

/// The workspace's tokens, revoked ones included (admin).
#[utoipa::path(
    get, path = "/v1/tokens", tag = "tokens", operation_id = "listTokens",
    responses((status = 200, body = TokenList))
)]
pub async fn list(State(st): State<ApiState>, caller: Caller) -> Result<Json<TokenList>, ApiError> {
    let tokens = st.store.tokens(&caller.workspace).await?;
    Ok(Json(TokenList { tokens: tokens.into_iter().map(TokenView::from).collect() }))
}

/// Revoke a token (admin; an operator token: operator only): refused from the next
/// request on, on every node. Revoking the last token does not reopen the server.
#[utoipa::path(
    delete, path = "/v1/tokens/{id}", tag = "tokens", operation_id = "revokeToken",
    params(("id" = uuid::Uuid, Path, description = "Token id")),
    responses((status = 204), (status = 404, body = ErrorBody))
)]
pub async fn revoke(
    State(st): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = Uuid::parse_str(&id).map_err(|_| ApiError::bad_field("id", format!("`{id}` is not a token id")))?;
    if !caller.is_operator() {
        let tokens = st.store.tokens(&caller.workspace).await?;
        if tokens.iter().any(|t| t.id == id && t.role == Role::Operator && t.revoked_at.is_none()) {
            return Err(forbidden_role("only an operator may revoke an operator token"));
        }
    }
    if !st.store.revoke_token(&caller.workspace, id).await? {
        return Err(ApiError::not_found("token"));
    }
    st.auth.invalidate();
    Ok(StatusCode::NO_CONTENT)
}
