//! The scheduler: fires the workspaces' schedules (`ferry_core::schedule`), a background
//! task of every `ferry server` node.
//!
//! It sleeps until the earliest next tick the store knows of (capped at [`MAX_SLEEP`],
//! so that a schedule created on another node is seen within it; [`WAITING_RECHECK`]
//! while a tick waits for its previous start under `overlap: queue`), or until woken
//! ([`Scheduler::wake`]: the API calls it when a schedule is created or resumed here). It
//! never polls faster. Awake, it reads the due schedules by the store's clock
//! ([`ferry_store::ScheduleStore::due_schedules`]), decides for each which ticks fire
//! ([`ferry_core::schedule::due`], the catch-up rule), makes each tick's job or run
//! through its [`Starter`] (the API's own validation and admission: the server
//! implements it) and proposes the firing to the store. The store fires it in one
//! transaction, compare-and-set on the schedule's `next_fire_at`, so whatever the number
//! of nodes, exactly one starts each tick; this task only proposes, and a node that dies
//! mid-pass loses nothing (the tick stays due for the next pass, here or elsewhere).
//!
//! Where it runs: on `ferry server` nodes only, like the escalation evaluator
//! ([`crate::escalation`]); `ferry worker` processes are scaled for throughput and would
//! only multiply the reads.
//!
//! `ferry_schedule_fires_total{outcome}` counts the ticks this node fired: `started`,
//! `skipped` (the overlap policy), `refused` (the limits, or a kind, queue or workflow
//! gone); the schedule's row keeps the same counts and the last refusal.

use async_trait::async_trait;
use ferry_core::schedule::{ScheduleSpec, due};
use ferry_core::time::Micros;
use ferry_store::schedules::{ScheduleFiring, ScheduleRow, Start};
use ferry_store::{Planner, Store, StoreError};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The longest sleep between two passes.
pub const MAX_SLEEP: Duration = Duration::from_secs(5);
/// The sleep while a tick waits for its previous start to end (`overlap: queue`).
pub const WAITING_RECHECK: Duration = Duration::from_secs(1);
/// The most schedules one pass fires; more due ones are fired by the next pass at once.
pub const PASS_LIMIT: usize = 100;

/// Makes a tick's start as the API makes a job or a run: validated against this server's
/// kinds, queues and limits, with the workspace's admission, as the schedule's creator.
/// A start that cannot be made is [`Start::Refused`] with the reason.
#[async_trait]
pub trait Starter: Send + Sync + 'static {
    async fn start(&self, schedule: &ScheduleRow, spec: &ScheduleSpec, tick: Micros) -> Start;
}

/// What a pass did, for tests and logs.
#[derive(Debug, Clone, Copy, Default)]
pub struct Pass {
    pub fired: usize,
    /// How long to sleep before the next pass.
    pub sleep: Duration,
}

/// One pass: read what is due, propose each firing.
pub async fn pass(store: &dyn Store, starter: &dyn Starter, planner: &Planner) -> Result<Pass, StoreError> {
    let read = store.due_schedules(PASS_LIMIT).await?;
    let mut out = Pass { fired: 0, sleep: MAX_SLEEP };
    if let Some(next) = read.next {
        let until = Duration::from_micros(u64::try_from(next.saturating_sub(read.now)).unwrap_or(0));
        out.sleep = out.sleep.min(until);
    }
    if read.due.len() >= PASS_LIMIT {
        out.sleep = Duration::ZERO;
    }
    for row in &read.due {
        if row.waiting_tick.is_some() {
            out.sleep = out.sleep.min(WAITING_RECHECK);
        }
        match fire(store, starter, planner, row, read.now).await {
            Ok((applied, next)) => {
                out.fired += applied as usize;
                // Its next tick, whichever node fired it (the proposal's is the same).
                if let Some(next) = next {
                    let until = Duration::from_micros(u64::try_from(next.saturating_sub(read.now)).unwrap_or(0));
                    out.sleep = out.sleep.min(until);
                }
            }
            Err(e) => {
                out.sleep = out.sleep.min(WAITING_RECHECK);
                tracing::warn!(schedule = %row.id, error = %e, "cannot fire the schedule; will retry");
            }
        }
    }
    Ok(out)
}

/// Proposes the firing of one due schedule; whether the store applied it, and the next
/// tick it proposed.
async fn fire(
    store: &dyn Store,
    starter: &dyn Starter,
    planner: &Planner,
    row: &ScheduleRow,
    now: Micros,
) -> Result<(bool, Option<Micros>), StoreError> {
    // Stored only once validated: a spec that no longer parses is a bug, logged.
    let spec: ScheduleSpec =
        serde_json::from_value(row.spec.clone()).map_err(|e| StoreError::Database(e.to_string()))?;
    let valid =
        spec.validate(row.created_at).map_err(|e| StoreError::Database(format!("{}: {}", e.field, e.message)))?;
    let mut firing = ScheduleFiring {
        id: row.id,
        expect_next: row.next_fire_at,
        waiting: None,
        ticks: Vec::new(),
        missed: 0,
        overlap: valid.overlap,
        next_fire_at: row.next_fire_at,
    };
    if let Some(next) = row.next_fire_at
        && next <= now
    {
        let d = due(&valid.timing, valid.catch_up, next, now);
        for tick in d.fire {
            firing.ticks.push((tick, starter.start(row, &spec, tick).await));
        }
        firing.missed = d.missed;
        firing.next_fire_at = d.next;
    }
    if let Some(tick) = row.waiting_tick {
        firing.waiting = Some((tick, starter.start(row, &spec, tick).await));
    }
    let next = firing.next_fire_at;
    let report = store.fire_schedule(firing, planner.clone()).await?;
    let count = |outcome: &'static str, n: usize| {
        if n > 0 {
            metrics::counter!("ferry_schedule_fires_total", "outcome" => outcome).increment(n as u64);
        }
    };
    count("started", report.started.len());
    count("skipped", report.skipped as usize);
    count("refused", report.refused.len());
    for (tick, why) in &report.refused {
        tracing::warn!(schedule = %row.name, workspace = %row.workspace, tick, reason = %why, "a schedule's start was refused");
    }
    Ok((report.applied, next))
}

/// The scheduler running in this process.
pub struct Scheduler {
    wake: Arc<Notify>,
    passes: watch::Receiver<u64>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Scheduler {
    /// Starts firing schedules until [`Scheduler::stop`]; `wake` is what the API notifies
    /// when a schedule is created or resumed.
    pub fn start(store: Arc<dyn Store>, starter: Arc<dyn Starter>, planner: Planner, wake: Arc<Notify>) -> Scheduler {
        let (tx, passes) = watch::channel(0);
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        let woken = wake.clone();
        let task = tokio::spawn(async move {
            loop {
                let sleep = match pass(store.as_ref(), starter.as_ref(), &planner).await {
                    Ok(p) => p.sleep,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot read the due schedules; will retry");
                        WAITING_RECHECK
                    }
                };
                tx.send_modify(|n| *n += 1);
                tokio::select! {
                    _ = tokio::time::sleep(sleep) => {}
                    _ = woken.notified() => {}
                    _ = stopped.cancelled() => return,
                }
            }
        });
        Scheduler { wake, passes, stop, task }
    }

    /// Makes the scheduler look at once (a schedule was created or resumed).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// The passes finished so far, as they finish: what tests wait on.
    pub fn passes(&self) -> watch::Receiver<u64> {
        self.passes.clone()
    }

    /// Stops (a pass under way finishes first).
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}
