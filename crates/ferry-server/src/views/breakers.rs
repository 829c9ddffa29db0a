//! Circuit breakers: what `GET /v1/breakers` answers and `PUT /v1/breakers/{key}` takes.

use chrono::{DateTime, Utc};
use ferry_core::breaker::{BreakerSettings, BreakerState};
use ferry_core::time::to_datetime;
use ferry_store::BreakerRecord;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// One target's breaker, as every node and worker process sees it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BreakerView {
    /// The target: an origin (`https://api.example.com:443`) or a job's own `breaker`.
    pub key: String,
    pub state: BreakerState,
    /// Failures in a row that count against the target, while closed.
    pub consecutive_failures: u32,
    /// The current window of the ratio rule: when it began, and what it saw.
    pub window_started_at: DateTime<Utc>,
    pub window_successes: u32,
    pub window_failures: u32,
    /// While open: when probes may begin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_at: Option<DateTime<Utc>>,
    /// The cool-down of the last trip (0: none since the last close).
    pub cool_down_ms: u64,
    /// Probes under way, while half-open.
    pub probing: u32,
    /// Trips and probes since the breaker was made.
    pub trips: u64,
    pub probes: u64,
    /// An operator's settings for this key (`PUT`), which win over the configured ones;
    /// `null`: the configured ones.
    pub settings: Option<BreakerSettings>,
    /// When the state last changed.
    pub changed_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<BreakerRecord> for BreakerView {
    fn from(r: BreakerRecord) -> Self {
        let b = r.breaker;
        BreakerView {
            key: r.key,
            state: b.state,
            consecutive_failures: b.consecutive,
            window_started_at: to_datetime(b.window_start),
            window_successes: b.successes,
            window_failures: b.window_failures,
            retry_at: (b.state == BreakerState::Open).then(|| to_datetime(b.retry_at)),
            cool_down_ms: b.cool_down_ms,
            probing: b.probing,
            trips: b.trips,
            probes: b.probes,
            settings: r.settings,
            changed_at: to_datetime(r.changed_at),
            updated_at: to_datetime(r.updated_at),
        }
    }
}

/// The breakers, by key.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct BreakerList {
    pub breakers: Vec<BreakerView>,
}

/// The state an operator forces a breaker into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ForcedState {
    /// Open now, for the next cool-down: its jobs wait.
    Open,
    /// Closed now: the jobs it held back go at once.
    Closed,
}

/// A change to one breaker; at least one field. Applied in this order: `settings`,
/// `reset`, `state`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BreakerChange {
    /// Settings for this key only, over the configured ones (fields left out take their
    /// defaults); `null` returns to the configured ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settings: Option<BreakerSettings>,
    /// `true`: closed and as new (the counts start again; the trips are kept). Also what
    /// enables a breaker its target disabled (a webhook endpoint's `410 Gone`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reset: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<ForcedState>,
}
