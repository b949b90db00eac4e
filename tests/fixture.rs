//! The fixture engine itself, on every interpreter we have: its step keeps vLLM's call
//! shape, its scheduler keeps its limits and produces every waiting reason, its ground-truth
//! files agree with each other, and its run protocol (--wait-go, SIGTERM) works. The
//! tracer's accuracy tests lean on this, so it is checked, not assumed.

mod support;

use support::{pyenv, root};

/// Runs selfcheck.py and returns the digest of its deterministic step-mode run.
fn selfcheck(python: &str) -> String {
    let out = std::process::Command::new(python)
        .arg(root().join("tests/fixtures/engine/selfcheck.py"))
        .arg("--quick")
        .output()
        .expect("running selfcheck.py");
    let text = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{python}: fixture selfcheck failed:\n{text}"
    );
    text.lines()
        .find_map(|l| l.trim().strip_prefix("digest "))
        .unwrap_or_else(|| panic!("{python}: no digest line in:\n{text}"))
        .to_owned()
}

#[test]
fn fixture_engine_selfcheck_on_every_interpreter() {
    let pythons = ["3.10.13", "3.11.7", "3.12.1", "3.13.0"]
        .map(pyenv)
        .into_iter()
        .chain(["/usr/bin/python3.11".to_owned()]);
    let digests: Vec<(String, String)> = pythons.map(|p| (selfcheck(&p), p)).collect();
    // Same seed and flags: the same batches, preemptions and finishes on every Python.
    assert!(
        digests.iter().all(|(d, _)| *d == digests[0].0),
        "step-mode runs differ between interpreters: {digests:?}"
    );
}
