//! Who is calling: API tokens (`Authorization: Bearer …`), their roles, and the
//! zero-setup mode.
//!
//! Rules, for every path under `/v1` except the OpenAPI document:
//! - Once the store has had a token, a request needs one: 401 without, or with a token
//!   that is unknown or revoked. Revoking every token does not change that: the store
//!   stays closed ([`Store::auth_closed`]) until whoever holds the store reopens it with
//!   `ferry token reopen` (never through the API), which refuses while a token is live.
//!   Otherwise a stolen admin token could revoke every token and leave a server that
//!   anyone on the host may use as operator.
//! - Until then, a server in open mode (listening on loopback, or started with
//!   `--insecure`) serves requests as user `local` of workspace `default`, with every
//!   right, the operator's included; the server says so at start.
//! - A token acts in its own workspace only (another workspace's objects answer 404, as
//!   if they did not exist) and within its role: `viewer` reads; `submitter` also
//!   writes work; `admin` also manages tokens, limits and its workspace's share of the
//!   queues; `operator` also the queues themselves (403 otherwise; see
//!   [`ferry_core::auth`]). The handlers check what depends on the body (an operator-only
//!   field of `PUT /v1/queues/{name}`, an operator token asked of `POST /v1/tokens`).
//!
//! Tokens, and whether the store is closed, are looked up through a cache that is dropped
//! whenever tokens change: here, after the API changed them; on PostgreSQL also when
//! another process did (the store's notification), so a revocation, or a reopening, is
//! effective at once on every node.

use crate::error::ApiError;
use crate::{ApiState, Caller};
use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use ferry_core::auth::{Role, token_hash};
use ferry_store::{Store, TokenRecord};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Cached lookups kept at most; past it the cache starts over (unknown tokens are cached
/// too, so a flood of made-up ones cannot grow it without bound).
const MAX_CACHED: usize = 10_000;

#[derive(Default)]
struct Cache {
    /// [`Store::auth_closed`], as last read.
    closed: Option<bool>,
    by_hash: HashMap<String, Option<TokenRecord>>,
}

/// The token checker of one server process.
pub struct Auth {
    store: Arc<dyn Store>,
    /// Serve unauthenticated requests while no token exists.
    open: bool,
    cache: Mutex<Cache>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth").field("open", &self.open).finish_non_exhaustive()
    }
}

impl Auth {
    /// A checker; when the store reports token changes from other processes, a task
    /// drops the cache on each.
    pub fn new(store: Arc<dyn Store>, open: bool) -> Arc<Auth> {
        let auth = Arc::new(Auth { store: store.clone(), open, cache: Mutex::new(Cache::default()) });
        if let Some(mut changes) = store.token_changes() {
            let weak = Arc::downgrade(&auth);
            tokio::spawn(async move {
                loop {
                    let got = changes.recv().await;
                    let Some(auth) = weak.upgrade() else { return };
                    auth.invalidate();
                    if matches!(got, Err(tokio::sync::broadcast::error::RecvError::Closed)) {
                        return;
                    }
                }
            });
        }
        auth
    }

    /// Forgets every cached lookup.
    pub fn invalidate(&self) {
        *self.cache.lock().unwrap_or_else(|e| e.into_inner()) = Cache::default();
    }

    async fn closed(&self) -> Result<bool, ApiError> {
        if let Some(closed) = self.cache.lock().unwrap_or_else(|e| e.into_inner()).closed {
            return Ok(closed);
        }
        let closed = self.store.auth_closed().await?;
        self.cache.lock().unwrap_or_else(|e| e.into_inner()).closed = Some(closed);
        Ok(closed)
    }

    async fn lookup(&self, hash: &str) -> Result<Option<TokenRecord>, ApiError> {
        if let Some(found) = self.cache.lock().unwrap_or_else(|e| e.into_inner()).by_hash.get(hash) {
            return Ok(found.clone());
        }
        let found = self.store.token_by_hash(hash).await?;
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.by_hash.len() >= MAX_CACHED {
            cache.by_hash.clear();
        }
        cache.by_hash.insert(hash.to_string(), found.clone());
        Ok(found)
    }

