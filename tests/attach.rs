//! `tracer attach` on the fixture engine, real probes on real interpreters, checked against
//! the fixture's own in-process timers.

mod support;

use std::{path::Path, time::Duration};

use support::*;
use tracer::live::sinks::StepRow;

/// Measured steps per run: the issue asks for ≥ 2 000.
const STEPS: usize = 2_000;
/// Bounds on |traced − in-process| per phase. One watchpoint trap costs microseconds on a
/// VM; both clocks see one trap per phase boundary, so errors are the trap's jitter plus
/// whatever the host does between the trap and the fixture's clock read (a preemption there
/// adds its whole length). p50 measures the tracer (≤ 0.3 µs on the dev VM). p99: 50 µs on a
/// quiet machine (16–34 µs measured on a noisy host), or, on a machine busy with other work,
/// twice the phase's own jitter in the same run: how far the fixture's own timing of that
/// phase strays from its median at the 99th percentile (a CI run with two busy loops and two
/// builds saw update p99 4.2 ms against a schedule-phase jitter of 91 µs: preemptions land in
/// the update phase, and the fixed-cost schedule phase's jitter did not show them).
const P50_BOUND_NS: i64 = 2_000;
const P99_BOUND_NS: i64 = 50_000;

/// p99 of |phase − its median| in the fixture's own timings of phase `k` (schedule, execute,
/// update, step): what the host adds to that work, in this run.
fn own_jitter_ns(truth: &[&TruthRow], k: usize) -> i64 {
    let mut phase: Vec<i64> = truth.iter().map(|t| t.phases()[k] as i64).collect();
    let median = percentile(&mut phase, 50.0);
    let mut strays: Vec<i64> = phase.iter().map(|s| (s - median).abs()).collect();
    percentile(&mut strays, 99.0)
}

/// Starts a fixture that waits, attaches, lets exactly `STEPS` steps run, and checks that
/// every one of them is in steps.csv with phase times matching the fixture's own timers.
fn traced_steps_match_ground_truth(python: &str) {
    let _serial = exclusive();
    let dir = tempfile::tempdir().unwrap();
    let truth_path = dir.path().join("truth.csv");
    let out = dir.path().join("out");
    let steps = STEPS.to_string();
    let mut fixture = Fixture::spawn(
        python,
        &[
            "--wait-go",
            "--steps",
            &steps,
            "--execute-ms",
            "0.5",
            "--truth",
            truth_path.to_str().unwrap(),
        ],
    );
    // Phases only: what is checked here is the probes' timing; snapshots hold the thread
    // (tests/requests.rs checks them), and on a 2-core VM their userspace work competes
    // with the target for CPU.
    let tracer = Tracer::attach_with(fixture.pid, &out, &["--phases-only"]);
    fixture.go();
    assert!(fixture.wait().success());
    // The target's exit ends the trace.
    let (status, stderr) = tracer.finish(Duration::from_secs(30));
    assert!(status.success(), "tracer failed: {stderr:?}");
    assert!(
        stderr.iter().any(|l| l.contains("target exited")),
        "{stderr:?}"
    );

    let truth: Vec<TruthRow> = read_csv(&truth_path);
    let traced: Vec<StepRow> = read_csv(&out.join("steps.csv"));
    assert_eq!(truth.len(), STEPS);
    assert_eq!(traced.len(), truth.len(), "steps lost or invented");
    check_phases(&truth.iter().collect::<Vec<_>>(), &traced, python);
    let run = read_run_json(&out);
    assert_eq!(run["counters"]["ring_buffer_drops"], 0);
    assert_eq!(run["totals"]["steps"], STEPS as u64);
    assert_eq!(run["end_reason"], "target exited");
}

