//! Pins, on both backends, what waits for a slot and what the logs say of it: jobs held
//! by `on_limit: "queue"` log `held` (in batch order, like any submission's first events)
//! and are released oldest first within the limits their workspace set, or the defaults
//! given; runs queued the same way start when a slot frees; a replay logs `replayed`, then
//! `queued`; and a workspace's limits, the queues' settings and the workflow list read
//! back as they were set.

use super::*;
use ferry_store::{Admission, LimitPair, NewRun, WorkspaceLimits};

conformance!(
    held_and_replayed_jobs_log_their_transitions,
    held_jobs_are_released_oldest_first_within_their_limits,
    queued_runs_start_when_a_slot_frees,
    limits_settings_and_workflows_read_back_as_set,
);

fn by(workspace: &str, user: &str) -> NewJob {
    let mut j = job(None, 0);
    (j.workspace, j.user) = (workspace.into(), user.into());
    j
}

fn types_and_data(events: &[ferry_store::Event]) -> Vec<(&str, &serde_json::Value)> {
    events.iter().map(|e| (e.event_type.as_str(), &e.data)).collect()
}

async fn held_and_replayed_jobs_log_their_transitions(store: Arc<dyn Store>) {
    let hold = Admission { per_user: Some(0), queue_on_limit: true, ..Admission::default() };
    let mut batch: Vec<NewJob> = (0..20).map(|_| job(None, 0)).collect();
    let later = spec(JobSpec { delay_ms: Some(60_000), ..noop() });
    batch.push(later.clone());
    let out = store.submit_admitted(batch.clone(), hold).await.unwrap();
    assert!(out.iter().all(|s| s.state == JobState::Held && s.created), "{out:?}");
    let held = json!({"queue": "default", "reason": "user concurrent job limit reached (0)"});
    let mut firsts = Vec::new();
    for j in &batch {
        let events = store.job_events("default", j.id).await.unwrap().unwrap();
        assert_eq!(types_and_data(&events), vec![("held", &held)]);
        firsts.push(events[0].id);
    }
    assert!(firsts.windows(2).all(|w| w[0] < w[1]), "held events are logged in batch order: {firsts:?}");

    // Released (the defaults given limit no job): queued, or scheduled with its time.
    assert_eq!(store.release_held_jobs(WorkspaceLimits::default()).await.unwrap(), 21);
    let mut seconds = Vec::new();
    for j in &batch[..20] {
        let events = store.job_events("default", j.id).await.unwrap().unwrap();
        assert_eq!(types_and_data(&events), vec![("held", &held), ("queued", &json!({"queue": "default"}))]);
        seconds.push(events[1].id);
    }
    assert!(seconds.windows(2).all(|w| w[0] < w[1]), "released oldest first: {seconds:?}");
    let rec = store.get_job("default", later.id).await.unwrap().unwrap();
    assert_eq!(rec.state, JobState::Scheduled);
    let events = store.job_events("default", later.id).await.unwrap().unwrap();
    let due = json!({"queue": "default", "run_at": time::to_datetime(rec.run_at)});
    assert_eq!(types_and_data(&events), vec![("held", &held), ("scheduled", &due)]);

    // A replay: `replayed` with what the job was, then `queued`.
    let c = store.claim(claim_req("w", 1)).await.unwrap().jobs.remove(0);
    let no = JobError::new(ErrorType::Validation, "no");
    let dead = FinishResult::Dead { error: no.clone(), attempt_error: no, output: None };
    assert!(store.finish(end(c.id, c.attempt, dead)).await.unwrap());
    assert_eq!(store.replay("default", c.id).await.unwrap(), ReplayOutcome::Replayed);
    let cancelled = &batch[19];
    store.cancel("default", cancelled.id).await.unwrap();
    assert_eq!(store.replay("default", cancelled.id).await.unwrap(), ReplayOutcome::Replayed);
    for (id, was) in [(c.id, "dead"), (cancelled.id, "cancelled")] {
        let events = store.job_events("default", id).await.unwrap().unwrap();
        let tail = types_and_data(&events[events.len() - 2..]);
        assert_eq!(tail, vec![("replayed", &json!({"was": was})), ("queued", &json!({"queue": "default"}))]);
    }
    assert_eq!(store.get_job("default", c.id).await.unwrap().unwrap().state, JobState::Queued);
}