    /// Whether a `/v1` request without a token is refused right now: always, unless the
    /// server is in open mode and no token exists (what [`Auth::caller`] decides).
    pub async fn token_required(&self) -> Result<bool, ApiError> {
        Ok(!self.open || self.closed().await?)
    }

    /// The caller of a request with these parts.
    async fn caller(&self, parts: &Parts) -> Result<Caller, ApiError> {
        let unauthenticated = |m: &str| ApiError::new(StatusCode::UNAUTHORIZED, "unauthenticated", m.to_string());
        match parts.headers.get(header::AUTHORIZATION) {
            Some(value) => {
                let secret = value
                    .to_str()
                    .ok()
                    .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .ok_or_else(|| unauthenticated("the Authorization header must be `Bearer <token>`"))?;
                let token = self
                    .lookup(&token_hash(secret))
                    .await?
                    .ok_or_else(|| unauthenticated("the token is unknown or revoked"))?;
                Ok(Caller { workspace: token.workspace, user: token.user, role: token.role })
            }
            None if self.open && !self.closed().await? => Ok(Caller::local()),
            None => Err(unauthenticated("a token is required: send `Authorization: Bearer <token>`")),
        }
    }
}

/// The least role a request needs (the OpenAPI document's 403s follow it too).
pub(crate) fn needed(method: &Method, path: &str) -> Role {
    if path == "/v1/workers/sessions" || path.starts_with("/v1/workers/sessions/") {
        Role::Worker
    } else if path == "/v1/breakers" || path.starts_with("/v1/breakers/") {
        Role::Operator
    } else if path.starts_with("/v1/tokens")
        || path.starts_with("/v1/limits")
        || (path.starts_with("/v1/queues/") && method != Method::GET)
    {
        Role::Admin
    } else if method == Method::GET || method == Method::HEAD {
        Role::Viewer
    } else {
        Role::Submitter
    }
}

/// Middleware: resolves the caller of every `/v1` request, checks its role, and hands
/// it to the handler (see [`Caller`]'s extractor).
pub async fn require(State(st): State<ApiState>, req: Request, next: Next) -> Result<Response, ApiError> {
    let path = req.uri().path().to_string();
    if !path.starts_with("/v1/") || path == "/v1/openapi.json" {
        return Ok(next.run(req).await);
    }
    let (mut parts, body) = req.into_parts();
    // Refusals are counted by code (`unauthenticated`, `forbidden`) with every other one.
    let caller = st.auth.caller(&parts).await?;
    let need = needed(&parts.method, &path);
    if !caller.role.allows(need) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("role {} cannot do this; it needs {need}", caller.role),
        ));
    }
    parts.extensions.insert(caller);
    Ok(next.run(Request::from_parts(parts, body)).await)
}

impl FromRequestParts<ApiState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &ApiState) -> Result<Caller, ApiError> {
        parts.extensions.get::<Caller>().cloned().ok_or_else(|| {
            ApiError::new(StatusCode::UNAUTHORIZED, "unauthenticated", "no caller was established for this request")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_needed() {
        assert_eq!(needed(&Method::GET, "/v1/jobs"), Role::Viewer);
        assert_eq!(needed(&Method::POST, "/v1/jobs"), Role::Submitter);
        assert_eq!(needed(&Method::DELETE, "/v1/jobs/x"), Role::Submitter);
        assert_eq!(needed(&Method::GET, "/v1/tokens"), Role::Admin);
        assert_eq!(needed(&Method::PUT, "/v1/queues/default"), Role::Admin);
        assert_eq!(needed(&Method::GET, "/v1/queues"), Role::Viewer);
        assert_eq!(needed(&Method::GET, "/v1/workers"), Role::Viewer);
        assert_eq!(needed(&Method::POST, "/v1/workers/sessions"), Role::Worker);
        assert_eq!(needed(&Method::POST, "/v1/workers/sessions/s/lease"), Role::Worker);
    }
}
