//! Pins, on both backends, what admits and paces work: racing submissions admit exactly a
//! workspace's limit, a queue's rate is one bucket for every claimer, a label's rate holds
//! per value and per workspace, and a parked claim leases new work in the transaction
//! that submits it.

use super::*;

conformance!(
    fifty_racing_submits_admit_exactly_the_limit,
    a_queue_rate_is_one_bucket_for_every_claimer,
    label_rates_hold_per_value_and_per_workspace,
    a_parked_claim_leases_new_work_in_the_submitting_transaction,
);

async fn fifty_racing_submits_admit_exactly_the_limit(store: Arc<dyn Store>) {
    use ferry_store::{Admission, StoreError};
    let by = |user: &str| {
        let mut j = job(None, 0);
        j.user = user.into();
        j
    };
    let limit = Admission { per_workspace: Some(8), per_user: Some(5), ..Admission::default() };
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let (store, j) = (store.clone(), by("ann"));
        let limit = limit.clone();
        tasks.push(tokio::spawn(async move { store.submit_admitted(vec![j], limit).await }));
    }
    let (mut admitted, mut refused) = (0, 0);
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => admitted += 1,
            Err(StoreError::LimitReached(l)) => {
                assert_eq!(l.to_string(), "user concurrent job limit reached (5)");
                refused += 1;
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!((admitted, refused), (5, 45), "exactly the user's limit");
    // The workspace's limit holds across users; a batch is whole or nothing.
    let batch = |n: usize| (0..n).map(|_| by("bob")).collect::<Vec<_>>();
    assert!(
        matches!(store.submit_admitted(batch(4), limit.clone()).await, Err(StoreError::LimitReached(l)) if l.scope == "workspace")
    );
    assert_eq!(store.submit_admitted(batch(3), limit.clone()).await.unwrap().len(), 3);
    assert_eq!(store.queue_stats().await.unwrap()[0].queued, 8, "nothing of the refused batch was written");
    // A finished job frees its slot.
    let claimed = store.claim(claim_req("w", 1)).await.unwrap().jobs;
    store.finish(succeed(claimed[0].id, claimed[0].attempt)).await.unwrap();
    assert_eq!(
        store.submit_admitted(vec![by(&claimed_user(&store, claimed[0].id).await)], limit.clone()).await.unwrap().len(),
        1
    );
    assert!(store.submit_admitted(vec![by("cat")], limit).await.is_err(), "the workspace is full again");
    // Jobs of a run and unlimited submissions are not held back.
    assert!(store.submit_admitted(vec![by("cat")], Admission::default()).await.is_ok());
}

async fn a_queue_rate_is_one_bucket_for_every_claimer(store: Arc<dyn Store>) {
    let rated = QueueSettings { name: "default".into(), rate: Some(5.0), ..Default::default() };
    store.set_queue_settings(rated).await.unwrap();
    store.submit((0..30).map(|i| job(None, i)).collect()).await.unwrap();
    // Three claimers at once share one bucket: its burst (5) in all, not 5 each.
    let tasks: Vec<_> = (0..3)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move { store.claim(claim_req(&format!("w{w}"), 30)).await.unwrap() })
        })
        .collect();
    let mut claims = Vec::new();
    for t in tasks {
        claims.push(t.await.unwrap());
    }
    let got: usize = claims.iter().map(|c| c.jobs.len()).sum();
    assert_eq!(got, 5, "a burst of one second's worth, across claimers");
    // A claimer that saw work it could not take is told when a token is back (on
    // PostgreSQL another may have seen none: the first one had locked the candidates).
    let waits: Vec<u64> = claims.iter().filter_map(|c| c.rate_wait_ms).collect();
    assert!(!waits.is_empty() && waits.iter().all(|w| (1..=200).contains(w)), "a token every 200 ms: {waits:?}");
    let again = store.claim(claim_req("w0", 30)).await.unwrap();
    assert!(again.jobs.is_empty() && again.rate_wait_ms.is_some(), "the bucket is empty");
    tokio::time::sleep(std::time::Duration::from_millis(450)).await;
    let later = store.claim(claim_req("w0", 30)).await.unwrap();
    assert!((2..=5).contains(&later.jobs.len()), "450 ms refill 2.25 tokens: {}", later.jobs.len());
    // Without the rate, everything left goes at once.
    store.set_queue_settings(QueueSettings { name: "default".into(), ..Default::default() }).await.unwrap();
    let rest = store.claim(claim_req("w0", 30)).await.unwrap();
    assert_eq!((rest.jobs.len(), rest.rate_wait_ms), (30 - 5 - later.jobs.len(), None));
}

