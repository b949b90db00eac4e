//! Safe to run as root (issue 18): what the tracer writes cannot be redirected by links
//! planted in an output directory, its files belong to the user behind sudo, `tracer run`'s
//! command runs as that user and does not outlive the tracer, and `tracer run` follows a
//! command through wrappers that exec the interpreter later (issue 19).
//!
//! The tests run as root and play the sudo user with `SUDO_UID`/`SUDO_GID` = 65534 (nobody,
//! nogroup): their processes need nothing from root's home, so they use Debian's
//! `/usr/bin/python3.11`, not the pyenv interpreters under /root.

mod support;

use std::{
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use support::{exclusive, pyenv, read_csv, read_run_json, root, s, tracer_bin, wait_until, Lines};
use tracer::live::sinks::StepRow;

/// The sudo user the tests play.
const NOBODY: u32 = 65534;
/// World-readable interpreter (pyenv's live under /root, mode 0700).
const SYSTEM_PYTHON: &str = "/usr/bin/python3.11";

/// A temporary directory others can enter (tempfile makes them 0700).
fn open_tempdir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// A directory owned by nobody, as a user's own output directory would be.
fn nobodys_dir(path: &Path) -> PathBuf {
    std::fs::create_dir(path).unwrap();
    std::os::unix::fs::chown(path, Some(NOBODY), Some(NOBODY)).unwrap();
    path.to_path_buf()
}

/// `tracer ARGS`, as if run with `sudo` by nobody (`sudo = true`) or plainly as root; at
/// most `timeout` (a hang fails the test).
fn tracer(args: &[&str], sudo: bool, timeout: Duration) -> Output {
    let mut command = Command::new(tracer_bin());
    command
        .args(args)
        .env_remove("SUDO_UID")
        .env_remove("SUDO_GID")
        .env_remove("SUDO_USER")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if sudo {
        command
            .env("SUDO_UID", NOBODY.to_string())
            .env("SUDO_GID", NOBODY.to_string())
            .env("SUDO_USER", "nobody");
    }
    let mut child = command.spawn().unwrap();
    let deadline = Instant::now() + timeout;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("tracer {args:?} still running after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// (uid, gid) of `path` itself (a link is not followed).
fn owner(path: &Path) -> (u32, u32) {
    let meta = std::fs::symlink_metadata(path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    (meta.uid(), meta.gid())
}

/// A small trace directory (steps.csv only) for the commands that read one.
fn minimal_trace(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let mut writer = csv::Writer::from_path(dir.join("steps.csv")).unwrap();
    for step in 0..20u64 {
        writer
            .serialize(StepRow {
                step,
                pid: 7,
                tid: 7,
                start_ns: 1_000_000 + step * 1_000_000,
                start_rel_ns: (step * 1_000_000) as i64,
                schedule_ns: 20_000,
                execute_ns: 900_000,
                update_ns: 10_000,
                step_ns: 930_000,
                ..StepRow::default()
            })
            .unwrap();
    }
    writer.flush().unwrap();
}

/// Live members of process group `pgid` (zombies are dead: the container's init may never
/// reap them).
fn group_members(pgid: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            let Some((_, rest)) = stat.rsplit_once(')') else {
                return false;
            };
            let fields: Vec<&str> = rest.split_whitespace().collect();
            fields.first() != Some(&"Z") && fields.get(2) == Some(&pgid.to_string().as_str())
        })
        .collect()
}

/// Waits until `pgid` has at least `n` live members (the command has started them all).
fn wait_for_members(pgid: u32, n: usize) {
    wait_until(
        Duration::from_secs(60),
        &format!("{n} members of group {pgid}"),
        || group_members(pgid).len() >= n,
    );
}

/// The command's pid from the tracer's `tracer: started … (pid N, …)` line.
fn started_pid(line: &str) -> u32 {
    let after = line.split("(pid ").nth(1).expect(line);
    after
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

// ---------------------------------------------------------------------------------------
// Output files
// ---------------------------------------------------------------------------------------

/// The user owns the `-o` directory and planted `steps.csv` and `run.json` there as links to
/// root's files: the tracer (as root, under sudo) refuses before it starts the command, and
/// the root files are unchanged. A FIFO at a file name is refused without blocking; links in
/// the report directory, at `trace.json` and at an `export -o` path are refused too.
#[test]
fn planted_links_and_fifos_are_refused_and_their_targets_unchanged() {
    let tmp = open_tempdir();
    let victims: Vec<PathBuf> = [
        "passwd-like",
        "shadow-like",
        "report-victim",
        "export-victim",
    ]
    .iter()
    .map(|name| {
        let path = tmp.path().join(name);
        std::fs::write(&path, format!("root's {name}\n")).unwrap();
        path
    })
    .collect();
    let unchanged = || {
        for v in &victims {
            let name = v.file_name().unwrap().to_str().unwrap();
            assert_eq!(
                std::fs::read_to_string(v).unwrap(),
                format!("root's {name}\n"),
                "{v:?} was written through a link"
            );
            assert_eq!(owner(v), (0, 0));
        }
    };

    let out = nobodys_dir(&tmp.path().join("out"));
    std::os::unix::fs::symlink(&victims[0], out.join("steps.csv")).unwrap();
    std::os::unix::fs::symlink(&victims[1], out.join("run.json")).unwrap();
    let ran = tmp.path().join("command-ran");
    let command = format!("touch {}", s(&ran));
    let result = tracer(
        &["run", "-o", s(&out), "--", "sh", "-c", &command],
        true,
        Duration::from_secs(60),
    );
    let stderr = text(&result.stderr);
    assert_eq!(result.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("refusing to write {}", s(&out.join("steps.csv"))))
            && stderr.contains("symbolic link"),
        "{stderr}"
    );
    assert!(
        !ran.exists(),
        "the command ran although the output was refused"
    );
    assert!(std::fs::symlink_metadata(out.join("steps.csv"))
        .unwrap()
        .file_type()
        .is_symlink());
    unchanged();

    // A FIFO: opening it for writing would block until a reader came.
    let fifo_dir = nobodys_dir(&tmp.path().join("fifo"));
    let fifo = std::ffi::CString::new(s(&fifo_dir.join("queues.csv"))).unwrap();
    // SAFETY: mkfifo on a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o666) }, 0);
    let result = tracer(
        &["run", "-o", s(&fifo_dir), "--", "true"],
        true,
        Duration::from_secs(60),
    );
    let stderr = text(&result.stderr);
    assert_eq!(result.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("queues.csv") && stderr.contains("a FIFO"),
        "{stderr}"
    );

    // The commands that write next to an existing trace.
    let trace = tmp.path().join("trace");
    minimal_trace(&trace);
    std::os::unix::fs::chown(&trace, Some(NOBODY), Some(NOBODY)).unwrap();
    std::os::unix::fs::symlink(&victims[0], trace.join("trace.json")).unwrap();
    nobodys_dir(&trace.join("report"));
    std::os::unix::fs::symlink(&victims[2], trace.join("report/index.html")).unwrap();
    let export_link = tmp.path().join("out/features.csv");
    std::os::unix::fs::symlink(&victims[3], &export_link).unwrap();
    for (args, refused) in [
        (vec!["export-trace", s(&trace)], trace.join("trace.json")),
        (vec!["report", s(&trace)], trace.join("report/index.html")),
        (
            vec![
                "export",
                s(&trace),
                "--format",
                "features",
                "-o",
                s(&export_link),
            ],
            export_link.clone(),
        ),
    ] {
        let result = tracer(&args, true, Duration::from_secs(60));
        let stderr = text(&result.stderr);
        assert_eq!(result.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(
            stderr.contains(&format!("refusing to write {}", s(&refused)))
                && stderr.contains("symbolic link"),
            "{args:?}: {stderr}"
        );
    }
    unchanged();
}

/// Without sudo, root writes only into directories of root's own: another user's directory
/// is refused before anything is started or written.
#[test]
fn an_output_directory_of_another_user_is_refused() {
    let tmp = open_tempdir();
    let theirs = nobodys_dir(&tmp.path().join("theirs"));
    let ran = tmp.path().join("command-ran");
    let command = format!("touch {}", s(&ran));
    let result = tracer(
        &["run", "-o", s(&theirs), "--", "sh", "-c", &command],
        false,
        Duration::from_secs(60),
    );
    let stderr = text(&result.stderr);
    assert_eq!(result.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("refusing to write into {}", s(&theirs)))
            && stderr.contains("belongs to uid 65534"),
        "{stderr}"
    );
    assert!(!ran.exists());
    assert_eq!(std::fs::read_dir(&theirs).unwrap().count(), 0);

    let trace = tmp.path().join("trace");
    minimal_trace(&trace);
    let result = tracer(
        &["report", s(&trace), "-o", s(&theirs)],
        false,
        Duration::from_secs(60),
    );
    assert_eq!(result.status.code(), Some(1));
    assert!(text(&result.stderr).contains("belongs to uid 65534"));
    assert_eq!(std::fs::read_dir(&theirs).unwrap().count(), 0);
    // The same directory is the user's own under sudo.
    let result = tracer(
        &["report", s(&trace), "-o", s(&theirs), "-q"],
        true,
        Duration::from_secs(60),
    );
    assert!(result.status.success(), "{}", text(&result.stderr));
    assert_eq!(owner(&theirs.join("index.html")), (NOBODY, NOBODY));
}

// ---------------------------------------------------------------------------------------
// `tracer run` under sudo: the command as the user, the files to the user
// ---------------------------------------------------------------------------------------

/// `sudo tracer run -o DIR -- sh -c '…; exec python …'` by nobody: the command reports
/// nobody's uid, gid and groups (root's group 0 gone), the fixture behind the `exec` is traced,
/// and every directory and file the trace, the report and an export create belong to nobody.
#[test]
fn run_under_sudo_runs_the_command_as_the_user_and_hands_them_the_files() {
    let _serial = exclusive();
    let tmp = open_tempdir();
    let out = tmp.path().join("home/out");
    let script = root().join("tests/fixtures/engine/run_engine.py");
    let command = format!(
        "echo ids uid=$(id -u) gid=$(id -g) groups=$(id -G) home=$HOME; \
         exec {SYSTEM_PYTHON} {} --warmup 6000 --steps 600 --execute-ms 0.3",
        s(&script)
    );
    let result = tracer(
        &["run", "-o", s(&out), "--", "sh", "-c", &command],
        true,
        Duration::from_secs(300),
    );
    let (stdout, stderr) = (text(&result.stdout), text(&result.stderr));
    assert!(result.status.success(), "{stderr}");
    assert!(
        stdout.contains("ids uid=65534 gid=65534 groups=65534 home=/nonexistent"),
        "{stdout}"
    );
    assert!(stderr.contains("uid 65534 (nobody)"), "{stderr}");
    let steps: Vec<StepRow> = read_csv(&out.join("steps.csv"));
    assert!(steps.len() >= 600, "{} steps traced", steps.len());
    assert_eq!(read_run_json(&out)["end_reason"], "target exited");

    let report = tracer(&["report", s(&out), "-q"], true, Duration::from_secs(120));
    assert!(report.status.success(), "{}", text(&report.stderr));
    let export = tracer(
        &["export", s(&out), "--format", "features"],
        true,
        Duration::from_secs(120),
    );
    assert!(export.status.success(), "{}", text(&export.stderr));

    // The directories the tracer created (tmp/home, tmp/home/out, report/), every file in
    // them; tmp itself was root's and stays so.
    assert_eq!(owner(tmp.path()), (0, 0));
    let mut checked = 0;
    for dir in [tmp.path().join("home"), out.clone(), out.join("report")] {
        assert_eq!(owner(&dir), (NOBODY, NOBODY), "{dir:?}");
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            assert_eq!(owner(&path), (NOBODY, NOBODY), "{path:?}");
            checked += 1;
        }
    }
    for name in [
        "steps.csv",
        "requests.csv",
        "events.csv",
        "queues.csv",
        "run.json",
        "trace.json",
        "features.csv",
        "report/index.html",
        "report/summary.json",
    ] {
        assert!(out.join(name).exists(), "{name} missing");
    }
    assert!(checked >= 12, "{checked} entries checked");
}

/// `--as-root` keeps root for the command; without sudo the command keeps the tracer's ids.
#[test]
fn as_root_keeps_root() {
    let tmp = open_tempdir();
    for (sudo, extra, expected) in [
        (true, Some("--as-root"), "ids 0 0"),
        (false, None, "ids 0 0"),
        (true, None, "ids 65534 65534"),
    ] {
        let out = tmp.path().join(format!("out-{sudo}-{}", extra.is_some()));
        let mut args = vec!["run", "-o", s(&out), "--wait", "1"];
        args.extend(extra);
        args.extend(["--", "sh", "-c", "echo ids $(id -u) $(id -g)"]);
        let result = tracer(&args, sudo, Duration::from_secs(60));
        // Nothing to trace: the command exits first, which is an error.
        assert_eq!(result.status.code(), Some(1));
        assert!(
            text(&result.stdout).contains(expected),
            "{args:?} (sudo {sudo}): {}",
            text(&result.stdout)
        );
    }
}

// ---------------------------------------------------------------------------------------
// The command does not outlive the tracer
// ---------------------------------------------------------------------------------------

/// `kill -9` of the tracer, while it traces and while it waits for the engine: the command's
/// whole process group (its first process and what that started) is gone within 1 s. The
/// kernel kills the first process (PR_SET_PDEATHSIG); the tracer's watchdog kills the rest.
#[test]
fn kill_9_of_the_tracer_kills_the_commands_process_group() {
    let _serial = exclusive();
    let tmp = open_tempdir();
    let script = root().join("tests/fixtures/engine/run_engine.py");
    let tracing = format!(
        "sleep 600 & exec {} {} --execute-ms 1",
        pyenv("3.11.7"),
        s(&script)
    );
    let cases: [(&str, &str, usize, bool); 2] = [
        // While tracing: the fixture (exec'd by sh) and a sleep it inherited as a child.
        ("tracing", &tracing, 2, false),
        // While waiting for an engine that never comes, the command as nobody.
        ("waiting", "sleep 600 & sleep 600 & wait", 3, true),
    ];
    let mut report = Vec::new();
    for (phase, command, members, sudo) in cases {
        let out = tmp.path().join(phase);
        let mut cmd = Command::new(tracer_bin());
        cmd.args(["run", "-o", s(&out), "--", "sh", "-c", command])
            .env_remove("SUDO_UID")
            .env_remove("SUDO_GID")
            .env_remove("SUDO_USER")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if sudo {
            cmd.env("SUDO_UID", "65534").env("SUDO_GID", "65534");
        }
        let mut child = cmd.spawn().unwrap();
        let mut stderr = Lines::new(child.stderr.take().unwrap());
        let pgid = started_pid(&stderr.wait_for("tracer: started", Duration::from_secs(60)));
        if phase == "tracing" {
            stderr.wait_for("tracer: attached", Duration::from_secs(120));
        }
        wait_for_members(pgid, members);
        // SAFETY: SIGKILL to the tracer we spawned.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGKILL) };
        let killed = Instant::now();
        let _ = child.wait();
        let deadline = killed + Duration::from_secs(1);
        let mut left = group_members(pgid);
        while !left.is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
            left = group_members(pgid);
        }
        let took = killed.elapsed();
        if !left.is_empty() {
            // Do not leave them behind for the next test.
            // SAFETY: SIGKILL to the group the test's tracer created.
            unsafe { libc::kill(-(pgid as libc::pid_t), libc::SIGKILL) };
        }
        assert!(
            left.is_empty(),
            "{phase}: group {pgid} still has {left:?} {took:?} after kill -9 of the tracer"
        );
        report.push(format!("{phase}: {} members gone in {took:?}", members));
    }
    eprintln!("{}", report.join("; "));
}

