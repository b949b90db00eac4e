//! `tracer probes --pid N`: what `attach` would put in, with addresses and versions,
//! without attaching anything (no BPF, no watchpoints: only reads of the target's memory).

use std::fmt::Write as _;

use anyhow::Result;
use serde::Serialize;

use crate::{
    live::{cuda, engines, plan, resolve},
    text::printable,
};

#[derive(Debug, Serialize)]
pub struct EngineProbes {
    pub pid: u32,
    pub title: String,
    pub tag: String,
    pub tid: u32,
    pub python_version: String,
    pub python_binary: String,
    pub vllm_version: Option<String>,
    /// Which row of the vLLM table matched.
    pub engine_shape: &'static str,
    pub step_function: String,
    pub code_object: String,
    pub watches: Vec<WatchInfo>,
    /// The engine's processes that map libcuda now (with TP > 1 its worker ranks): where
    /// `--cuda` puts its uprobes.
    pub cuda_processes: Vec<cuda::CudaProcess>,
}

#[derive(Debug, Serialize)]
pub struct WatchInfo {
    pub mark: String,
    pub bytecode_offset: usize,
    pub address: String,
}

/// The probe plan of every engine found from `pid`.
pub fn list(pid: u32) -> Result<Vec<EngineProbes>> {
    let mut out = Vec::new();
    for engine in engines::find(pid, None)? {
        let plan = plan::plan(&engine.resolved, engine.target.python.layout)?;
        let names = engine.resolved.names;
        out.push(EngineProbes {
            pid: engine.process.pid,
            title: engine.process.title.clone(),
            tag: engine.tag(),
            tid: plan.tid,
            python_version: engine.target.python.version.clone(),
            python_binary: printable(&engine.target.python.binary.to_string_lossy()).into_owned(),
            vllm_version: resolve::vllm_version(&engine.target),
            engine_shape: names.releases,
            step_function: format!("{}.{}", names.core_module, engine.resolved.step.qualname),
            code_object: format!("{:#x}", engine.resolved.step.addr),
            watches: plan
                .watches
                .iter()
                .map(|w| WatchInfo {
                    mark: w.mark.to_string(),
                    bytecode_offset: w.offset,
                    address: format!("{:#x}", w.addr),
                })
                .collect(),
            cuda_processes: cuda::processes(engine.process.pid, plan.per_batch),
        });
    }
    Ok(out)
}

pub fn text(engines: &[EngineProbes]) -> String {
    let mut out = String::new();
    for e in engines {
        let _ = writeln!(
            out,
            "engine {} ({}), pid {}, engine thread {}",
            e.tag, e.title, e.pid, e.tid
        );
        let _ = writeln!(
            out,
            "  CPython {} ({}), vLLM {}",
            e.python_version,
            e.python_binary,
            e.vllm_version.as_deref().unwrap_or("unknown")
        );
        let _ = writeln!(out, "  vLLM table row: {}", e.engine_shape);
        let _ = writeln!(
            out,
            "  step function: {} (code object {})",
            e.step_function, e.code_object
        );
        let _ = writeln!(
            out,
            "  {} hardware watchpoints (1 byte, read/write) on thread {}:",
            e.watches.len(),
            e.tid
        );
        for w in &e.watches {
            let _ = writeln!(
                out,
                "    {:<16} bytecode +{:<5} {}",
                w.mark, w.bytecode_offset, w.address
            );
        }
        if e.cuda_processes.is_empty() {
            let _ = writeln!(out, "  CUDA: no process of the engine maps libcuda yet");
        }
        for p in &e.cuda_processes {
            let who = match &p.rank {
                None => "the engine".to_owned(),
                Some(rank) => format!("worker rank {rank}"),
            };
            let _ = writeln!(
                out,
                "  CUDA: pid {} ({who}, {}) maps {}",
                p.pid, p.title, p.libcuda
            );
            if let Some(marks) = &p.batch_marks {
                let _ = writeln!(out, "    batches marked by {marks}");
            }
        }
    }
    out
}
