//! `cargo xtask quickstart [--clone]`: runs README.md's quick start exactly as written (the
//! shell block between `<!-- quickstart:begin -->` and `<!-- quickstart:end -->`) with
//! `bash -e`, and checks that it ended with a report. `--clone` runs it in a fresh
//! `git clone` of this checkout's HEAD (no .tools/, no target/: setup builds everything).
//!
//! The README is what a newcomer copies; this keeps it from drifting from what works.

use std::{path::Path, process::Command, time::Instant};

use anyhow::{ensure, Context as _, Result};

use crate::{exec, workspace_root};

const BEGIN: &str = "<!-- quickstart:begin -->";
const END: &str = "<!-- quickstart:end -->";

pub fn run(clone: bool) -> Result<()> {
    let root = workspace_root();
    let script = script(&std::fs::read_to_string(root.join("README.md"))?)?;
    let dir = if clone {
        let dir = std::env::temp_dir().join(format!("tracer-quickstart-{}", std::process::id()));
        exec(
            Command::new("git")
                .arg("clone")
                .arg("-q")
                .arg(&root)
                .arg(&dir),
        )?;
        dir
    } else {
        root
    };
    let report = dir.join("out/quick/report/index.html");
    let _ = std::fs::remove_file(&report);
    eprintln!(
        "quickstart: running README's quick start in {}:\n{script}",
        dir.display()
    );
    let started = Instant::now();
    // Cargo's variables would point the inner `cargo xtask` at this build, not the clone's.
    let status = Command::new("bash")
        .args(["-e", "-c", &script])
        .current_dir(&dir)
        .env_remove("CARGO_MANIFEST_DIR")
        .env_remove("CARGO")
        .status()?;
    ensure!(status.success(), "README's quick start failed ({status})");
    ensure!(
        report.exists(),
        "README's quick start ended without {}",
        report.display()
    );
    eprintln!(
        "quickstart: exit 0 and {} written, {:.0} s in all",
        report.display(),
        started.elapsed().as_secs_f64()
    );
    if clone {
        remove_clone(&dir)?;
    }
    Ok(())
}

/// The quick start's shell lines, as a newcomer would paste them.
fn script(readme: &str) -> Result<String> {
    let (_, rest) = readme
        .split_once(BEGIN)
        .context("README has no quickstart:begin")?;
    let (section, _) = rest
        .split_once(END)
        .context("README has no quickstart:end")?;
    let (_, block) = section
        .split_once("```")
        .context("no code block in the quick start")?;
    let (_, block) = block
        .split_once('\n')
        .context("code block without a newline")?;
    let (block, _) = block.split_once("```").context("unclosed code block")?;
    ensure!(!block.trim().is_empty(), "empty quick start");
    Ok(block.to_owned())
}

fn remove_clone(dir: &Path) -> Result<()> {
    std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_readme_quick_start_is_found_and_its_sudo_lines_name_the_binary() {
        let readme = std::fs::read_to_string(workspace_root().join("README.md")).unwrap();
        let script = script(&readme).unwrap();
        assert!(script.contains("cargo xtask setup"), "{script}");
        assert!(script.contains("tracer report out/quick"), "{script}");
        // sudo's secure_path drops the user's PATH: `sudo tracer` is "command not found".
        for line in script.lines().filter(|l| l.starts_with("sudo ")) {
            assert!(
                line.starts_with("sudo ./target/release/tracer ")
                    || line.starts_with("sudo env PATH=\"$PATH\" "),
                "{line}"
            );
        }
    }

    #[test]
    fn script_is_the_block_between_the_markers() {
        let readme = "intro\n```\nnot this\n```\n<!-- quickstart:begin -->\ntext\n```\necho a\necho b   # comment\n```\n<!-- quickstart:end -->\n";
        assert_eq!(script(readme).unwrap(), "echo a\necho b   # comment\n");
        assert!(script("no markers").is_err());
    }
}
