//! Stage 2, resolve: from the runtime to the objects we probe, by qualified name.
//!
//! Walks `sys.modules` → module `__dict__` → class `__dict__` → function → code object, and
//! finds the thread whose Python stack runs the engine's busy loop.

use crate::{
    inspect::{
        cpython::{
            bytecode,
            reader::{Code, ThreadState},
            PyReader, ReadError,
        },
        memory::LiveProcess,
        vllm::{EngineNames, ENGINES, WORKER_BATCH_ENTRY},
    },
    live::discover::Target,
    text::printable,
};

/// Attempts at walking each thread's stack before concluding none runs the busy loop.
const STACK_WALK_TRIES: usize = 50;
/// Attempts (1 ms apart) at catching an in-process engine's caller, which is on the stack only
/// while a step runs.
const INPROC_WALK_TRIES: usize = 2000;

#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("process {pid} runs Python {version} but has not imported {module}: is it a vLLM engine process? (with vLLM's default multiprocessing the engine runs in a child process titled EngineCore)")]
    NoVllm {
        pid: u32,
        version: String,
        module: String,
    },
    #[error("vLLM {vllm} in process {pid} has an engine step no row of the tracer's name table (tracer/src/vllm.rs) fits:\n{tried}")]
    NoRow {
        pid: u32,
        vllm: String,
        tried: String,
    },
    #[error("{name} not found in process {pid}: {why}")]
    Missing { pid: u32, name: String, why: String },
    #[error(
        "no thread of process {pid} is running {busy_loop}; pass --tid to pick the engine thread (an in-process engine is found only while it runs steps)"
    )]
    NoEngineThread { pid: u32, busy_loop: String },
    #[error("thread {tid} is not a Python thread of process {pid}")]
    NotAThread { pid: u32, tid: u64 },
    #[error("reading Python objects in process {pid}: {source}")]
    Read { pid: u32, source: ReadError },
}

/// The engine's step function, the thread that calls it, and the engine object.
#[derive(Debug)]
pub struct Resolved {
    pub names: &'static EngineNames,
    pub step: Code,
    /// Native thread id of the engine loop.
    pub tid: u32,
    /// That thread's `PyThreadState`.
    pub tstate: u64,
    /// The engine object (`self` of the busy loop), 0 if its frame was not found.
    pub engine: u64,
    /// The engine's batch queue (a deque) when it steps per batch, else 0.
    pub batch_queue: u64,
    /// Set when no row of the tables fits the step: `names` is the nearest row (its
    /// schedule and update calls are in the step) and execute ends where this says.
    pub fallback: Option<Fallback>,
}

/// How a step no row fits is traced anyway: phases by the nearest row's schedule and update
/// calls, execute ending at the return of the last method call before the update.
#[derive(Debug, Clone)]
pub struct Fallback {
    /// Why no row fit, one line per row tried.
    pub tried: String,
    /// The method whose return ends execute, and the byte offset after its call.
    pub execute: String,
    pub execute_offset: usize,
}

pub fn resolve(target: &Target, tid: Option<u32>) -> Result<Resolved, ResolveError> {
    resolve_with(target, tid, true)
}

