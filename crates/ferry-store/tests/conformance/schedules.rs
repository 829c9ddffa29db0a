//! Pins the schedule promises on both backends: a tick fires only while the schedule's
//! row is as its scheduler read it (of racing proposals exactly one starts its job, under
//! the key `schedule:<id>:<tick>`); the overlap rule skips or queues a tick while the last
//! start runs, and the queued one starts once it ended; a start the limits refuse is
//! counted and the tick moves on; paused schedules are not due; delete is per workspace.

use super::*;
use ferry_core::admission::Admission;
use ferry_core::schedule::{Overlap, idempotency_key};
use ferry_store::schedules::{FireReport, Start};
use ferry_store::{NewSchedule, ScheduleFiring, StartRef};

conformance!(a_tick_fires_once_by_compare_and_set_and_overlap_and_refusals_hold);

const S: i64 = 1_000_000;

/// The start of tick `tick` of schedule `id`: a noop job under its key.
fn start(id: uuid::Uuid, tick: i64, admission: Admission) -> Start {
    let mut job = spec(noop());
    job.idempotency_key = Some(idempotency_key(id, tick));
    Start::Job { job: Box::new(job), admission }
}

fn firing(id: uuid::Uuid, expect: i64, ticks: &[i64], overlap: Overlap) -> ScheduleFiring {
    ScheduleFiring {
        id,
        expect_next: Some(expect),
        waiting: None,
        ticks: ticks.iter().map(|t| (*t, start(id, *t, Admission::default()))).collect(),
        missed: 0,
        overlap,
        next_fire_at: Some(ticks.last().copied().unwrap_or(expect) + S),
    }
}

async fn fire(store: &Arc<dyn Store>, f: ScheduleFiring) -> FireReport {
    store.fire_schedule(f, planner()).await.unwrap()
}

async fn a_tick_fires_once_by_compare_and_set_and_overlap_and_refusals_hold(store: Arc<dyn Store>) {
    let now = time::now_micros();
    let id = uuid::Uuid::now_v7();
    let t0 = now - 5 * S;
    let new = NewSchedule {
        id,
        workspace: "default".into(),
        name: "s".into(),
        spec: json!({"name": "s", "every_ms": 1000, "job": {"kind": "noop"}}),
        paused: false,
        next_fire_at: Some(t0),
        created_by: "u".into(),
        created_at: t0 - S,
    };
    assert!(store.create_schedule(new.clone()).await.unwrap());
    assert!(!store.create_schedule(NewSchedule { id: uuid::Uuid::now_v7(), ..new }).await.unwrap(), "name taken");
    let due = store.due_schedules(10).await.unwrap();
    assert_eq!(due.due.iter().map(|s| s.id).collect::<Vec<_>>(), [id]);
    assert!(due.now >= now);

    // Four proposals for the same tick race: exactly one applies, one job is stored.
    let racers = (0..4).map(|_| {
        let store = store.clone();
        tokio::spawn(async move { fire(&store, firing(id, t0, &[t0], Overlap::Allow)).await })
    });
    let mut applied = 0;
    for r in racers {
        applied += r.await.unwrap().applied as usize;
    }
    assert_eq!(applied, 1);
    let row = store.schedule("default", id).await.unwrap().unwrap();
    assert_eq!((row.started, row.last_tick, row.next_fire_at), (1, Some(t0), Some(t0 + S)));
    let Some(StartRef::Job(first)) = row.last_start else { panic!("{row:?}") };
    let job = store.get_job("default", first).await.unwrap().unwrap();
    assert_eq!(job.idempotency_key, Some(idempotency_key(id, t0)));
    // A stale proposal (the tick moved) does nothing.
    assert!(!fire(&store, firing(id, t0, &[t0], Overlap::Allow)).await.applied);

    // The first job is still queued: `skip` skips the next tick, `queue` makes it wait.
    let t1 = t0 + S;
    let r = fire(&store, firing(id, t1, &[t1], Overlap::Skip)).await;
    assert_eq!((r.applied, r.skipped, r.started.len()), (true, 1, 0));
    let t2 = t1 + S;
    let t3 = t2 + S;
    let r = fire(&store, firing(id, t2, &[t2, t3], Overlap::Queue)).await;
    assert_eq!((r.waiting, r.skipped, r.started.len()), (Some(t2), 1, 0), "one waits, the next is skipped");
    let row = store.schedule("default", id).await.unwrap().unwrap();
    assert_eq!((row.waiting_tick, row.skipped, row.next_fire_at), (Some(t2), 2, Some(t3 + S)));
    // While the first job has not ended, the waiting tick stays, and nothing is written.
    let waiting = |f: &mut ScheduleFiring| f.waiting = Some((t2, start(id, t2, Admission::default())));
    let mut f = firing(id, t3 + S, &[], Overlap::Queue);
    f.next_fire_at = Some(t3 + S);
    waiting(&mut f);
    let r = fire(&store, f.clone()).await;
    assert!(r.applied && r.started.is_empty());
    assert_eq!(store.schedule("default", id).await.unwrap().unwrap(), row);
    // Once it ended, the waiting tick starts.
    assert!(matches!(store.cancel("default", first).await.unwrap(), CancelOutcome::Cancelled { .. }));
    let r = fire(&store, f).await;
    assert_eq!(r.started.iter().map(|s| s.0).collect::<Vec<_>>(), [t2]);
    let row = store.schedule("default", id).await.unwrap().unwrap();
    assert_eq!((row.waiting_tick, row.started), (None, 2));

    // A start the limits refuse is counted, and the tick moves on.
    let t4 = t3 + S;
    let mut f = firing(id, t4, &[t4], Overlap::Allow);
    f.ticks[0].1 = start(id, t4, Admission { per_workspace: Some(0), ..Admission::default() });
    let r = fire(&store, f).await;
    assert_eq!((r.refused.len(), r.started.len()), (1, 0));
    let row = store.schedule("default", id).await.unwrap().unwrap();
    assert_eq!((row.refused, row.next_fire_at), (1, Some(t4 + S)));
    assert!(row.last_error.as_deref().is_some_and(|e| e.contains("limit")), "{row:?}");
    assert!(
        store
            .list_jobs("default", JobFilter { limit: 100, ..JobFilter::default() })
            .await
            .unwrap()
            .items
            .iter()
            .all(|j| j.idempotency_key != Some(idempotency_key(id, t4)))
    );

    // Paused: not due; resumed with a tick: due again. Deleted only in its workspace.
    store.pause_schedule("default", id, true, None).await.unwrap().unwrap();
    assert!(store.due_schedules(10).await.unwrap().due.is_empty());
    let back = store.pause_schedule("default", id, false, Some(now - S)).await.unwrap().unwrap();
    assert_eq!((back.paused, back.next_fire_at), (false, Some(now - S)));
    assert_eq!(store.due_schedules(10).await.unwrap().due.len(), 1);
    assert!(store.pause_schedule("other", id, true, None).await.unwrap().is_none());
    assert!(!store.delete_schedule("other", id).await.unwrap());
    assert!(store.delete_schedule("default", id).await.unwrap());
    assert!(store.schedule("default", id).await.unwrap().is_none());
    assert!(store.schedules("default").await.unwrap().is_empty());
}
