//! Pins, on both backends, what API tokens are as stored: found by their hash until
//! revoked, listed per workspace oldest first (revoked ones included), revocable only in
//! their own workspace and only once, and counted while unrevoked in every workspace.

use super::{postgres, sqlite};
use ferry_core::auth::{Role, new_token, token_hash};
use ferry_store::{NewToken, Store};
use std::sync::Arc;

conformance!(tokens_are_found_by_hash_until_revoked);

fn token(workspace: &str, user: &str, role: Role) -> NewToken {
    NewToken {
        id: uuid::Uuid::now_v7(),
        workspace: workspace.into(),
        user: user.into(),
        role,
        hash: token_hash(&new_token()),
    }
}

async fn tokens_are_found_by_hash_until_revoked(store: Arc<dyn Store>) {
    let ann = token("w", "ann", Role::Admin);
    assert_eq!(store.token_by_hash(&ann.hash).await.unwrap(), None, "not stored yet");
    let a = store.create_token(ann.clone()).await.unwrap();
    assert_eq!((a.id, a.workspace.as_str(), a.user.as_str(), a.role), (ann.id, "w", "ann", Role::Admin));
    assert!(a.created_at > 0 && a.revoked_at.is_none());
    assert_eq!(store.token_by_hash(&ann.hash).await.unwrap(), Some(a.clone()), "found as created");
    assert_eq!(store.token_by_hash(&token_hash("not a token")).await.unwrap(), None);
    let bob = token("w", "bob", Role::Submitter);
    let b = store.create_token(bob.clone()).await.unwrap();
    let c = store.create_token(token("x", "cat", Role::Viewer)).await.unwrap();
    assert_eq!(store.tokens("w").await.unwrap(), vec![a.clone(), b.clone()], "the workspace's, oldest first");
    assert_eq!(store.tokens("x").await.unwrap(), vec![c]);
    assert!(store.tokens("nobody").await.unwrap().is_empty());
    assert_eq!(store.active_tokens().await.unwrap(), 3, "every workspace's");

    assert!(!store.revoke_token("x", a.id).await.unwrap(), "another workspace cannot revoke it");
    assert!(store.token_by_hash(&ann.hash).await.unwrap().is_some());
    assert!(store.revoke_token("w", a.id).await.unwrap());
    assert!(!store.revoke_token("w", a.id).await.unwrap(), "revoked once");
    assert_eq!(store.token_by_hash(&ann.hash).await.unwrap(), None, "a revoked token is not found");
    assert_eq!(store.token_by_hash(&bob.hash).await.unwrap(), Some(b.clone()), "the others still are");
    let listed = store.tokens("w").await.unwrap();
    assert_eq!(listed.len(), 2, "revoked tokens stay listed");
    assert!(listed[0].revoked_at.is_some_and(|t| t >= a.created_at), "{listed:?}");
    assert_eq!(listed[1], b);
    assert_eq!(store.active_tokens().await.unwrap(), 2);
}
