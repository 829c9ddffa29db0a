//! Label rates: what `/v1/limits/rates` takes and answers.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The body of `PUT /v1/limits/rates/{label}` (the label is the path's).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RateRequest {
    /// Attempts started per second, for each value of the label.
    #[schema(exclusive_minimum = 0.0, maximum = 1_000_000.0)]
    pub rate: f64,
}

/// A workspace's rate on a label key: its jobs carrying the label start at most `rate`
/// times a second for each value of the label, across every worker process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct LabelRateView {
    pub label: String,
    /// Attempts started per second, for each value of the label.
    pub rate: f64,
}

/// The workspace's rates on label keys, by label.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct LabelRateList {
    pub rates: Vec<LabelRateView>,
}

impl From<ferry_store::LabelRate> for LabelRateView {
    fn from(r: ferry_store::LabelRate) -> Self {
        LabelRateView { label: r.label, rate: r.rate }
    }
}
