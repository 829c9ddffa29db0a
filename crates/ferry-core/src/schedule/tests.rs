//! The schedule rules' cases: validation at its edges, ticks of crons and intervals (time
//! zones and DST included), the catch-up rule after a downtime (a clock jump is the same
//! case: `now` far past `next_fire_at`), and the overlap rule.

use super::*;
use chrono::DateTime;
use serde_json::json;

const S: Micros = 1_000_000;

fn spec(v: Value) -> ScheduleSpec {
    serde_json::from_value(v).expect("a spec")
}

fn at(rfc3339: &str) -> Micros {
    DateTime::parse_from_rfc3339(rfc3339).expect("a time").timestamp_micros()
}

fn show(t: Micros) -> String {
    crate::time::to_datetime(t).to_rfc3339()
}

/// Checks that `v` is refused naming `field`.
fn refused(v: Value, field: &str) {
    let err = spec(v.clone()).validate(0).expect_err(&format!("refused: {v}"));
    assert_eq!(err.field, field, "{v}: {}", err.message);
}

fn valid(v: Value) -> Valid {
    spec(v.clone()).validate(0).unwrap_or_else(|e| panic!("{v}: {} {}", e.field, e.message))
}

#[test]
fn validation_at_its_edges() {
    let job = json!({"kind": "noop"});
    valid(json!({"name": "a", "cron": "* * * * *", "job": job}));
    valid(json!({"name": "a", "cron": "*/5 * * * * *", "job": job}));
    valid(json!({"name": "a", "cron": "@hourly", "job": job}));
    valid(json!({"name": "a", "every_ms": 1000, "job": job}));
    valid(json!({"name": "a", "every_ms": MAX_EVERY_MS, "job": job}));
    valid(json!({"name": "a", "cron": "0 9 * * MON", "timezone": "Europe/Paris", "run": {"workflow": "w"}}));
    valid(json!({"name": "a", "every_ms": 1000, "job": job, "catch_up": {"policy": "all", "max": 100}}));
    valid(json!({"name": "a".repeat(MAX_NAME_BYTES), "every_ms": 1000, "job": job}));
    refused(json!({"name": "a".repeat(MAX_NAME_BYTES + 1), "every_ms": 1000, "job": job}), "name");
    refused(json!({"name": "", "every_ms": 1000, "job": job}), "name");
    refused(json!({"name": "a b", "every_ms": 1000, "job": job}), "name");
    refused(json!({"name": "a", "every_ms": 999, "job": job}), "every_ms");
    refused(json!({"name": "a", "every_ms": MAX_EVERY_MS + 1, "job": job}), "every_ms");
    refused(json!({"name": "a", "cron": "* * * *", "job": job}), "cron");
    refused(json!({"name": "a", "cron": "* * * * * * *", "job": job}), "cron");
    refused(json!({"name": "a", "cron": "61 * * * *", "job": job}), "cron");
    refused(json!({"name": "a", "job": job}), "cron");
    refused(json!({"name": "a", "cron": "* * * * *", "every_ms": 1000, "job": job}), "every_ms");
    refused(json!({"name": "a", "cron": "* * * * *", "timezone": "Mars/Olympus", "job": job}), "timezone");
    refused(json!({"name": "a", "every_ms": 1000}), "job");
    refused(json!({"name": "a", "every_ms": 1000, "job": job, "run": {"workflow": "w"}}), "run");
    refused(
        json!({"name": "a", "every_ms": 1000, "job": {"kind": "noop", "idempotency_key": "k"}}),
        "job.idempotency_key",
    );
    refused(
        json!({"name": "a", "every_ms": 1000, "job": {"kind": "noop", "run_at": "2030-01-01T00:00:00Z"}}),
        "job.run_at",
    );
    refused(json!({"name": "a", "every_ms": 1000, "run": {"workflow": ""}}), "run.workflow");
    refused(json!({"name": "a", "every_ms": 1000, "run": {"workflow": "w", "input": [1]}}), "run.input");
    refused(
        json!({"name": "a", "every_ms": 1000, "job": job, "catch_up": {"policy": "all", "max": 0}}),
        "catch_up.max",
    );
    refused(
        json!({"name": "a", "every_ms": 1000, "job": job, "catch_up": {"policy": "all", "max": 101}}),
        "catch_up.max",
    );
    refused(
        json!({"name": "a", "every_ms": 1000, "job": job, "catch_up": {"policy": "latest", "max": 3}}),
        "catch_up.max",
    );
    assert!(serde_json::from_value::<ScheduleSpec>(json!({"name": "a", "every": 1})).is_err());
    let v = valid(json!({"name": "a", "every_ms": 1000, "job": job}));
    assert_eq!((v.overlap, v.catch_up.policy), (Overlap::Skip, CatchUpPolicy::Latest));
}

