//! Per-version knowledge of vLLM, as data: where the engine loop lives and what it calls.
//!
//! A row covers a range of vLLM releases whose engine step has the same shape; supporting a
//! new shape is adding a row.

/// The names the tracer looks up in a vLLM V1 engine.
#[derive(Debug)]
pub struct EngineNames {
    /// Which releases this row was read from.
    pub releases: &'static str,
    /// Module that must be imported for the engine to be in this process.
    pub core_module: &'static str,
    /// Qualified name (within `core_module`) of the function that runs one engine step.
    pub step: &'static str,
    /// The busy loop whose thread runs the steps.
    pub busy_loop: &'static str,
    /// Method called in `step` whose return ends the schedule phase.
    pub schedule: &'static str,
    /// Method called in `step` whose return ends the execute phase.
    pub execute: &'static str,
    /// Method called in `step` whose return ends the update phase (and the step).
    pub update: &'static str,
}

/// vLLM V1 `EngineCore.step`: schedule → execute_model → update_from_output (0.8 – 0.10,
/// and the bundled fixture engine).
pub const V1_STEP: EngineNames = EngineNames {
    releases: "fixture engine; vLLM 0.8.5 and 0.10 have this shape per DESIGN §3 (not yet run against real vLLM)",
    core_module: "vllm.v1.engine.core",
    step: "EngineCore.step",
    busy_loop: "EngineCoreProc.run_busy_loop",
    schedule: "schedule",
    execute: "execute_model",
    update: "update_from_output",
};

pub const ENGINES: &[EngineNames] = &[V1_STEP];
