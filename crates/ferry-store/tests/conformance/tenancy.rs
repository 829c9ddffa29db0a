//! Pins, on both backends, what keeps workspaces apart on shared queues and keeps a
//! store closed: a workspace's paused share holds back its own jobs only, for plain,
//! rated and parked claims alike (and a paused queue everyone's), and its counts are its
//! own; a store that has had a
//! token stays closed when every token is revoked, until `reopen`, which refuses while
//! an unrevoked token exists.

use super::{claim_req, noop, postgres, sqlite, succeed};
use ferry_core::auth::{Role, token_hash};
use ferry_core::time;
use ferry_core::{JobSpec, Limits, NewJob};
use ferry_store::{NewToken, QueueSettings, QueueShare, ReopenOutcome, Store};
use std::sync::Arc;

conformance!(
    a_paused_share_holds_back_only_its_workspace_jobs,
    a_paused_share_holds_back_parked_and_rated_claims,
    a_share_rate_holds_only_its_workspace_on_its_queue,
    workspace_counts_are_the_workspace_own,
    a_store_that_had_a_token_stays_closed_until_reopened,
);

fn of(workspace: &str) -> NewJob {
    noop().validate(workspace, "test", time::now_micros(), &Limits::default()).unwrap()
}

fn share(workspace: &str, paused: bool) -> QueueShare {
    QueueShare { queue: "default".into(), workspace: workspace.into(), paused, rate: None }
}

async fn a_paused_share_holds_back_only_its_workspace_jobs(store: Arc<dyn Store>) {
    store.set_queue_share(share("b", true)).await.unwrap();
    // B's jobs first in claim order: a claim must pass over them to A's.
    let b: Vec<NewJob> = (0..3).map(|_| of("b")).collect();
    let a: Vec<NewJob> = (0..2).map(|_| of("a")).collect();
    store.submit(b.clone()).await.unwrap();
    store.submit(a.clone()).await.unwrap();
    let got = store.claim(claim_req("w", 10)).await.unwrap().jobs;
    assert_eq!(got.iter().map(|j| j.id).collect::<Vec<_>>(), a.iter().map(|j| j.id).collect::<Vec<_>>());
    assert_eq!(store.queue_shares("b").await.unwrap(), vec![share("b", true)]);
    assert!(store.queue_shares("a").await.unwrap().is_empty(), "A set nothing");
    // Another queue of B is not paused.
    let elsewhere = JobSpec { queue: Some("other".into()), ..noop() }
        .validate("b", "test", time::now_micros(), &Limits::default())
        .unwrap();
    store.submit(vec![elsewhere.clone()]).await.unwrap();
    let other = ferry_store::ClaimRequest { queue: "other".into(), ..claim_req("w", 5) };
    assert_eq!(store.claim(other).await.unwrap().jobs.len(), 1);
    // Resumed, B's jobs go, in their order.
    store.set_queue_share(share("b", false)).await.unwrap();
    let got = store.claim(claim_req("w", 10)).await.unwrap().jobs;
    assert_eq!(got.iter().map(|j| j.id).collect::<Vec<_>>(), b.iter().map(|j| j.id).collect::<Vec<_>>());
}

async fn a_share_rate_holds_only_its_workspace_on_its_queue(store: Arc<dyn Store>) {
    let rated = QueueShare { rate: Some(2.0), ..share("b", false) };
    store.set_queue_share(rated.clone()).await.unwrap();
    assert_eq!(store.queue_shares("b").await.unwrap(), vec![rated]);
    // A parked claim is not served under a rate: the submission leaves it parked.
    let parked = store.park(claim_req("idle", 10)).expect("both backends park claims");
    // B's jobs first in claim order: a claim must pass over the held ones to A's.
    let b: Vec<NewJob> = (0..6).map(|_| of("b")).collect();
    let a: Vec<NewJob> = (0..3).map(|_| of("a")).collect();
    store.submit(b.clone()).await.unwrap();
    store.submit(a.clone()).await.unwrap();
    assert!(parked.withdraw().await.is_none(), "not taken under a rate");
    let first = store.claim(claim_req("w", 100)).await.unwrap();
    let ids: Vec<_> = first.jobs.iter().map(|j| j.id).collect();
    let want: Vec<_> = b[..2].iter().chain(a.iter()).map(|j| j.id).collect();
    assert_eq!(ids, want, "B's burst of two, then every job of A, in claim order");
    assert!(first.rate_wait_ms.is_some_and(|w| (1..=500).contains(&w)), "a token every 500 ms: {first:?}");
    // B's jobs on another queue are not held.
    let elsewhere: Vec<NewJob> = (0..4)
        .map(|_| {
            JobSpec { queue: Some("other".into()), ..noop() }
                .validate("b", "test", time::now_micros(), &Limits::default())
                .unwrap()
        })
        .collect();
    store.submit(elsewhere).await.unwrap();
    let other = ferry_store::ClaimRequest { queue: "other".into(), ..claim_req("w", 10) };
    let got = store.claim(other).await.unwrap();
    assert_eq!((got.jobs.len(), got.rate_wait_ms), (4, None));
    // The rate removed, the rest of B's jobs go at once, in their order.
    store.set_queue_share(share("b", false)).await.unwrap();
    let rest = store.claim(claim_req("w", 100)).await.unwrap();
    assert_eq!(rest.jobs.iter().map(|j| j.id).collect::<Vec<_>>(), b[2..].iter().map(|j| j.id).collect::<Vec<_>>());
    assert_eq!(rest.rate_wait_ms, None);
}