/// [`resolve`], looking for an in-process engine's caller only when `inproc` (that search
/// takes up to [`INPROC_WALK_TRIES`] ms in a process that has none, e.g. a front end whose
/// engine is a child process).
pub fn resolve_with(
    target: &Target,
    tid: Option<u32>,
    inproc: bool,
) -> Result<Resolved, ResolveError> {
    let pid = target.pid;
    let py = &target.python;
    let mem = LiveProcess { pid };
    let reader = PyReader::new(&mem, py.layout, py.types);
    let read = |source| ResolveError::Read { pid, source };
    let objects = Objects {
        reader: &reader,
        modules: reader.sys_modules(py.runtime).map_err(read)?,
        pid,
    };
    // Rows share their module and step; which fits is what the live step calls.
    let Some(core_module) = ENGINES
        .iter()
        .map(|e| e.core_module)
        .find(|m| matches!(reader.dict_get(objects.modules, m), Ok(Some(_))))
    else {
        return Err(ResolveError::NoVllm {
            pid,
            version: py.version.clone(),
            module: ENGINES[0].core_module.into(),
        });
    };
    // The loop and its caller are the same in every row of the module.
    let names = ENGINES
        .iter()
        .find(|e| e.core_module == core_module)
        .expect("core_module came from a row");
    let busy_loop = objects.code(core_module, names.busy_loop)?;
    // In-process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`) the front end's client calls the step,
    // so its frame is there only during steps: many more tries.
    let inproc = match objects.code(names.inproc.module, names.inproc.caller) {
        Ok(code) if inproc => Some(code),
        Ok(_) | Err(ResolveError::Missing { .. }) => None,
        Err(e) => return Err(e),
    };
    let loops: Vec<(&Code, usize)> = std::iter::once((&busy_loop, STACK_WALK_TRIES))
        .chain(inproc.as_ref().map(|c| (c, INPROC_WALK_TRIES)))
        .collect();
    let threads = reader.threads(py.runtime).map_err(read)?;
    let (thread, loop_code, tries) = engine_thread(&reader, threads, pid, tid, &loops)?;
    let via_caller = inproc.as_ref().is_some_and(|c| c.addr == loop_code.addr);
    let engine = engine_object(&reader, &thread, loop_code.addr, tries, |this| {
        if via_caller {
            reader.attr(this, names.inproc.engine).ok().flatten()
        } else {
            Some(this)
        }
    })
    .unwrap_or(0);
    // The busy loop (through `_process_engine_step`) and 0.11+'s in-process caller call
    // `step_fn`, which is the batch-queue step when the engine has a batch queue; 0.10's
    // in-process caller calls `step` itself.
    let calls_step_fn =
        loop_code.addr == busy_loop.addr || loop_code.names.iter().any(|n| n == names.step_fn);
    let (per_batch, batch_queue) = if calls_step_fn {
        batch_queue(&reader, engine, names.batch_queue)
    } else {
        (false, 0)
    };
    let (names, step, fallback) = fit_row(&objects, target, core_module, per_batch)?;
    Ok(Resolved {
        names,
        step,
        tid: thread.native_thread_id as u32,
        tstate: thread.addr,
        engine,
        batch_queue,
        fallback,
    })
}

/// A worker process's per-batch entry ([`WORKER_BATCH_ENTRY`]), by its qualified name: the
/// first row whose module the worker has imported.
pub fn worker_batch_entry(target: &Target) -> Result<(&'static str, Code), ResolveError> {
    let (pid, py) = (target.pid, &target.python);
    let mem = LiveProcess { pid };
    let reader = PyReader::new(&mem, py.layout, py.types);
    let objects = Objects {
        reader: &reader,
        modules: reader
            .sys_modules(py.runtime)
            .map_err(|source| ResolveError::Read { pid, source })?,
        pid,
    };
    let mut rows = WORKER_BATCH_ENTRY.iter();
    loop {
        let &(module, qualname) = rows.next().expect("the table has rows");
        match objects.code(module, qualname) {
            Err(ResolveError::Missing { .. }) if rows.len() > 0 => continue,
            found => return found.map(|code| (qualname, code)),
        }
    }
}

/// Whether `engine` steps per batch (its `attr` holds a batch queue, not None), and that
/// queue when the kernel side can read its length, else 0. A deque's length is a word it
/// can read at each hit (0.10 and 0.11 queue batches in a queue.Queue: no such word, no
/// resync).
fn batch_queue(reader: &PyReader<LiveProcess>, engine: u64, attr: &str) -> (bool, u64) {
    let Some(queue) = (engine != 0)
        .then(|| reader.attr(engine, attr).ok().flatten())
        .flatten()
        .filter(|&queue| !reader.is_none(queue))
    else {
        return (false, 0);
    };
    let deque = reader
        .type_of(queue)
        .and_then(|ty| reader.type_name(ty))
        .is_ok_and(|name| name == "collections.deque");
    (true, if deque { queue } else { 0 })
}

