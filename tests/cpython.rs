//! The CPython reader against live interpreters, one module per interpreter of the matrix:
//! discovery (runtime, threads, frames), decoding of a known object graph compared with what
//! the process prints of itself, and probe points counted with real hardware watchpoints.

mod support;

use std::{
    collections::BTreeMap,
    io::Write as _,
    process::{Child, ChildStdin, Command, Stdio},
    time::Duration,
};

use serde_json::{json, Value as Json};
use support::*;
use tracer::{
    inspect::{
        cpython::{
            bytecode, layout::LayoutCheck, reader::ThreadState, AttrLocation, PyReader, ReadError,
            Value,
        },
        memory::{LiveProcess, ProcessMemory},
    },
    live::discover::{self, RuntimeSource, Target},
};

/// `tests/fixtures/objects/graph.py` running in one mode, killed when dropped.
struct Graph {
    child: Child,
    stdin: ChildStdin,
    stdout: Lines,
    /// Its first line, parsed.
    report: Json,
}

impl Graph {
    fn spawn(python: &str, args: &[&str]) -> Self {
        let mut child = Command::new(python)
            .arg(root().join("tests/fixtures/objects/graph.py"))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{python}: {e}"));
        let mut stdout = Lines::new(child.stdout.take().unwrap());
        let stdin = child.stdin.take().unwrap();
        let line = stdout.wait_for("{", Duration::from_secs(60));
        Self {
            child,
            stdin,
            stdout,
            report: serde_json::from_str(&line).unwrap(),
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn addr(&self, pointer: &str) -> u64 {
        self.report
            .pointer(pointer)
            .and_then(Json::as_u64)
            .unwrap_or_else(|| panic!("{pointer} not in the report"))
    }

    /// Sends a line and waits for the script's answer.
    fn step(&mut self, answer: &str) {
        writeln!(self.stdin, "go").unwrap();
        self.stdin.flush().unwrap();
        self.stdout.wait_for(answer, Duration::from_secs(120));
    }
}

impl Drop for Graph {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn reader<'a>(target: &'a Target, mem: &'a LiveProcess) -> PyReader<'a, LiveProcess> {
    PyReader::new(mem, target.python.layout, target.python.types)
}

/// A decoded value in the form `graph.py`'s `view` prints.
fn to_json(value: &Value) -> Json {
    let many = |items: &[Value]| items.iter().map(to_json).collect::<Vec<_>>();
    // Heap types' tp_name is the bare name; builtins' may carry a module prefix.
    let short = |name: &str| name.rsplit('.').next().unwrap().to_owned();
    match value {
        Value::None => Json::Null,
        Value::Bool(b) => json!(b),
        Value::Int(i) => json!({ "int": i.to_string() }),
        Value::BigInt => json!("bigint"),
        Value::Float(f) => json!({ "float_bits": f.to_bits().to_string() }),
        Value::Str(s) => json!({ "str": s }),
        Value::Tuple(items) => json!({ "tuple": many(items) }),
        Value::List(items) => json!({ "list": many(items) }),
        Value::Set(items) => json!({ "set": many(items) }),
        Value::Deque(items) => json!({ "deque": many(items) }),
        Value::Dict(items) => {
            json!({ "dict": items.iter().map(|(k, v)| json!([to_json(k), to_json(v)])).collect::<Vec<_>>() })
        }
        Value::Object { type_name, attrs } => json!({
            "object": short(type_name),
            "attrs": attrs.iter().map(|(k, v)| json!([k, to_json(v)])).collect::<Vec<_>>(),
        }),
        Value::Other { type_name } => json!({ "other": short(type_name) }),
    }
}

/// Retries a read that can tear while the target runs (only the worker thread's stack
/// changes here, and only if it wakes up; the object graph is still).
fn settle<T>(mut read: impl FnMut() -> Result<T, ReadError>) -> T {
    let mut last = None;
    for _ in 0..20 {
        match read() {
            Ok(v) => return v,
            Err(e) => last = Some(e),
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("read kept failing: {}", last.unwrap());
}

/// Discovery, threads and frames, and the decoding of every object kind.
fn objects(python: &str, version: &str) {
    let graph = Graph::spawn(python, &["objects"]);
    let target = discover::discover(graph.pid()).expect("discovery");
    assert!(
        target.python.version.starts_with(version),
        "{} is not {version}",
        target.python.version
    );
    let mem = LiveProcess { pid: graph.pid() };
    let r = reader(&target, &mem);
    let report = &graph.report;
    let label = format!("{python} ({})", target.python.version);

    // The runtime, by each method the file allows; the row against _Py_DebugOffsets.
    let py = &target.python;
    assert_eq!(py.runtime_found_by, RuntimeSource::Symbol);
    let file = std::fs::read(&py.binary).unwrap();
    let elf = object::File::parse(&*file).unwrap();
    let by = |method| discover::runtime_by(&elf, method).map(|(addr, _)| addr);
    let symbol = by(RuntimeSource::Symbol).unwrap();
    assert_eq!(
        by(RuntimeSource::Section),
        Some(symbol),
        "{label}: .PyRuntime"
    );
    let has_debug_offsets = version >= "3.13";
    assert_eq!(
        by(RuntimeSource::Cookie),
        has_debug_offsets.then_some(symbol),
        "{label}: cookie"
    );
    match &py.layout_check {
        LayoutCheck::Agrees { fields } if has_debug_offsets => {
            eprintln!("{label}: {fields} offsets of _Py_DebugOffsets agree with the table")
        }
        LayoutCheck::Unavailable if !has_debug_offsets => {}
        other => panic!("{label}: {other:?}"),
    }

    // Threads: both, by native id, each running the code it says.
    let threads = settle(|| r.threads(target.python.runtime));
    let thread = |who: &str| -> ThreadState {
        let tid = graph.addr(&format!("/{who}/native_id"));
        *threads
            .iter()
            .find(|t| t.native_thread_id == tid)
            .unwrap_or_else(|| panic!("{label}: no thread state for {who} ({tid}): {threads:?}"))
    };
    let (main, worker) = (thread("main"), thread("worker"));
    assert_eq!(threads.len(), 2, "{label}: {threads:?}");
    assert!(settle(|| r.stack(&main)).contains(&graph.addr("/main/code")));
    let frames = settle(|| r.frames(&worker));
    let frame = frames
        .iter()
        .find(|f| f.code == graph.addr("/worker/code"))
        .unwrap_or_else(|| panic!("{label}: worker() not on its thread's stack"));
    let locals: BTreeMap<String, u64> = settle(|| r.frame_locals(frame.addr)).into_iter().collect();
    assert_eq!(locals.get("marker"), Some(&graph.addr("/worker/marker")));
    assert_eq!(
        locals.get("local_int"),
        Some(&graph.addr("/worker/local_int"))
    );
    let code = graph.addr("/worker/code");
    let index = r.local_index(code, "marker").unwrap().unwrap();
    let slot = frame.addr + target.python.layout.frame_localsplus + 8 * index;
    assert_eq!(
        mem.read_u64(slot).unwrap() & !target.python.layout.stackref_tag_bits,
        graph.addr("/worker/marker"),
        "{label}: local slot"
    );

    // Every object: decoded view == the process's own view.
    let objects = report["objects"].as_object().unwrap();
    let mut mismatches = Vec::new();
    for (name, entry) in objects {
        let addr = entry["addr"].as_u64().unwrap();
        match r.value(addr, 4) {
            Ok(value) if to_json(&value) == entry["view"] => {}
            Ok(value) => mismatches.push(format!(
                "{name}: decoded {:.400} expected {:.400}",
                to_json(&value).to_string(),
                entry["view"].to_string()
            )),
            Err(e) => mismatches.push(format!("{name}: {e}")),
        }
    }
    assert!(mismatches.is_empty(), "{label}:\n{}", mismatches.join("\n"));

    // Typed readers on their kinds, and refusals of the wrong kinds.
    let obj = |name: &str| objects[name]["addr"].as_u64().unwrap();
    assert_eq!(r.int(obj("int_min")).unwrap(), i64::MIN);
    assert_eq!(r.int(obj("int_enum")).unwrap(), 2, "IntEnum member");
    assert!(matches!(
        r.int(obj("int_too_big")),
        Err(ReadError::TooBig { .. })
    ));
    assert!(r.is_none(obj("none")) && !r.is_none(obj("false")));
    assert!(r.bool(obj("true")).unwrap() && !r.bool(obj("false")).unwrap());
    assert_eq!(r.float(obj("float")).unwrap(), 1.5);
    assert_eq!(r.deque_items(obj("deque_blocks")).unwrap().len(), 131);
    assert_eq!(r.set_items(obj("set_removed")).unwrap().len(), 20);
    for (reader_fn, wrong) in [
        ("int", "str_ascii"),
        ("float", "int_small"),
        ("list", "tuple"),
        ("dict", "list"),
        ("deque", "list"),
        ("set", "dict"),
        ("str", "int_small"),
        ("bool", "int_small"),
    ] {
        let addr = obj(wrong);
        let result = match reader_fn {
            "int" => r.int(addr).map(drop),
            "float" => r.float(addr).map(drop),
            "list" => r.list_items(addr).map(drop),
            "dict" => r.dict_items(addr).map(drop),
            "deque" => r.deque_items(addr).map(drop),
            "set" => r.set_items(addr).map(drop),
            "str" => r.str(addr).map(drop),
            _ => r.bool(addr).map(drop),
        };
        assert!(
            matches!(result, Err(ReadError::WrongType { .. })),
            "{label}: {reader_fn} of {wrong}: {result:?}"
        );
    }
    // Torn pointers (into the middle of objects) are refused, never decoded. Heap objects
    // start 16-byte aligned (pymalloc blocks and malloc), so 8 or 24 bytes in is never
    // another object's start; statically allocated ones (singletons, small ints, the
    // empty str and tuple) are packed, so they are left out.
    let statics = [
        "none",
        "true",
        "false",
        "int_zero",
        "int_small",
        "int_negative",
        "str_empty",
        "tuple_empty",
    ];
    for (name, entry) in objects
        .iter()
        .filter(|(n, _)| !statics.contains(&n.as_str()))
    {
        let addr = entry["addr"].as_u64().unwrap();
        assert_eq!(addr % 16, 0, "{label}: {name} is not 16-byte aligned");
        for skew in [8, 24] {
            let decoded = r.value(addr + skew, 4);
            assert!(
                decoded.is_err(),
                "{label}: {name} + {skew} decoded: {decoded:?}"
            );
        }
    }

    // Attributes: every storage kind, located, and re-read through the location.
    let mut kinds = BTreeMap::new();
    for (name, attrs) in report["attrs"].as_object().unwrap() {
        let addr = obj(name);
        for (attr, expected) in attrs.as_object().unwrap() {
            let location = r
                .attr_location(addr, attr)
                .unwrap()
                .unwrap_or_else(|| panic!("{label}: {name}.{attr} not found"));
            assert_eq!(
                r.read_location(addr, &location).unwrap(),
                expected.as_u64(),
                "{label}: {name}.{attr} at {location:?}"
            );
            assert_eq!(r.attr(addr, attr).unwrap(), expected.as_u64());
            kinds.insert(format!("{name}.{attr}"), location);
        }
        assert_eq!(r.attr(addr, "no_such_attribute").unwrap(), None);
    }
    assert_eq!(r.attr(obj("slotted"), "unset").unwrap(), None);
    assert_eq!(r.attr(obj("partial"), "a").unwrap(), None, "deleted");
    assert!(matches!(kinds["slotted.x"], AttrLocation::Slot { .. }));
    assert!(matches!(
        kinds["slotted_child.x"],
        AttrLocation::Slot { .. }
    ));
    assert!(matches!(
        kinds["own_dict.z"],
        AttrLocation::DictEntry { .. }
    ));
    assert!(matches!(
        kinds["function.tag"],
        AttrLocation::DictEntry { .. }
    ));
    assert!(matches!(kinds["plain.a"], AttrLocation::Values { .. }));
    eprintln!("{label}: plain.a at {:?}", kinds["plain.a"]);
    eprintln!("{label}: materialized.a at {:?}", kinds["materialized.a"]);
    eprintln!("{label}: reordered.a at {:?}", kinds["reordered.a"]);

    // Module, class, function, code.
    let module_dict = r.module_dict(graph.addr("/module")).unwrap();
    let constant = r.dict_get(module_dict, "CONSTANT").unwrap().unwrap();
    assert_eq!(r.str(constant).unwrap(), "module constant");
    let class_dict = r.class_dict(graph.addr("/class_plain")).unwrap();
    let init = r.dict_get(class_dict, "__init__").unwrap().unwrap();
    let init_code = r.function_code(init).unwrap();
    assert_eq!(init_code, graph.addr("/plain_init_code"));
    let code = r.code(init_code).unwrap();
    let qualname = if version == "3.10" {
        "__init__"
    } else {
        "Plain.__init__"
    };
    assert_eq!(code.qualname, qualname);
    assert_eq!(r.local_names(init_code).unwrap(), ["self", "a", "b"]);
    let sample = r.code(graph.addr("/lines_sample/code")).unwrap();
    let decoded: Vec<Json> = sample
        .lines
        .iter()
        .map(|l| json!([l.start, l.end, l.line]))
        .collect();
    assert_eq!(
        Json::Array(decoded),
        report["lines_sample"]["lines"],
        "{label}: co_lines()"
    );
    let ops = target.python.layout.opcodes;
    let instrs = bytecode::instructions(&code.bytecode, ops);
    let entry = bytecode::entry_point(&instrs, ops).unwrap();
    if let Some(resume) = ops.resume {
        assert_eq!(
            instrs.iter().find(|i| i.offset == entry).unwrap().op,
            resume
        );
    }
}

/// One hardware breakpoint counter on a thread (perf_event_open, no eBPF): how often the
/// thread touched `len` bytes at `addr`.
struct Watchpoint(std::os::fd::OwnedFd);

impl Watchpoint {
    fn new(tid: u32, addr: u64, len: u64) -> Self {
        use std::os::fd::FromRawFd;
        // struct perf_event_attr, PERF_ATTR_SIZE_VER5 (112 bytes).
        let mut attr = [0u64; 14];
        attr[0] = 5 | (112 << 32); // type PERF_TYPE_BREAKPOINT, size
        attr[5] = 1 << 5 | 1 << 6; // flags: exclude_kernel, exclude_hv
        attr[6] = 3 << 32; // bp_type HW_BREAKPOINT_RW (x86 has no read-only watch)
        attr[7] = addr; // bp_addr
        attr[8] = len; // bp_len
                       // SAFETY: attr is a valid perf_event_attr of the size it declares.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_perf_event_open,
                attr.as_ptr(),
                tid as libc::pid_t,
                -1,
                -1,
                0,
            )
        };
        assert!(
            fd >= 0,
            "perf_event_open: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: a new fd we own.
        Self(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) })
    }

    fn count(&self) -> u64 {
        use std::os::fd::AsRawFd;
        let mut count = 0u64;
        // SAFETY: reads one u64 into `count`.
        let n = unsafe { libc::read(self.0.as_raw_fd(), (&mut count as *mut u64).cast(), 8) };
        assert_eq!(n, 8);
        count
    }
}

/// Calls of the fixture's functions per batch.
const CALLS: u64 = 1000;

/// Probe points of `target()` (entry) and `step()` (entry, after `engine.run()`): exactly
/// one hit per call with a 1-byte watch, for calls from Python and through `map`.
fn probes(python: &str) {
    let _serial = exclusive();
    let calls = CALLS.to_string();
    let mut graph = Graph::spawn(python, &["probe", &calls]);
    let target = discover::discover(graph.pid()).unwrap();
    let mem = LiveProcess { pid: graph.pid() };
    let r = reader(&target, &mem);
    let ops = target.python.layout.opcodes;
    let tid = graph.addr("/native_id") as u32;
    let code_of = |name: &str| r.code(graph.addr(&format!("/{name}"))).unwrap();
    let (target_code, step_code) = (code_of("target"), code_of("step"));
    let entry = |code: &tracer::inspect::cpython::reader::Code| {
        let instrs = bytecode::instructions(&code.bytecode, ops);
        code.bytecode_addr + bytecode::entry_point(&instrs, ops).unwrap() as u64
    };
    let step_instrs = bytecode::instructions(&step_code.bytecode, ops);
    let after_run = step_code.bytecode_addr
        + bytecode::after_call(&step_instrs, &step_code.names, "run", ops).unwrap() as u64;
    let watches = [
        ("target entry", Watchpoint::new(tid, entry(&target_code), 1)),
        ("step entry", Watchpoint::new(tid, entry(&step_code), 1)),
        ("after run()", Watchpoint::new(tid, after_run, 1)),
        (
            "target entry, 2 bytes",
            Watchpoint::new(tid, entry(&target_code), 2),
        ),
    ];
    let label = format!("{python} ({})", target.python.version);
    let mut before = [0; 4];
    for batch in ["inline", "map"] {
        graph.step(&format!("done {batch}"));
        let counts: Vec<u64> = watches.iter().map(|(_, w)| w.count()).collect();
        for (i, (name, _)) in watches.iter().enumerate() {
            let hits = counts[i] - before[i];
            eprintln!(
                "{label}: {batch}: {name}: {hits} hits for {CALLS} calls ({:.2}/call)",
                hits as f64 / CALLS as f64
            );
            if i < 3 {
                assert_eq!(hits, CALLS, "{label}: {batch}: {name}");
            } else {
                assert!(hits >= CALLS, "{label}: {batch}: {name}");
            }
        }
        before.copy_from_slice(&counts);
    }
}

macro_rules! interpreter {
    ($module:ident, $python:expr, $version:expr) => {
        mod $module {
            use super::*;

            #[test]
            fn discovers_and_decodes_a_known_object_graph() {
                objects(&$python, $version);
            }

            #[test]
            fn one_watch_hit_per_call_inline_and_from_c() {
                probes(&$python);
            }
        }
    };
}

/// Rows whose interpreter `cargo xtask python` makes: skipped where it is absent.
macro_rules! built_interpreter {
    ($module:ident, $minor:expr, $exe:expr) => {
        mod $module {
            use super::*;

            #[test]
            fn discovers_and_decodes_a_known_object_graph() {
                if let Some(python) = built_python($minor, $exe) {
                    objects(&python, $minor);
                }
            }

            #[test]
            fn one_watch_hit_per_call_inline_and_from_c() {
                if let Some(python) = built_python($minor, $exe) {
                    probes(&python);
                }
            }
        }
    };
}

interpreter!(pyenv_3_10, pyenv("3.10.13"), "3.10");
interpreter!(pyenv_3_11, pyenv("3.11.7"), "3.11");
interpreter!(pyenv_3_12, pyenv("3.12.1"), "3.12");
interpreter!(pyenv_3_13, pyenv("3.13.0"), "3.13");
// Debian's: statically linked, stripped (dynamic symbols only), with USDT notes.
interpreter!(debian_3_11, String::from("/usr/bin/python3.11"), "3.11");
// Debian's 3.14 (`cargo xtask python 3.14`): its static, stripped executable (GCC, PGO +
// LTO; `_PyEval_EvalFrameDefault` there is a 1 184-byte part of the loop), and CPython's
// own main linked against Debian's libpython3.14.so.
built_interpreter!(debian_3_14, "3.14", "python3.14");
built_interpreter!(debian_3_14_shared, "3.14", "python3.14-shared");