/// Pairs each traced step with its truth row and bounds the phase errors.
fn check_phases(truth: &[&TruthRow], traced: &[StepRow], label: &str) {
    let mut errors: [Vec<i64>; 4] = Default::default();
    let mut previous_end = 0;
    for (t, s) in truth.iter().zip(traced) {
        // Pairing: the step-entry trap fires after the fixture's previous step ended and
        // before this step's first timestamp (however long the thread is descheduled between).
        assert!(
            previous_end < s.start_ns && s.start_ns <= t.start_ns,
            "step {}: traced start {} not between the fixture's previous step end {previous_end} and start {}",
            t.step,
            s.start_ns,
            t.start_ns
        );
        previous_end = t.after_update_ns;
        let traced_phases = [s.schedule_ns, s.execute_ns, s.update_ns, s.step_ns];
        for (k, (tp, sp)) in t.phases().iter().zip(traced_phases).enumerate() {
            errors[k].push(sp as i64 - *tp as i64);
        }
    }
    for (k, (name, errs)) in ["schedule", "execute", "update", "step"]
        .iter()
        .zip(errors.iter_mut())
        .enumerate()
    {
        let jitter = own_jitter_ns(truth, k);
        let p99_bound = P99_BOUND_NS.max(2 * jitter);
        let (p50, p99) = (percentile(errs, 50.0), percentile(errs, 99.0));
        let max = percentile(errs, 100.0);
        eprintln!(
            "{label}: {name} |error| p50 {p50} ns, p99 {p99} ns, max {max} ns (own jitter {jitter} ns)"
        );
        assert!(
            p50 <= P50_BOUND_NS,
            "{label}: {name} p50 error {p50} ns > {P50_BOUND_NS} ns"
        );
        assert!(
            p99 <= p99_bound,
            "{label}: {name} p99 error {p99} ns > {p99_bound} ns (own jitter {jitter} ns)"
        );
    }
}

#[test]
fn steps_match_ground_truth_pyenv_3_10() {
    // 3.10: no RESUME; the watches sit on the `co_code` bytes object's instructions.
    traced_steps_match_ground_truth(&pyenv("3.10.13"));
}

#[test]
fn steps_match_ground_truth_pyenv_3_11() {
    traced_steps_match_ground_truth(&pyenv("3.11.7"));
}

#[test]
fn steps_match_ground_truth_debian_3_11_stripped() {
    // Debian's interpreter: statically linked, stripped, only dynamic symbols.
    assert!(Path::new("/usr/bin/python3.11").exists());
    traced_steps_match_ground_truth("/usr/bin/python3.11");
}

#[test]
fn steps_match_ground_truth_pyenv_3_12() {
    traced_steps_match_ground_truth(&pyenv("3.12.1"));
}

#[test]
fn steps_match_ground_truth_pyenv_3_13() {
    traced_steps_match_ground_truth(&pyenv("3.13.0"));
}

#[test]
fn steps_match_ground_truth_debian_3_14_static() {
    // Debian's 3.14 (`cargo xtask python 3.14`): static, stripped, its loop split by PGO.
    if let Some(python) = built_python("3.14", "python3.14") {
        traced_steps_match_ground_truth(&python);
    }
}

#[test]
fn steps_match_ground_truth_debian_3_14_shared() {
    // The same interpreter as Debian's libpython3.14.so, under CPython's own main.
    if let Some(python) = built_python("3.14", "python3.14-shared") {
        traced_steps_match_ground_truth(&python);
    }
}

/// The usual case: attach to an engine that is already busy, stop with Ctrl-C. Every step
/// the fixture ran between the first and the last traced step must be in steps.csv.
#[test]
fn attach_mid_run_and_interrupt_keeps_every_step_in_window() {
    let _serial = exclusive();
    let dir = tempfile::tempdir().unwrap();
    let truth_path = dir.path().join("truth.csv");
    let out = dir.path().join("out");
    let mut fixture = Fixture::spawn(
        &pyenv("3.11.7"),
        &[
            "--execute-ms",
            "0.3",
            "--truth",
            truth_path.to_str().unwrap(),
        ],
    );
    let tracer = Tracer::attach_with(fixture.pid, &out, &["--phases-only"]);
    wait_for_rows(&out, 500);
    tracer.signal(libc::SIGINT);
    let (status, stderr) = tracer.finish(Duration::from_secs(30));
    assert!(status.success(), "{stderr:?}");
    fixture.signal(libc::SIGTERM);
    assert!(fixture.wait().success());

    let truth: Vec<TruthRow> = read_csv(&truth_path);
    let traced: Vec<StepRow> = read_csv(&out.join("steps.csv"));
    assert!(traced.len() > 500, "only {} steps traced", traced.len());
    // The truth row of the first traced step: the first one starting after it.
    let first = truth
        .iter()
        .position(|t| t.start_ns > traced[0].start_ns)
        .unwrap();
    let window: Vec<&TruthRow> = truth[first..first + traced.len()].iter().collect();
    // The next truth step after the window must start after the last traced one ended.
    let after = &truth[first + traced.len()];
    assert!(
        after.start_ns > traced.last().unwrap().start_ns + traced.last().unwrap().step_ns,
        "a step in the window is missing"
    );
    check_phases(&window, &traced, "mid-run 3.11.7");
    let run = read_run_json(&out);
    assert_eq!(run["end_reason"], "interrupted (SIGINT)");
}