/// Most decorators unwrapped to reach a function's own code.
const MAX_WRAPPERS: usize = 8;

/// Functions of the target, looked up by module and qualified name.
struct Objects<'r> {
    reader: &'r PyReader<'r, LiveProcess>,
    /// `sys.modules`.
    modules: u64,
    pid: u32,
}

impl Objects<'_> {
    /// The code object of `module`.`qualname` (`Class.method` walks the class `__dict__`).
    fn code(&self, module: &str, qualname: &str) -> Result<Code, ResolveError> {
        let (reader, pid) = (self.reader, self.pid);
        let read = |source| ResolveError::Read { pid, source };
        let missing = |why: String| ResolveError::Missing {
            pid,
            name: format!("{module}.{qualname}"),
            why,
        };
        let module_object = reader
            .dict_get(self.modules, module)
            .map_err(read)?
            .ok_or_else(|| missing("module not imported".into()))?;
        let mut dict = reader.module_dict(module_object).map_err(read)?;
        let mut object = 0;
        for part in qualname.split('.') {
            if object != 0 {
                dict = reader
                    .class_dict(object)
                    .map_err(|e| missing(e.to_string()))?;
            }
            object = reader
                .dict_get(dict, part)
                .map_err(read)?
                .ok_or_else(|| missing(format!("no attribute {part}")))?;
        }
        // A decorated method (vLLM's `@torch.inference_mode()` on `Worker.execute_model`) is
        // a wrapper whose code every function so decorated shares: watch the function it
        // wraps (`functools.wraps` leaves it in `__wrapped__`).
        for _ in 0..MAX_WRAPPERS {
            match reader.attr(object, "__wrapped__") {
                Ok(Some(inner)) => object = inner,
                _ => break,
            }
        }
        let code = reader
            .function_code(object)
            .map_err(|e| missing(e.to_string()))?;
        reader.code(code).map_err(read)
    }
}