/// An error path: the command's first process exits before any engine ran, leaving a child
/// behind in its group. The tracer exits with the error and stops what was left (before,
/// the orphan kept running).
#[test]
fn an_error_of_the_tracer_stops_what_the_command_left_behind() {
    let tmp = open_tempdir();
    let pidfile = tmp.path().join("orphan.pid");
    let command = format!("sleep 600 & echo $! > {}; exit 0", s(&pidfile));
    let result = tracer(
        &[
            "run",
            "-o",
            s(&tmp.path().join("out")),
            "--",
            "sh",
            "-c",
            &command,
        ],
        false,
        Duration::from_secs(60),
    );
    let stderr = text(&result.stderr);
    assert_eq!(result.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("before a vLLM engine loop started"),
        "{stderr}"
    );
    let orphan: u32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let alive = std::fs::read_to_string(format!("/proc/{orphan}/stat")).is_ok_and(|stat| {
        !stat
            .rsplit_once(')')
            .unwrap()
            .1
            .trim_start()
            .starts_with('Z')
    });
    if alive {
        // SAFETY: SIGKILL to the orphan the test's command started.
        unsafe { libc::kill(orphan as libc::pid_t, libc::SIGKILL) };
    }
    assert!(!alive, "the command's child {orphan} outlived the tracer");
}