#[test]
fn intervals_tick_from_their_anchor() {
    let t = Timing::Every { every: 10 * S, anchor: 5 * S };
    assert_eq!(t.next_after(0), Some(5 * S));
    assert_eq!(t.next_after(5 * S), Some(15 * S));
    assert_eq!(t.next_after(14 * S), Some(15 * S));
    assert_eq!(t.first_from(15 * S), Some(15 * S));
    assert_eq!(t.upcoming(5 * S, 3), vec![15 * S, 25 * S, 35 * S]);
}

#[test]
fn crons_tick_in_their_time_zone() {
    let v = valid(json!({"name": "a", "cron": "0 9 * * *", "timezone": "Europe/Paris", "job": {"kind": "noop"}}));
    // 09:00 in Paris is 08:00 UTC in winter, 07:00 UTC in summer.
    assert_eq!(show(v.timing.next_after(at("2026-01-10T12:00:00Z")).unwrap()), "2026-01-11T08:00:00+00:00");
    assert_eq!(show(v.timing.next_after(at("2026-07-10T12:00:00Z")).unwrap()), "2026-07-11T07:00:00+00:00");
    let secs = valid(json!({"name": "a", "cron": "*/15 * * * * *", "job": {"kind": "noop"}}));
    assert_eq!(
        secs.timing.upcoming(at("2026-01-10T12:00:00Z"), 2),
        vec![at("2026-01-10T12:00:15Z"), at("2026-01-10T12:00:30Z")]
    );
}

#[test]
fn dst_gaps_and_overlaps_follow_croner() {
    let job = json!({"kind": "noop"});
    // Europe/Paris springs forward at 02:00 → 03:00 on 2026-03-29 and falls back at
    // 03:00 → 02:00 on 2026-10-25.
    let fixed = valid(json!({"name": "a", "cron": "30 2 * * *", "timezone": "Europe/Paris", "job": job})).timing;
    // The skipped 02:30 runs at the first instant after the gap (03:00 CEST = 01:00 UTC).
    assert_eq!(show(fixed.next_after(at("2026-03-28T12:00:00Z")).unwrap()), "2026-03-29T01:00:00+00:00");
    // The repeated 02:30 runs once, on its first pass (CEST: 00:30 UTC).
    let ticks = fixed.upcoming(at("2026-10-24T12:00:00Z"), 2);
    assert_eq!(
        ticks.iter().map(|t| show(*t)).collect::<Vec<_>>(),
        ["2026-10-25T00:30:00+00:00", "2026-10-26T01:30:00+00:00"]
    );
    // A wildcard hour runs on both passes of the repeated hour.
    let every = valid(json!({"name": "a", "cron": "30 * * * *", "timezone": "Europe/Paris", "job": job})).timing;
    let ticks = every.upcoming(at("2026-10-24T23:45:00Z"), 3);
    assert_eq!(
        ticks.iter().map(|t| show(*t)).collect::<Vec<_>>(),
        ["2026-10-25T00:30:00+00:00", "2026-10-25T01:30:00+00:00", "2026-10-25T02:30:00+00:00"]
    );
}

fn catch(policy: CatchUpPolicy, max: Option<u32>) -> CatchUp {
    CatchUp { policy, max }
}