async fn a_paused_share_holds_back_parked_and_rated_claims(store: Arc<dyn Store>) {
    let within = std::time::Duration::from_secs(30);
    store.set_queue_share(share("b", true)).await.unwrap();
    // A parked claim taken by B's submission leases none of B's jobs.
    let parked = store.park(claim_req("idle", 2)).expect("both backends park claims");
    store.submit(vec![of("b")]).await.unwrap();
    if let Some(got) = tokio::time::timeout(within, parked.withdraw()).await.expect("withdrawn") {
        assert!(got.jobs.is_empty(), "a parked claim leased a paused workspace's job");
    }
    // ... and still leases A's.
    let mut parked = store.park(claim_req("idle", 2)).unwrap();
    let a = of("a");
    store.submit(vec![a.clone()]).await.unwrap();
    let got = tokio::time::timeout(within, parked.delivered()).await.expect("delivered");
    assert_eq!(got.jobs.iter().map(|j| j.id).collect::<Vec<_>>(), vec![a.id]);
    assert!(store.finish(succeed(a.id, 1)).await.unwrap());
    // Under a queue rate, the rated path skips B's jobs too.
    let rated = QueueSettings { name: "default".into(), rate: Some(1000.0), ..Default::default() };
    store.set_queue_settings(rated).await.unwrap();
    let a = of("a");
    store.submit(vec![a.clone()]).await.unwrap();
    let got = store.claim(claim_req("w", 10)).await.unwrap().jobs;
    assert_eq!(got.iter().map(|j| j.id).collect::<Vec<_>>(), vec![a.id]);
    store.set_queue_share(share("b", false)).await.unwrap();
    assert_eq!(store.claim(claim_req("w", 10)).await.unwrap().jobs.len(), 1, "B's job, once resumed");
    // The operator's pause of the whole queue holds for plain and parked claims at once.
    let paused = QueueSettings { name: "default".into(), paused: true, ..Default::default() };
    store.set_queue_settings(paused).await.unwrap();
    let parked = store.park(claim_req("idle", 2)).unwrap();
    let a = of("a");
    store.submit(vec![a.clone()]).await.unwrap();
    if let Some(got) = tokio::time::timeout(within, parked.withdraw()).await.expect("withdrawn") {
        assert!(got.jobs.is_empty(), "a parked claim leased a job of a paused queue");
    }
    assert!(store.claim(claim_req("w", 10)).await.unwrap().jobs.is_empty(), "a paused queue's job was claimed");
    store.set_queue_settings(QueueSettings { name: "default".into(), ..Default::default() }).await.unwrap();
    assert_eq!(store.claim(claim_req("w", 10)).await.unwrap().jobs.len(), 1);
}

async fn workspace_counts_are_the_workspace_own(store: Arc<dyn Store>) {
    store.submit((0..3).map(|_| of("a")).collect()).await.unwrap();
    store.submit((0..2).map(|_| of("b")).collect()).await.unwrap();
    store.set_queue_share(share("b", true)).await.unwrap();
    assert_eq!(store.claim(claim_req("w", 1)).await.unwrap().jobs.len(), 1);
    let a = store.workspace_queue_stats("a").await.unwrap();
    assert_eq!(a.len(), 1);
    assert_eq!((a[0].queue.as_str(), a[0].queued, a[0].running), ("default", 2, 1));
    let b = store.workspace_queue_stats("b").await.unwrap();
    assert_eq!((b[0].queued, b[0].running), (2, 0));
    assert!(store.workspace_queue_stats("c").await.unwrap().is_empty());
    let all = store.queue_stats().await.unwrap();
    assert_eq!((all[0].queued, all[0].running), (4, 1), "server-wide counts are everyone's");
}

async fn a_store_that_had_a_token_stays_closed_until_reopened(store: Arc<dyn Store>) {
    assert!(!store.auth_closed().await.unwrap(), "a new store is open");
    assert_eq!(store.reopen().await.unwrap(), ReopenOutcome::AlreadyOpen);
    let token = |role| NewToken {
        id: uuid::Uuid::now_v7(),
        workspace: "w".into(),
        user: "u".into(),
        role,
        hash: token_hash(&ferry_core::auth::new_token()),
    };
    let mut changes = store.token_changes().expect("both backends signal token changes");
    let first = store.create_token(token(Role::Admin)).await.unwrap();
    assert!(store.auth_closed().await.unwrap());
    let second = store.create_token(token(Role::Operator)).await.unwrap();
    assert_eq!(store.tokens("w").await.unwrap()[1].role, Role::Operator, "the role is stored");
    assert!(store.revoke_token("w", first.id).await.unwrap());
    assert_eq!(store.reopen().await.unwrap(), ReopenOutcome::TokensRemain(1), "refused while a token is live");
    assert!(store.auth_closed().await.unwrap());
    assert!(store.revoke_token("w", second.id).await.unwrap());
    assert_eq!(store.active_tokens().await.unwrap(), 0);
    assert!(store.auth_closed().await.unwrap(), "revoking every token does not reopen the store");
    while changes.try_recv().is_ok() {}
    assert_eq!(store.reopen().await.unwrap(), ReopenOutcome::Reopened);
    assert!(!store.auth_closed().await.unwrap());
    let signalled = tokio::time::timeout(std::time::Duration::from_secs(30), changes.recv()).await;
    assert!(signalled.is_ok(), "a reopen drops the token caches");
    store.create_token(token(Role::Viewer)).await.unwrap();
    assert!(store.auth_closed().await.unwrap(), "a new token closes it again");
}