// ---------------------------------------------------------------------------------------
// Following the command through wrappers
// ---------------------------------------------------------------------------------------

/// A pyenv-like shim: `python3` on PATH is a bash script that sleeps (pyenv resolves the
/// version) and then execs the real interpreter in the same process. The tracer first sees
/// bash in that pid, then Python: the quick start's command, traced.
#[test]
fn run_follows_a_pyenv_like_shim_to_the_interpreter() {
    let _serial = exclusive();
    let tmp = open_tempdir();
    let shims = tmp.path().join("shims");
    std::fs::create_dir(&shims).unwrap();
    let shim = shims.join("python3");
    std::fs::write(
        &shim,
        format!(
            "#!/bin/bash\n# like pyenv's shim: work out the version, then exec the interpreter\n\
             sleep 1\nexec {} \"$@\"\n",
            pyenv("3.11.7")
        ),
    )
    .unwrap();
    std::fs::set_permissions(&shim, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        s(&shims),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = tmp.path().join("out");
    let script = root().join("tests/fixtures/engine/run_engine.py");
    let result = Command::new(tracer_bin())
        .args(["run", "-o", s(&out), "--", "python3", s(&script)])
        .args(["--warmup", "4000", "--steps", "600", "--execute-ms", "0.3"])
        .env("PATH", path)
        .env_remove("SUDO_UID")
        .env_remove("SUDO_GID")
        .stdout(Stdio::null())
        .output()
        .unwrap();
    let stderr = text(&result.stderr);
    assert!(result.status.success(), "{stderr}");
    let steps: Vec<StepRow> = read_csv(&out.join("steps.csv"));
    assert!(steps.len() >= 600, "{} steps traced", steps.len());
    let run = read_run_json(&out);
    assert!(
        run["exe"].as_str().unwrap().contains("3.11"),
        "traced {}",
        run["exe"]
    );
}

/// `--wait` runs out: the message names each process of the command, what it runs, and
/// whether vLLM was imported, so the user knows whether to wait longer or fix the command.
#[test]
fn wait_timeout_says_what_it_saw() {
    let command = format!("{SYSTEM_PYTHON} -c 'import time; time.sleep(60)' & sleep 60");
    let result = tracer(
        &[
            "run",
            "-o",
            "/tmp/unused-tracer-out-security",
            "--wait",
            "3",
            "--",
            "sh",
            "-c",
            &command,
        ],
        false,
        Duration::from_secs(120),
    );
    let stderr = text(&result.stderr);
    assert_eq!(result.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("no vLLM engine loop started within 3 s"),
        "{stderr}"
    );
    assert!(
        stderr.contains("its Python processes never imported vLLM"),
        "{stderr}"
    );
    let python = stderr
        .lines()
        .find(|l| l.starts_with("  pid ") && l.contains("(/usr/bin/python3.11)"))
        .unwrap_or_else(|| panic!("no line for the python process: {stderr}"));
    assert!(
        python.contains("pid ")
            && python.contains("CPython 3.11")
            && python.contains("vLLM not imported"),
        "{python}"
    );
    let sleep = stderr
        .lines()
        .find(|l| l.starts_with("  pid ") && l.contains("\"sleep 60\""))
        .unwrap_or_else(|| panic!("no line for sleep: {stderr}"));
    assert!(sleep.contains("not CPython"), "{sleep}");
}