async fn held_jobs_are_released_oldest_first_within_their_limits(store: Arc<dyn Store>) {
    let limits = WorkspaceLimits {
        per_workspace: LimitPair { runs: None, jobs: Some(3) },
        per_user: LimitPair { runs: None, jobs: Some(2) },
        users: Default::default(),
        tokens_per_day: None,
        tokens_today: None,
    };
    store.set_workspace_limits("default", limits.clone()).await.unwrap();
    let admit = |user: &str| Admission { queue_on_limit: true, ..limits.jobs_for(user) };
    let ann = [by("default", "ann"), by("default", "ann")];
    store.submit_admitted(ann.to_vec(), admit("ann")).await.unwrap();
    let waiting = [by("default", "ann"), by("default", "ann")];
    for j in &waiting {
        assert_eq!(store.submit_admitted(vec![j.clone()], admit("ann")).await.unwrap()[0].state, JobState::Held);
    }
    // Bob is within his limits, but held behind the workspace's held jobs.
    let bob = by("default", "bob");
    assert_eq!(store.submit_admitted(vec![bob.clone()], admit("bob")).await.unwrap()[0].state, JobState::Held);
    let state = |id| {
        let store = store.clone();
        async move { store.get_job("default", id).await.unwrap().unwrap().state }
    };
    // The workspace's own limits apply, not the defaults given: Ann's are full, Bob's not.
    let generous = WorkspaceLimits { per_user: LimitPair { runs: None, jobs: Some(100) }, ..Default::default() };
    assert_eq!(store.release_held_jobs(generous.clone()).await.unwrap(), 1);
    assert_eq!(state(bob.id).await, JobState::Queued, "a user's full limit holds back only that user");
    assert_eq!((state(waiting[0].id).await, state(waiting[1].id).await), (JobState::Held, JobState::Held));
    assert_eq!(store.release_held_jobs(generous.clone()).await.unwrap(), 0, "the workspace is full (3 of 3)");
    // A slot frees: Ann's oldest held job takes it.
    let c = store.claim(claim_req("w", 1)).await.unwrap().jobs.remove(0);
    assert_eq!(c.id, ann[0].id);
    assert!(store.finish(succeed(c.id, c.attempt)).await.unwrap());
    assert_eq!(store.release_held_jobs(generous.clone()).await.unwrap(), 1);
    assert_eq!((state(waiting[0].id).await, state(waiting[1].id).await), (JobState::Queued, JobState::Held));
    // A workspace that set no limits is held to the defaults given.
    let other = by("other", "cat");
    let hold = Admission { per_user: Some(0), queue_on_limit: true, ..Admission::default() };
    assert_eq!(store.submit_admitted(vec![other.clone()], hold).await.unwrap()[0].state, JobState::Held);
    let none = WorkspaceLimits { per_user: LimitPair { runs: None, jobs: Some(0) }, ..Default::default() };
    assert_eq!(store.release_held_jobs(none).await.unwrap(), 0);
    assert_eq!(store.release_held_jobs(generous).await.unwrap(), 1);
    assert_eq!(store.get_job("other", other.id).await.unwrap().unwrap().state, JobState::Queued);
}

