//! The live status line on stderr while tracing, and [`say`] for the tracer's other lines: steps/s, requests seen, queue lengths now,
//! drops and output size.
//!
//! On a terminal one line is rewritten in place (`\r`) every second; otherwise (a log file,
//! CI) a plain line is written every [`PLAIN_EVERY`], so logs stay readable. With several
//! engines traced at once (data parallel), each trace ticks its own [`Status`] and they share
//! one line, a part per engine process.

use std::{
    collections::BTreeMap,
    io::{IsTerminal as _, Write as _},
    path::PathBuf,
    sync::Mutex,
    time::{Duration, Instant},
};

/// How often the line is rewritten on a terminal.
pub const TTY_EVERY: Duration = Duration::from_secs(1);
/// How often a line is written when stderr is not a terminal.
pub const PLAIN_EVERY: Duration = Duration::from_secs(5);
/// The shortest window a rate is measured over: one tick period less some slack for a tick
/// that comes early. Before one has passed there is no rate to show (the first tick comes
/// right at attach, when "12 steps, 0 steps/s" would be false).
const RATE_WINDOW: Duration = Duration::from_millis(900);

/// What one trace knows at a tick. Fields the capture does not fill yet stay `None`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Counters {
    pub steps: u64,
    /// Distinct requests seen in the engine's queues so far.
    pub requests_seen: Option<u64>,
    /// Queue lengths after the latest step's `schedule()`.
    pub running: Option<u32>,
    pub waiting: Option<u32>,
    /// Probe hits lost (ring buffer full).
    pub drops: u64,
}

/// One engine's part of the line.
#[derive(Clone, Debug)]
struct Part {
    counters: Counters,
    /// `None` until a full [`RATE_WINDOW`] has passed.
    steps_per_s: Option<f64>,
    output_bytes: u64,
}

/// The line shared by every trace in this process.
struct Line {
    parts: BTreeMap<u32, Part>,
    last_print: Option<Instant>,
    /// A `\r` line is on screen and needs a newline before other output.
    dirty: bool,
}

static LINE: Mutex<Line> = Mutex::new(Line {
    parts: BTreeMap::new(),
    last_print: None,
    dirty: false,
});

/// The status of one trace. Call [`Status::tick`] about once a second and
/// [`Status::finish`] before printing the summary.
pub struct Status {
    pid: u32,
    out_dir: PathBuf,
    quiet: bool,
    tty: bool,
    rate: Rate,
}

/// Steps per second over the latest full window. Ticks that come in a burst (tokio catches
/// up after a stall) do not shrink the window to a few ms and make the rate jump.
#[derive(Default)]
struct Rate {
    /// Where the current window started: when, and the step count then.
    since: Option<(Instant, u64)>,
    latest: Option<f64>,
}

impl Rate {
    fn update(&mut self, now: Instant, steps: u64) -> Option<f64> {
        match self.since {
            None => self.since = Some((now, steps)),
            Some((at, before)) if now.saturating_duration_since(at) >= RATE_WINDOW => {
                let seconds = (now - at).as_secs_f64();
                self.latest = Some(steps.saturating_sub(before) as f64 / seconds);
                self.since = Some((now, steps));
            }
            Some(_) => {}
        }
        self.latest
    }
}

impl Status {
    /// The status of tracing engine process `pid` into `out_dir`.
    pub fn new(pid: u32, out_dir: PathBuf, quiet: bool) -> Self {
        Self {
            pid,
            out_dir,
            quiet,
            tty: std::io::stderr().is_terminal(),
            rate: Rate::default(),
        }
    }

    pub fn tick(&mut self, counters: Counters) {
        if self.quiet {
            return;
        }
        let now = Instant::now();
        let steps_per_s = self.rate.update(now, counters.steps);
        let part = Part {
            steps_per_s,
            output_bytes: dir_size(&self.out_dir),
            counters,
        };
        let mut line = LINE.lock().unwrap_or_else(|p| p.into_inner());
        line.parts.insert(self.pid, part);
        let every = if self.tty { TTY_EVERY } else { PLAIN_EVERY };
        // A little slack, so a tick a few ms early does not skip a whole period.
        if line
            .last_print
            .is_some_and(|at| now + Duration::from_millis(100) < at + every)
        {
            return;
        }
        line.last_print = Some(now);
        let text = render(&line.parts);
        let mut stderr = std::io::stderr().lock();
        // Write errors are ignored: a closed stderr must not end the trace.
        if self.tty {
            let _ = write!(stderr, "\r\x1b[K{text}");
            line.dirty = true;
        } else {
            let _ = writeln!(stderr, "{text}");
        }
        let _ = stderr.flush();
    }

