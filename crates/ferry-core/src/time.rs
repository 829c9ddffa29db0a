//! Timestamps as microseconds since the Unix epoch.
//!
//! Stores keep time as a plain integer of microseconds: it sorts, compares and indexes
//! cheaply on every backend, and it is fine enough to measure sub-millisecond pickup
//! latency. The API renders it as RFC 3339.

use chrono::{DateTime, TimeZone, Utc};

/// Microseconds since the Unix epoch.
pub type Micros = i64;

/// The current wall-clock time in microseconds.
pub fn now_micros() -> Micros {
    Utc::now().timestamp_micros()
}

/// Converts microseconds to a UTC date-time (clamped to the epoch for nonsense values).
pub fn to_datetime(us: Micros) -> DateTime<Utc> {
    Utc.timestamp_micros(us).single().unwrap_or_default()
}

/// Converts a date-time to microseconds.
pub fn from_datetime(t: DateTime<Utc>) -> Micros {
    t.timestamp_micros()
}

/// Milliseconds to microseconds, saturating instead of overflowing.
pub fn ms(ms: u64) -> Micros {
    i64::try_from(ms).unwrap_or(i64::MAX / 1000).saturating_mul(1000)
}