/// The thread running one of `loops` (a loop's code and how many walks it gets), the loop,
/// and its tries: `tid`, or the first thread found. The stacks change under us while we walk
/// them, so one walk can tear; the busy loop's frame sits at the bottom of the engine thread
/// for its whole life, so a few tries find it, while an in-process caller's frame is there
/// only during steps.
fn engine_thread<'c>(
    reader: &PyReader<LiveProcess>,
    threads: Vec<ThreadState>,
    pid: u32,
    tid: Option<u32>,
    loops: &[(&'c Code, usize)],
) -> Result<(ThreadState, &'c Code, usize), ResolveError> {
    let runs = |t: &ThreadState, code: &Code| {
        reader
            .stack(t)
            .is_ok_and(|stack| stack.contains(&code.addr))
    };
    let candidates = match tid {
        Some(tid) => vec![*threads
            .iter()
            .find(|t| t.native_thread_id == u64::from(tid))
            .ok_or(ResolveError::NotAThread {
                pid,
                tid: tid.into(),
            })?],
        None => threads,
    };
    let found = loops.iter().find_map(|&(code, tries)| {
        (0..tries).find_map(|_| {
            let thread = candidates.iter().find(|t| runs(t, code));
            if thread.is_none() {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            thread.map(|t| (*t, code, tries))
        })
    });
    match (found, tid) {
        (Some(found), _) => Ok(found),
        // A given thread that runs neither loop is traced as the busy loop's, without the
        // engine object. (Looked at once, an in-process engine's thread caught between two
        // steps lost its batch and request columns: 0.11 in-process, 2 runs in 4.)
        (None, Some(_)) => Ok((candidates[0], loops[0].0, STACK_WALK_TRIES)),
        (None, None) => Err(ResolveError::NoEngineThread {
            pid,
            busy_loop: loops
                .iter()
                .map(|(c, _)| c.qualname.clone())
                .collect::<Vec<_>>()
                .join(" or "),
        }),
    }
}

/// The row of the tables whose step calls what the live step calls, its step's code, and,
/// when no row fits, how the nearest is traced anyway.
fn fit_row(
    objects: &Objects,
    target: &Target,
    core_module: &str,
    per_batch: bool,
) -> Result<(&'static EngineNames, Code, Option<Fallback>), ResolveError> {
    let rows = || {
        ENGINES
            .iter()
            .filter(move |e| e.core_module == core_module && e.per_batch == per_batch)
    };
    let mut tried = Vec::new();
    for row in rows() {
        let step = objects.code(core_module, row.step)?;
        let absent: Vec<_> = row
            .calls()
            .into_iter()
            .filter(|m| !step.names.iter().any(|n| n == m))
            .collect();
        if absent.is_empty() {
            return Ok((row, step, None));
        }
        tried.push(format!(
            "  {}: {} has no call of {}",
            row.releases,
            row.step,
            absent.join(", ")
        ));
    }
    let tried = tried.join("\n");
    // No row fits: a release the tables do not know. Its phases are still traced when the
    // step calls a row's schedule and update: execute then ends at the last method call
    // before the update (what every measured row's execute call is).
    let opcodes = target.python.layout.opcodes;
    for row in rows() {
        let step = objects.code(core_module, row.step)?;
        let has = |m: &str| step.names.iter().any(|n| n == m);
        if !(has(row.schedule) && has(row.update)) {
            continue;
        }
        let instrs = bytecode::instructions(&step.bytecode, opcodes);
        if let Some((execute, execute_offset)) =
            bytecode::last_call_before(&instrs, &step.names, row.update, opcodes)
        {
            let fallback = Fallback {
                tried,
                execute,
                execute_offset,
            };
            return Ok((row, step, Some(fallback)));
        }
    }
    Err(ResolveError::NoRow {
        pid: target.pid,
        vllm: vllm_version(target).unwrap_or_else(|| "unknown".into()),
        tried,
    })
}

/// `vllm.__version__` in the target, if the module and the string can be read.
pub fn vllm_version(target: &Target) -> Option<String> {
    let py = &target.python;
    let mem = LiveProcess { pid: target.pid };
    let reader = PyReader::new(&mem, py.layout, py.types);
    let modules = reader.sys_modules(py.runtime).ok()?;
    let vllm = reader.dict_get(modules, "vllm").ok()??;
    let dict = reader.module_dict(vllm).ok()?;
    let version = reader.dict_get(dict, "__version__").ok()??;
    // The target's text: the first 64 characters, escaped for printing.
    let (text, _) = reader.str_prefix(version, 64).ok()?;
    Some(printable(&text).into_owned())
}

/// The engine object, whose scheduler the snapshots read, as `engine_of` finds it from
/// `self` of the loop's frame on the engine thread (the engine, or the in-process caller that
/// names it). Retried like the thread search, 1 ms apart, for the same reasons: an in-process
/// caller found a moment ago may have returned already, between two steps, and its frame's
/// memory then holds the next call's locals.
fn engine_object(
    reader: &PyReader<LiveProcess>,
    thread: &ThreadState,
    busy_loop: u64,
    tries: usize,
    engine_of: impl Fn(u64) -> Option<u64>,
) -> Option<u64> {
    let slot = reader.local_index(busy_loop, "self").ok()??;
    (0..tries).find_map(|_| {
        let frame = reader
            .frames(thread)
            .ok()?
            .into_iter()
            .find(|f| f.code == busy_loop);
        let Some(frame) = frame else {
            std::thread::sleep(std::time::Duration::from_millis(1));
            return None;
        };
        let this = reader
            .frame_ref(frame.addr + reader.layout.frame_localsplus + 8 * slot)
            .ok()?;
        (this != 0).then(|| engine_of(this)).flatten()
    })
}
