//! A newcomer's first commands: a closed pipe (`tracer … | head`), `--help`, a negative
//! duration.

mod support;

use std::process::{Command, Stdio};

use support::{
    synthetic::{synthetic_run, COSTS},
    *,
};

/// `tracer ARGS` with stdout a pipe whose reader is gone, as in `tracer … | head` once head
/// has read its lines and exited. Returns the status and stderr.
fn tracer_into_closed_pipe(args: &[&str]) -> (std::process::ExitStatus, String) {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = Command::new(tracer_bin())
        .args(args)
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn closed_stdout_pipe_exits_0_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    synthetic_run(&a, 300, COSTS, 3, "0.10.1");
    synthetic_run(&b, 300, COSTS, 5, "0.11.0");
    let fixture = Fixture::spawn(&pyenv("3.12.1"), &["--execute-ms", "1"]);
    let pid = fixture.pid.to_string();
    let report_out = dir.path().join("report");
    let trace_out = dir.path().join("trace.json");
    let features_out = dir.path().join("features.csv");
    let commands: &[&[&str]] = &[
        &["probes", "--pid", &pid, "--json"],
        &["probes", "--pid", &pid],
        &["report", s(&a), "-o", s(&report_out)],
        &["compare", s(&a), s(&b)],
        &["compare", s(&a), s(&b), "--json"],
        &[
            "export",
            s(&a),
            "--format",
            "features",
            "-o",
            s(&features_out),
        ],
        &["export-trace", s(&a), "-o", s(&trace_out)],
        &["doctor", "--markdown"],
        &["--help"],
    ];
    for args in commands {
        // Each has something to write, so the closed pipe is really hit.
        assert!(!tracer_ok(args).is_empty(), "{args:?} wrote nothing");
        let (status, stderr) = tracer_into_closed_pipe(args);
        assert_eq!(status.code(), Some(0), "{args:?}: {stderr}");
        assert!(stderr.is_empty(), "{args:?} said: {stderr}");
    }
}

#[test]
fn every_subcommand_help_says_what_it_does() {
    for sub in [
        "attach",
        "run",
        "doctor",
        "probes",
        "report",
        "compare",
        "export",
        "export-trace",
    ] {
        let help = tracer_ok(&[sub, "--help"]);
        let about = help.lines().next().unwrap_or_default();
        assert!(
            !about.trim().is_empty() && !about.starts_with("Usage:"),
            "`tracer {sub} --help` starts without a description:\n{help}"
        );
    }
    // attach names every capability doctor checks.
    let attach = tracer_ok(&["attach", "--help"]);
    for cap in ["CAP_BPF", "CAP_PERFMON", "CAP_SYS_PTRACE"] {
        assert!(attach.contains(cap), "attach --help lacks {cap}:\n{attach}");
    }
    // The top-level help describes every export format, not just seed.
    let top = tracer_ok(&["--help"]);
    for format in ["seed", "features", "blis", "vidur"] {
        assert!(top.contains(format), "tracer --help lacks {format}:\n{top}");
    }
}

#[test]
fn negative_seconds_get_their_own_message() {
    for args in [
        &["attach", "--pid", "1", "--duration", "-1"][..],
        &["attach", "--pid", "1", "-d", "-0.5"],
        &["run", "--duration", "-1", "--", "true"],
        &["run", "--wait", "-3", "--", "true"],
    ] {
        let (status, stdout, stderr) = tracer(args);
        assert_eq!(status.code(), Some(2), "{args:?}: {stderr}{stdout}");
        assert!(
            stderr.contains("must be 0 seconds or more") && !stderr.contains("unexpected argument"),
            "{args:?}: {stderr}"
        );
    }
}
