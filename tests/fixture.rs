//! The fixture engine itself, on every interpreter we have: its step keeps vLLM's call
//! shape, and its ground truth and run protocol (--wait-go, SIGTERM) work. The tracer's
//! accuracy tests lean on this, so it is checked, not assumed.

mod support;

use support::{pyenv, root};

fn selfcheck(python: &str) {
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
}

#[test]
fn fixture_engine_selfcheck_on_every_interpreter() {
    for version in ["3.10.13", "3.11.7", "3.12.1", "3.13.0"] {
        selfcheck(&pyenv(version));
    }
    selfcheck("/usr/bin/python3.11");
}
