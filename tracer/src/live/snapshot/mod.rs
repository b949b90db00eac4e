//! Snapshots of the scheduler: [`plan`] makes the plan the watch program copies by, [`state`]
//! types its copies into a [`SchedulerState`], [`facts`] gives each request's immutable facts.
//! Imports [`crate::inspect`] (CPython layout, vLLM names) and the stages before it (decode,
//! plan, resolve); [`crate::live::correlate`] and [`crate::live::shadow`] import it, never
//! the reverse.

pub mod facts;
pub mod plan;
pub mod state;

pub use facts::{LiveRequests, RequestInfo, RequestSource};
pub use plan::{engine_config, SnapshotPlan, SnapshotPlanError};
pub use state::{RequestState, SchedulerState};

pub use crate::schema::run_info::Budgets;