async fn queued_runs_start_when_a_slot_frees(store: Arc<dyn Store>) {
    use ferry_core::run::RunState;
    use ferry_store::CreateRunOutcome;
    let def = json!({"name": "one", "nodes": [{"id": "a", "kind": "noop"}]});
    store.put_workflow("default", "u", "one", def).await.unwrap();
    let limits = WorkspaceLimits {
        per_workspace: LimitPair { runs: Some(2), jobs: None },
        per_user: LimitPair { runs: Some(1), jobs: None },
        users: Default::default(),
        tokens_per_day: None,
        tokens_today: None,
    };
    store.set_workspace_limits("default", limits.clone()).await.unwrap();
    let run = |user: &str| NewRun {
        user: user.into(),
        admission: limits.runs_for(user),
        queue_on_limit: true,
        ..new_run("one", None, None, json!(null))
    };
    let (first, second, third) = (run("ann"), run("ann"), run("bob"));
    let mut states = Vec::new();
    for r in [&first, &second, &third] {
        match store.create_run(r.clone(), planner()).await.unwrap().0 {
            CreateRunOutcome::Created { state, .. } => states.push(state),
            other => panic!("{other:?}"),
        }
    }
    // Bob's run waits behind Ann's waiting one, though his own limit has room.
    assert_eq!(states, vec![RunState::Running, RunState::Queued, RunState::Queued]);
    let state = |id| {
        let store = store.clone();
        async move { store.run_state("default", id).await.unwrap().unwrap() }
    };
    // The workspace's own limits apply, not the defaults: Ann is full, Bob is not.
    store.release_queued_runs(WorkspaceLimits::default(), planner()).await.unwrap();
    assert_eq!((state(second.id).await, state(third.id).await), (RunState::Queued, RunState::Running));
    let jobs = store.claim(claim_req("w", 10)).await.unwrap().jobs;
    let mut runs: Vec<_> = jobs.iter().map(|j| j.run_id).collect();
    runs.sort();
    assert_eq!(runs, vec![Some(first.id), Some(third.id)], "a started run's first node is ready at once");
    // Ann's run ends: her waiting run starts.
    let ann = jobs.iter().find(|j| j.run_id == Some(first.id)).unwrap();
    assert!(store.finish(succeed(ann.id, ann.attempt)).await.unwrap());
    let advanced = store.advance_runs(vec![first.id], planner()).await.unwrap();
    assert_eq!(advanced.finished, vec![(first.id, RunState::Succeeded)]);
    store.release_queued_runs(WorkspaceLimits::default(), planner()).await.unwrap();
    assert_eq!(state(second.id).await, RunState::Running);
    let next = store.claim(claim_req("w", 10)).await.unwrap().jobs;
    assert_eq!(next.iter().map(|j| j.run_id).collect::<Vec<_>>(), vec![Some(second.id)]);
    let events = store.run_events("default", second.id, 0, 100).await.unwrap().unwrap();
    let types: Vec<&str> = events.iter().take(2).map(|e| e.event_type.as_str()).collect();
    assert_eq!(types, vec!["run_queued", "run_started"]);
}

async fn limits_settings_and_workflows_read_back_as_set(store: Arc<dyn Store>) {
    assert_eq!(store.workspace_limits("default").await.unwrap(), None, "none set");
    let limits = WorkspaceLimits {
        per_workspace: LimitPair { runs: Some(3), jobs: Some(100) },
        per_user: LimitPair { runs: None, jobs: Some(7) },
        users: [("ann".to_string(), LimitPair { runs: Some(1), jobs: None })].into(),
        tokens_per_day: Some(1_234),
        tokens_today: None,
    };
    store.set_workspace_limits("default", limits.clone()).await.unwrap();
    assert_eq!(store.workspace_limits("default").await.unwrap(), Some(limits));
    assert_eq!(store.workspace_limits("other").await.unwrap(), None, "limits belong to their workspace");
    store.set_workspace_limits("default", WorkspaceLimits::default()).await.unwrap();
    assert_eq!(store.workspace_limits("default").await.unwrap(), Some(WorkspaceLimits::default()), "replaced");

    assert!(store.queue_settings().await.unwrap().is_empty());
    let heavy =
        QueueSettings { name: "heavy".into(), concurrency: Some(2), max_depth: Some(5), rate: Some(1.5), paused: true };
    let default = QueueSettings { name: "default".into(), max_depth: Some(0), ..Default::default() };
    store.set_queue_settings(heavy.clone()).await.unwrap();
    store.set_queue_settings(default.clone()).await.unwrap();
    assert_eq!(store.queue_settings().await.unwrap(), vec![default.clone(), heavy], "every queue, by name");
    let plain = QueueSettings { name: "heavy".into(), ..Default::default() };
    store.set_queue_settings(plain.clone()).await.unwrap();
    assert_eq!(store.queue_settings().await.unwrap(), vec![default, plain], "a setting replaces the last one");

    let def = |name: &str| json!({"name": name, "nodes": [{"id": "a", "kind": "noop"}]});
    assert!(store.workflows("default").await.unwrap().is_empty());
    for (ws, name) in [("default", "w"), ("default", "v"), ("default", "w"), ("other", "x")] {
        store.put_workflow(ws, "u", name, def(name)).await.unwrap();
    }
    let listed = store.workflows("default").await.unwrap();
    let names: Vec<(&str, u32)> = listed.iter().map(|w| (w.name.as_str(), w.latest_version)).collect();
    assert_eq!(names, vec![("v", 1), ("w", 2)], "each name once, with its latest version, by name");
    let versions = store.workflow_versions("default", "w").await.unwrap();
    assert_eq!(listed[1].created_at, versions[1].created_at, "the latest version's time");
    assert_eq!(store.workflows("other").await.unwrap().len(), 1, "workflows belong to their workspace");
}
