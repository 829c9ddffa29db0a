//! What the API takes and answers: request bodies, and the store's records rendered for
//! clients (RFC 3339 times, derived counts), each with an OpenAPI schema. One module per
//! handler module, named alike; every type is re-exported here, so the rest of the crate
//! names them `crate::views::JobView`.
//!
//! A type's name is its schema's name in the OpenAPI document (`#/components/schemas/
//! JobView`): renaming one changes the document.

mod breakers;
mod errors;
mod jobs;
mod limits;
mod runs;
mod schedules;
mod system;
mod tokens;

pub use breakers::{BreakerChange, BreakerList, BreakerView, ForcedState};
pub use errors::{ErrorGroupView, ErrorReport};
pub use jobs::{
    AttemptView, BatchAccepted, BatchRequest, EventList, EventView, JobAccepted, JobAnswer, JobPage, JobStateView,
    JobView,
};
pub use limits::{LabelRateList, LabelRateView, RateRequest};
pub use runs::{
    NodeJobView, NodeView, RunAccepted, RunAnswer, RunEventList, RunEventView, RunPageView, RunRequest, RunStateView,
    RunView, WorkflowAccepted, WorkflowList, WorkflowSummaryView, WorkflowVersionView, WorkflowVersions,
};
pub use schedules::{ScheduleList, ScheduleView, StartView};
pub use system::{
    Health, QueueChange, QueueList, QueueSettingsRequest, QueueSettingsView, QueueShareView, QueueView, WorkerList,
    WorkerQueueView, WorkerView,
};
pub use tokens::{TokenList, TokenRequest, TokenView};