async fn a_parked_claim_leases_new_work_in_the_submitting_transaction(store: Arc<dyn Store>) {
    let within = std::time::Duration::from_secs(30);
    // Work for another queue leaves the claim parked: withdrawn, it leased nothing.
    let parked = store.park(claim_req("idle", 2)).expect("both backends park claims");
    let elsewhere = spec(JobSpec { queue: Some("other".into()), ..noop() });
    store.submit(vec![elsewhere.clone()]).await.unwrap();
    assert!(parked.withdraw().await.is_none(), "no work came for its queue");
    let other = ClaimRequest { queue: "other".into(), ..claim_req("w", 5) };
    assert_eq!(store.claim(other).await.unwrap().jobs.len(), 1, "the other queue's job was left queued");

    // The submission that brings work leases it, in priority order, up to the claim's limit.
    let mut parked = store.park(claim_req("idle", 2)).unwrap();
    let (low, high, mid) = (job(None, 1), job(None, 9), job(None, 5));
    store.submit(vec![low.clone(), high.clone(), mid.clone()]).await.unwrap();
    let got = tokio::time::timeout(within, parked.delivered()).await.expect("delivered");
    assert_eq!(got.jobs.iter().map(|j| j.id).collect::<Vec<_>>(), vec![high.id, mid.id]);
    assert!(got.jobs.iter().all(|j| j.attempt == 1 && j.worker.as_deref() == Some("idle")));
    let rec = store.get_job("default", high.id).await.unwrap().unwrap();
    assert_eq!(rec.state, JobState::Running);
    assert_eq!(rec.attempts.len(), 1);
    assert_eq!(rec.attempts[0].worker, "idle");
    assert!(rec.attempts[0].started_at >= rec.created_at);
    assert!(store.finish(succeed(high.id, 1)).await.unwrap(), "the lease is an ordinary one");
    let rest = store.claim(claim_req("w", 5)).await.unwrap().jobs;
    assert_eq!(rest.iter().map(|j| j.id).collect::<Vec<_>>(), vec![low.id], "the third stayed queued");

    // A rated queue's claim is left parked: its dispatcher claims through the rated path.
    let rated = QueueSettings { name: "default".into(), rate: Some(5.0), ..Default::default() };
    store.set_queue_settings(rated).await.unwrap();
    let parked = store.park(claim_req("idle", 2)).unwrap();
    store.submit(vec![job(None, 0)]).await.unwrap();
    assert!(parked.withdraw().await.is_none(), "not taken under a rate");
    let rated = store.claim(claim_req("w", 5)).await.unwrap().jobs;
    assert_eq!(rated.iter().map(|j| j.user.as_str()).collect::<Vec<_>>(), ["test"], "the rated claim's columns too");
}

fn labelled(workspace: &str, labels: &[(&str, &str)]) -> NewJob {
    let labels = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    JobSpec { labels: Some(labels), ..noop() }
        .validate(workspace, "test", time::now_micros(), &Limits::default())
        .unwrap()
}

async fn label_rates_hold_per_value_and_per_workspace(store: Arc<dyn Store>) {
    assert!(!store.set_label_rate("default", "api", Some(2.0)).await.unwrap(), "no rate before");
    assert_eq!(store.label_rates("default").await.unwrap(), vec![LabelRate { label: "api".into(), rate: 2.0 }]);
    assert!(store.label_rates("other").await.unwrap().is_empty(), "rates belong to their workspace");
    let mut jobs = Vec::new();
    for _ in 0..4 {
        jobs.push(labelled("default", &[("api", "a")]));
        jobs.push(labelled("default", &[("api", "b"), ("team", "x")]));
        jobs.push(labelled("default", &[("team", "x")]));
        jobs.push(labelled("other", &[("api", "a")]));
    }
    store.submit(jobs).await.unwrap();
    let first = store.claim(claim_req("w", 100)).await.unwrap();
    let mut by = std::collections::BTreeMap::new();
    for j in &first.jobs {
        let rec = store.get_job(&j.workspace, j.id).await.unwrap().unwrap();
        let key = format!("{}:{}", rec.workspace, rec.labels.get("api").map_or("-", String::as_str));
        *by.entry(key).or_insert(0) += 1;
    }
    let want: std::collections::BTreeMap<String, i32> =
        [("default:a", 2), ("default:b", 2), ("default:-", 4), ("other:a", 4)].map(|(k, n)| (k.to_string(), n)).into();
    assert_eq!(by, want, "two per label value; unlabelled and other workspaces' jobs are not held back");
    assert!(first.rate_wait_ms.is_some());
    // Held back jobs keep their place and go once the rate is gone.
    assert!(store.set_label_rate("default", "api", None).await.unwrap(), "it had a rate");
    let rest = store.claim(claim_req("w", 100)).await.unwrap();
    assert_eq!((rest.jobs.len(), rest.rate_wait_ms), (4, None));
}

async fn claimed_user(store: &Arc<dyn Store>, id: JobId) -> String {
    store.get_job("default", id).await.unwrap().unwrap().user
}