#[test]
fn on_time_every_policy_fires_the_one_tick() {
    let t = Timing::Every { every: S, anchor: 0 };
    for p in [CatchUpPolicy::None, CatchUpPolicy::Latest, CatchUpPolicy::All] {
        let d = due(&t, catch(p, None), 10 * S, 10 * S + 3_000);
        assert_eq!(d, Due { fire: vec![10 * S], missed: 0, next: Some(11 * S) }, "{p:?}");
    }
    // Before its tick nothing is due.
    let d = due(&t, catch(CatchUpPolicy::All, None), 10 * S, 10 * S - 1);
    assert_eq!(d, Due { fire: vec![], missed: 0, next: Some(10 * S) });
}

#[test]
fn after_a_downtime_or_a_clock_jump_each_policy_catches_up_its_way() {
    // Hourly, last fired at 00:00; the scheduler comes back at 03:00:30 (or the clock
    // jumped there): 01:00, 02:00 and 03:00 are due.
    let h = 3600 * S;
    let t = Timing::Every { every: h, anchor: 0 };
    let now = 3 * h + 30 * S;
    let next = Some(4 * h);
    assert_eq!(due(&t, catch(CatchUpPolicy::None, None), h, now), Due { fire: vec![3 * h], missed: 2, next });
    assert_eq!(due(&t, catch(CatchUpPolicy::Latest, None), h, now), Due { fire: vec![3 * h], missed: 2, next });
    assert_eq!(due(&t, catch(CatchUpPolicy::All, Some(2)), h, now), Due { fire: vec![2 * h, 3 * h], missed: 1, next });
    assert_eq!(
        due(&t, catch(CatchUpPolicy::All, Some(100)), h, now),
        Due { fire: vec![h, 2 * h, 3 * h], missed: 0, next }
    );
    // Back at 03:40: the 03:00 tick is 40 minutes late, so `none` drops it too.
    let later = 3 * h + 2400 * S;
    assert_eq!(due(&t, catch(CatchUpPolicy::None, None), h, later), Due { fire: vec![], missed: 3, next });
    assert_eq!(due(&t, catch(CatchUpPolicy::Latest, None), h, later), Due { fire: vec![3 * h], missed: 2, next });
    // A week of per-second ticks: only the last few are walked, the count is capped.
    let s = Timing::Every { every: S, anchor: 0 };
    let d = due(&s, catch(CatchUpPolicy::All, Some(3)), S, 7 * 24 * h);
    assert_eq!(d.fire, vec![7 * 24 * h - 2 * S, 7 * 24 * h - S, 7 * 24 * h]);
    assert_eq!(d.missed, MAX_MISSED_COUNTED);
}

#[test]
fn a_cron_catches_up_across_days() {
    let t = valid(json!({"name": "a", "cron": "0 6 * * *", "job": {"kind": "noop"}})).timing;
    let d = due(&t, catch(CatchUpPolicy::All, Some(5)), at("2026-01-01T06:00:00Z"), at("2026-01-03T07:00:00Z"));
    assert_eq!(
        d.fire.iter().map(|t| show(*t)).collect::<Vec<_>>(),
        ["2026-01-01T06:00:00+00:00", "2026-01-02T06:00:00+00:00", "2026-01-03T06:00:00+00:00"]
    );
    assert_eq!(d.next, Some(at("2026-01-04T06:00:00Z")));
}

#[test]
fn overlap_decides_per_policy() {
    use TickStart::*;
    let cases = [
        (Overlap::Skip, false, false, Start),
        (Overlap::Skip, true, false, Skip),
        (Overlap::Queue, false, false, Start),
        (Overlap::Queue, true, false, Wait),
        (Overlap::Queue, true, true, Skip),
        (Overlap::Allow, true, false, Start),
        (Overlap::Allow, false, false, Start),
    ];
    for (policy, live, waiting, want) in cases {
        assert_eq!(overlap(policy, live, waiting), want, "{policy:?} live={live} waiting={waiting}");
    }
}

#[test]
fn the_key_names_the_schedule_and_the_tick() {
    let id = uuid::Uuid::nil();
    assert_eq!(idempotency_key(id, 5), "schedule:00000000-0000-0000-0000-000000000000:5");
}