    /// Clears the live line, if one is on screen, so that a message starts on a clean line
    /// (the next tick draws it again).
    pub fn clear() {
        let mut line = LINE.lock().unwrap_or_else(|p| p.into_inner());
        if line.dirty {
            let _ = write!(std::io::stderr(), "\r\x1b[K");
            line.dirty = false;
        }
    }

    /// Ends the live line so the summary starts on a clean line; removes this trace's part.
    pub fn finish(&mut self) {
        LINE.lock()
            .unwrap_or_else(|p| p.into_inner())
            .parts
            .remove(&self.pid);
        Self::clear();
    }
}

/// E.g. `tracer: 1234 steps, 812 steps/s, 56 requests, running 12, waiting 3, 0 drops, 1.2 MB`.
fn render(parts: &BTreeMap<u32, Part>) -> String {
    let text: Vec<String> = parts
        .iter()
        .map(|(pid, p)| {
            let c = &p.counters;
            let mut fields = vec![format!("{} steps", c.steps)];
            if let Some(rate) = p.steps_per_s {
                fields.push(format!("{rate:.0} steps/s"));
            }
            if let Some(n) = c.requests_seen {
                fields.push(format!("{n} requests"));
            }
            if let (Some(r), Some(w)) = (c.running, c.waiting) {
                fields.push(format!("running {r}, waiting {w}"));
            }
            fields.push(format!("{} drops", c.drops));
            fields.push(human_bytes(p.output_bytes));
            let body = fields.join(", ");
            if parts.len() == 1 {
                body
            } else {
                format!("pid {pid}: {body}")
            }
        })
        .collect();
    format!("tracer: {}", text.join(" | "))
}

/// Total size of the files in `dir` (not recursive: one trace writes one directory).
fn dir_size(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

pub fn human_bytes(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 => format!("{:.1} GB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1} MB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} kB", b as f64 / (1u64 << 10) as f64),
        b => format!("{b} B"),
    }
}

/// A line on stderr (a warning, a note, an error), on a clean line below the status line. A
/// closed stderr (the launching terminal went away) must not cost the trace its files, so
/// write errors are ignored.
pub fn say(message: &str) {
    use std::io::Write as _;
    Status::clear();
    let _ = writeln!(std::io::stderr(), "{message}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_shows_what_is_known() {
        let mut parts = BTreeMap::new();
        parts.insert(
            7,
            Part {
                counters: Counters {
                    steps: 1234,
                    requests_seen: Some(56),
                    running: Some(12),
                    waiting: Some(3),
                    drops: 0,
                },
                steps_per_s: Some(811.6),
                output_bytes: 1_300_000,
            },
        );
        assert_eq!(
            render(&parts),
            "tracer: 1234 steps, 812 steps/s, 56 requests, running 12, waiting 3, 0 drops, 1.2 MB"
        );
        parts.insert(
            9,
            Part {
                counters: Counters {
                    steps: 5,
                    ..Default::default()
                },
                steps_per_s: None,
                output_bytes: 10,
            },
        );
        assert!(render(&parts).starts_with("tracer: pid 7: 1234 steps, 812 steps/s"));
        // No rate measured yet: no rate shown, rather than a false 0.
        assert!(render(&parts).ends_with(" | pid 9: 5 steps, 0 drops, 10 B"));
    }

    #[test]
    fn rate_waits_for_a_full_window() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let mut rate = Rate::default();
        // The first tick, right at attach, with steps already counted: nothing to divide by.
        assert_eq!(rate.update(at(0), 12), None);
        // A tick in a burst, 5 ms later: still no full window.
        assert_eq!(rate.update(at(5), 14), None);
        // A full second after the first tick: 1012 - 12 steps in 1 s.
        assert_eq!(rate.update(at(1000), 1012), Some(1000.0));
        // A burst right after keeps the last full window's rate instead of 0 or 100 000/s.
        assert_eq!(rate.update(at(1010), 2012), Some(1000.0));
        // The next window runs from the tick that closed the previous one: 2 s, 1000 steps.
        assert_eq!(rate.update(at(3000), 3012), Some(1000.0));
        // An engine that stopped stepping does show 0 once a window has passed.
        assert_eq!(rate.update(at(4000), 3012), Some(0.0));
    }
}