#[test]
fn duration_ends_the_trace() {
    let _serial = exclusive();
    let dir = tempfile::tempdir().unwrap();
    let fixture = Fixture::spawn(&pyenv("3.11.7"), &["--execute-ms", "1"]);
    let out = dir.path().join("out");
    let started = std::time::Instant::now();
    let (status, stderr) = run_tracer(&[
        "attach",
        "--pid",
        &fixture.pid.to_string(),
        "-o",
        out.to_str().unwrap(),
        "-d",
        "0.5",
    ]);
    assert!(status.success(), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(stderr.contains("duration reached"), "{stderr}");
    let traced: Vec<StepRow> = read_csv(&out.join("steps.csv"));
    assert!(!traced.is_empty());
    assert!(traced
        .iter()
        .all(|s| s.start_rel_ns >= 0 && s.start_rel_ns < 2_000_000_000));
}

// ---- bad input: a clear message and a non-zero exit ----

fn assert_fails_with(args: &[&str], needle: &str) {
    let (status, stderr) = run_tracer(args);
    assert!(!status.success(), "expected failure for {args:?}");
    assert!(stderr.contains(needle), "expected {needle:?} in: {stderr}");
}

#[test]
fn pid_that_does_not_exist() {
    let pid_max: u32 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_fails_with(
        &["attach", "--pid", &pid_max.to_string()],
        "no process with pid",
    );
}

#[test]
fn process_that_is_not_python() {
    let mut sleeper = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();
    assert_fails_with(
        &["attach", "--pid", &sleeper.id().to_string()],
        "is not a CPython process",
    );
    sleeper.kill().unwrap();
    sleeper.wait().unwrap();
}

#[test]
fn python_without_vllm() {
    let idle = IdlePython::spawn(&pyenv("3.11.7"));
    assert_fails_with(
        &["attach", "--pid", &idle.pid()],
        "has not imported vllm.v1.engine.core",
    );
}

#[test]
fn unsupported_python_version() {
    let idle = IdlePython::spawn(&pyenv("3.9.18"));
    assert_fails_with(
        &["attach", "--pid", &idle.pid()],
        "runs CPython 3.9, which this tracer does not support (supported: 3.10 to 3.14)",
    );
}

#[test]
fn unsupported_newer_python_version() {
    // A CPython newer than the newest row: Debian's 3.15 (`cargo xtask python 3.15`).
    let Some(python) = built_python("3.15", "python3.15") else {
        return;
    };
    let idle = IdlePython::spawn(&python);
    assert_fails_with(&["attach", "--pid", &idle.pid()], "runs CPython 3.15.");
    assert_fails_with(
        &["attach", "--pid", &idle.pid()],
        "which this tracer does not support (supported: 3.10 to 3.14)",
    );
}

#[test]
fn not_root() {
    let idle = IdlePython::spawn(&pyenv("3.11.7"));
    let out = std::process::Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            tracer_bin(),
            "attach",
            "--pid",
            &idle.pid(),
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("run as root, e.g. with sudo"), "{stderr}");
}

#[test]
fn unwritable_output_directory() {
    let fixture = Fixture::spawn(&pyenv("3.11.7"), &["--execute-ms", "1"]);
    assert_fails_with(
        &[
            "attach",
            "--pid",
            &fixture.pid.to_string(),
            "-o",
            "/proc/no-such-dir",
        ],
        "creating /proc/no-such-dir",
    );
}

#[test]
fn sigterm_and_sighup_end_the_trace_with_complete_files() {
    let _serial = exclusive();
    let fixture = Fixture::spawn(&pyenv("3.11.7"), &["--execute-ms", "0.5"]);
    for (signal, reason) in [
        (libc::SIGTERM, "terminated (SIGTERM)"),
        (libc::SIGHUP, "hung up (SIGHUP)"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let tracer = Tracer::attach(fixture.pid, &out);
        wait_for_rows(&out, 100);
        tracer.signal(signal);
        let (status, stderr) = tracer.finish(Duration::from_secs(30));
        assert!(status.success(), "{stderr:?}");
        let run = read_run_json(&out);
        assert_eq!(run["end_reason"], reason);
        let traced: Vec<StepRow> = read_csv(&out.join("steps.csv"));
        assert_eq!(run["totals"]["steps"], traced.len() as u64);
        assert!(traced.len() > 100, "{} steps", traced.len());
    }
}
