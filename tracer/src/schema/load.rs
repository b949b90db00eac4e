//! Reading a trace's output directory back: the CSVs as the row types of
//! [`crate::schema::rows`], and run.json as plain JSON (its fields grow over time, and old
//! runs must still load).
//!
//! A directory holds one engine's files, or one subdirectory per engine (data parallel:
//! `dp0/`, `dp1/`, …); both load as one [`Run`], rows told apart by their `pid`.

use std::{
    collections::{BTreeMap, HashSet},
    path::{Path, PathBuf},
};

use anyhow::{bail, Context as _, Result};

use crate::schema::rows::{EventRow, Queue, QueueRow, RankRow, RequestRow, StepRow, WaitReason};

/// Columns of steps.csv that name CUDA counters (`cuda_launches`, `cuda_sync_ns`, …): read
/// as numbers by name, so new ones show up without a change here.
pub const CUDA_PREFIX: &str = "cuda_";

/// Waiting time per reason over a run, streamed from queues.csv (it has a row per request
/// per step, too many to keep).
#[derive(Clone, Debug, Default)]
pub struct ReasonCount {
    /// (step, request) pairs waiting for this reason.
    pub request_steps: u64,
    /// Distinct requests that waited for it at least once.
    pub requests: u64,
}

/// One worker rank's rows of ranks.csv over a run (streamed: it has a row per step and rank).
#[derive(Clone, Debug, Default)]
pub struct RankTotals {
    pub worker_pid: u32,
    /// Its rows: the steps it was probed through.
    pub steps: u64,
    /// `None` where launches were not counted (`--cuda sync`).
    pub launches: Option<u64>,
    pub graph_launches: u64,
    pub syncs: u64,
    /// Each row's `gpu_wait_ns`, in file order.
    pub gpu_wait_ns: Vec<u64>,
}

/// One trace, loaded.
#[derive(Debug, Default)]
pub struct Run {
    pub dir: PathBuf,
    /// The engine directories read (the run's own, or its per-engine subdirectories).
    pub engine_dirs: Vec<PathBuf>,
    /// run.json of each engine directory, in `engine_dirs` order (`Null` where missing).
    pub infos: Vec<serde_json::Value>,
    pub steps: Vec<StepRow>,
    /// `cuda_*` columns of each step, in `steps` order.
    pub cuda: Vec<BTreeMap<String, f64>>,
    pub requests: Vec<RequestRow>,
    pub events: Vec<EventRow>,
    /// Per reason (`None`: waiting without a known reason); empty without queues.csv.
    pub wait_reasons: BTreeMap<Option<WaitReason>, ReasonCount>,
    /// Per engine pid and worker rank (ranks.csv `rank`); empty without worker processes.
    pub ranks: BTreeMap<(u32, String), RankTotals>,
    /// Whether each optional file was present (a run without request capture has none).
    pub has_requests: bool,
    pub has_events: bool,
    pub has_queues: bool,
}

impl Run {
    pub fn load(dir: &Path) -> Result<Self> {
        let engine_dirs = engine_dirs(dir)?;
        let mut run = Run {
            dir: dir.to_path_buf(),
            ..Default::default()
        };
        for engine_dir in &engine_dirs {
            run.infos.push(read_info(engine_dir)?);
            run.load_steps(&engine_dir.join("steps.csv"))?;
            let requests = engine_dir.join("requests.csv");
            if requests.exists() {
                run.has_requests = true;
                run.requests.extend(read_all::<RequestRow>(&requests)?);
            }
            let events = engine_dir.join("events.csv");
            if events.exists() {
                run.has_events = true;
                run.events.extend(read_all::<EventRow>(&events)?);
            }
            let queues = engine_dir.join("queues.csv");
            if queues.exists() {
                run.has_queues = true;
                run.count_reasons(&queues)?;
            }
            let ranks = engine_dir.join("ranks.csv");
            if ranks.exists() {
                run.count_ranks(&ranks)?;
            }
        }
        // Several engines: one timeline.
        if engine_dirs.len() > 1 {
            let mut order: Vec<usize> = (0..run.steps.len()).collect();
            order.sort_by_key(|&i| (run.steps[i].start_ns, run.steps[i].pid));
            run.steps = order.iter().map(|&i| run.steps[i].clone()).collect();
            run.cuda = order.iter().map(|&i| run.cuda[i].clone()).collect();
            run.events.sort_by_key(|e| e.t_ns);
        }
        run.engine_dirs = engine_dirs;
        Ok(run)
    }

    fn load_steps(&mut self, path: &Path) -> Result<()> {
        let mut reader =
            csv::Reader::from_path(path).with_context(|| format!("reading {}", path.display()))?;
        let headers = reader.headers()?.clone();
        let cuda_columns: Vec<(usize, String)> = headers
            .iter()
            .enumerate()
            .filter(|(_, name)| name.starts_with(CUDA_PREFIX))
            .map(|(i, name)| (i, name.to_owned()))
            .collect();
        for (line, record) in reader.records().enumerate() {
            let record = record.with_context(|| format!("reading {}", path.display()))?;
            let row: StepRow = record.deserialize(Some(&headers)).with_context(|| {
                format!(
                    "{}: row {} is not a steps.csv row",
                    path.display(),
                    line + 1
                )
            })?;
            self.steps.push(row);
            self.cuda.push(
                cuda_columns
                    .iter()
                    .filter_map(|(i, name)| Some((name.clone(), record.get(*i)?.parse().ok()?)))
                    .collect(),
            );
        }
        Ok(())
    }

    fn count_reasons(&mut self, path: &Path) -> Result<()> {
        let mut seen: HashSet<(Option<WaitReason>, String)> = HashSet::new();
        let mut reader =
            csv::Reader::from_path(path).with_context(|| format!("reading {}", path.display()))?;
        for row in reader.deserialize::<QueueRow>() {
            let row = row.with_context(|| format!("reading {}", path.display()))?;
            if row.queue != Queue::Waiting {
                continue;
            }
            let count = self.wait_reasons.entry(row.reason).or_default();
            count.request_steps += 1;
            if seen.insert((row.reason, row.request_id)) {
                count.requests += 1;
            }
        }
        Ok(())
    }

    fn count_ranks(&mut self, path: &Path) -> Result<()> {
        let mut reader =
            csv::Reader::from_path(path).with_context(|| format!("reading {}", path.display()))?;
        for row in reader.deserialize::<RankRow>() {
            let row = row.with_context(|| format!("reading {}", path.display()))?;
            let totals = self
                .ranks
                .entry((row.pid, row.rank))
                .or_insert_with(|| RankTotals {
                    worker_pid: row.worker_pid,
                    launches: Some(0),
                    ..Default::default()
                });
            // Saturating: a damaged file must not panic the report.
            totals.steps += 1;
            totals.launches = (totals.launches)
                .zip(row.cuda_launches)
                .map(|(a, b)| a.saturating_add(b));
            totals.graph_launches = totals
                .graph_launches
                .saturating_add(row.cuda_graph_launches);
            totals.syncs = totals.syncs.saturating_add(row.cuda_syncs);
            totals.gpu_wait_ns.push(row.gpu_wait_ns);
        }
        Ok(())
    }

    /// The first run.json (all engines of a run share version and config).
    pub fn info(&self) -> &serde_json::Value {
        self.infos.first().unwrap_or(&serde_json::Value::Null)
    }

    /// The traced window, CLOCK_MONOTONIC ns: from the earliest trace start to the latest
    /// end in run.json, widened to cover every row.
    pub fn window(&self) -> (u64, u64) {
        let field = |name: &str| -> Vec<u64> {
            self.infos
                .iter()
                .filter_map(|i| i.get(name).and_then(serde_json::Value::as_u64))
                .collect()
        };
        let rows_start = self.steps.iter().map(|s| s.start_ns);
        let rows_end = self
            .steps
            .iter()
            .map(|s| s.start_ns.saturating_add(s.step_ns))
            .chain(self.events.iter().map(|e| e.t_ns));
        let start = field("trace_start_ns")
            .into_iter()
            .chain(rows_start)
            .chain(self.events.iter().map(|e| e.t_ns))
            .min()
            .unwrap_or(0);
        let end = field("trace_end_ns")
            .into_iter()
            .chain(rows_end)
            .max()
            .unwrap_or(start);
        (start, end)
    }

    /// `vLLM 0.11.0` / `fixture`-style label: vLLM version, config and user labels of
    /// run.json, where present.
    pub fn label(&self) -> String {
        let info = self.info();
        let mut parts = Vec::new();
        if let Some(v) = info.get("vllm_version").and_then(|v| v.as_str()) {
            parts.push(format!("vLLM {v}"));
        }
        for key in ["config", "labels"] {
            if let Some(map) = info.get(key).and_then(|v| v.as_object()) {
                let text: Vec<String> = map
                    .iter()
                    .filter(|(_, v)| !v.is_null())
                    .map(|(k, v)| match v.as_str() {
                        Some(s) => format!("{k}={s}"),
                        None => format!("{k}={v}"),
                    })
                    .collect();
                if !text.is_empty() {
                    parts.push(text.join(", "));
                }
            }
        }
        if let Some(v) = info.get("python_version").and_then(|v| v.as_str()) {
            parts.push(format!("Python {v}"));
        }
        if parts.is_empty() {
            parts.push("no run.json".into());
        }
        parts.join("; ")
    }
}

/// `dir` itself if it holds steps.csv, else its subdirectories that do (one per engine).
pub fn engine_dirs(dir: &Path) -> Result<Vec<PathBuf>> {
    if dir.join("steps.csv").exists() {
        return Ok(vec![dir.to_path_buf()]);
    }
    let entries = std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
    let mut dirs: Vec<PathBuf> = entries
        .filter_map(|e| Some(e.ok()?.path()))
        .filter(|p| p.join("steps.csv").exists())
        .collect();
    if dirs.is_empty() {
        bail!(
            "{} has no steps.csv (nor a subdirectory with one): is it a tracer output directory?",
            dir.display()
        );
    }
    dirs.sort();
    Ok(dirs)
}

fn read_info(dir: &Path) -> Result<serde_json::Value> {
    let path = dir.join("run.json");
    if !path.exists() {
        return Ok(serde_json::Value::Null);
    }
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

pub fn read_all<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Vec<T>> {
    csv::Reader::from_path(path)
        .with_context(|| format!("reading {}", path.display()))?
        .deserialize()
        .collect::<Result<_, _>>()
        .with_context(|| format!("reading {}", path.display()))
}

/// Random trace folders for tests: rows under the real headers, some damaged, as a
/// hand-edited or broken CSV could hold. Readers of the folder (here and in
/// [`crate::offline`]) must fail on them with an error, never panic.
#[cfg(test)]
pub(crate) mod random_rows {
    use super::*;
    pub(crate) use crate::test_rng::Rng;

    /// A row type's CSV header and, per column, its default cell and the largest number it
    /// takes (`None`: not a number).
    struct Columns {
        header: String,
        cells: Vec<(String, Option<&'static str>)>,
    }

    fn columns<T: serde::Serialize + serde::de::DeserializeOwned + Default>() -> Columns {
        let mut writer = csv::Writer::from_writer(Vec::new());
        writer.serialize(T::default()).unwrap();
        let text = String::from_utf8(writer.into_inner().unwrap()).unwrap();
        let mut lines = text.lines();
        let header = lines.next().unwrap().to_owned();
        let defaults: Vec<String> = lines.next().unwrap().split(',').map(String::from).collect();
        let parses = |row: &[String]| {
            let text = format!("{header}\n{}\n", row.join(","));
            csv::Reader::from_reader(text.as_bytes())
                .deserialize::<T>()
                .all(|r| r.is_ok())
        };
        let cells = (0..defaults.len())
            .map(|i| {
                let max = [
                    "18446744073709551615",
                    "9223372036854775807",
                    "4294967295",
                    "2147483647",
                ]
                .into_iter()
                .find(|max| {
                    let mut row = defaults.clone();
                    row[i] = (*max).to_owned();
                    parses(&row)
                });
                (defaults[i].clone(), max)
            })
            .collect();
        Columns { header, cells }
    }

    /// A cell a hand-edited or damaged CSV could hold.
    fn garbage(rng: &mut Rng) -> String {
        const CELLS: [&str; 12] = [
            "",
            "-1",
            "18446744073709551616",
            "-9223372036854775808",
            "nan",
            "inf",
            "-1e308",
            "1e308",
            "running",
            "token_budget",
            "\"a,b\"",
            "x\u{1b}[2J",
        ];
        match rng.below(3) {
            0 => rng.next().to_string(),
            _ => CELLS[rng.below(CELLS.len() as u64) as usize].to_owned(),
        }
    }

    /// Rows of valid cells, numbers from 0 to each column's largest; with `damaged`, some
    /// cells garbage and some rows short or long.
    fn rows(rng: &mut Rng, columns: &Columns, damaged: bool) -> String {
        let mut text = format!("{}\n", columns.header);
        for _ in 0..rng.below(40) {
            let mut cells: Vec<String> = columns
                .cells
                .iter()
                .map(|(default, max)| match (max, rng.below(6)) {
                    _ if damaged && rng.below(8) == 0 => garbage(rng),
                    (Some(max), 0) => (*max).to_owned(),
                    (Some(max), 1) => {
                        let max: u64 = max.parse().unwrap();
                        (max - rng.below(3)).to_string()
                    }
                    (Some(_), 2) => rng.below(3).to_string(),
                    (Some(_), 3) if default.is_empty() => String::new(),
                    (Some(_), _) => rng.below(1 << 20).to_string(),
                    (None, _) => default.clone(),
                })
                .collect();
            if damaged && rng.below(10) == 0 {
                cells.truncate(rng.below(cells.len() as u64) as usize);
            }
            text.push_str(&cells.join(","));
            text.push('\n');
        }
        text
    }

    /// A folder of random rows: steps.csv always, the other CSVs mostly; a quarter of the
    /// folders damaged.
    pub(crate) fn trace_dir(rng: &mut Rng) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let damaged = rng.below(4) == 0;
        let files = [
            ("steps.csv", columns::<StepRow>()),
            ("requests.csv", columns::<RequestRow>()),
            ("events.csv", columns::<EventRow>()),
            ("queues.csv", columns::<QueueRow>()),
        ];
        for (name, columns) in &files {
            if *name == "steps.csv" || rng.below(4) != 0 {
                let text = rows(rng, columns, damaged);
                std::fs::write(dir.path().join(name), text).unwrap();
            }
        }
        dir
    }
}

#[cfg(test)]
mod tests {
    use super::{random_rows::*, *};

    /// Random CSV rows under the real headers load or fail with an error, never panic
    /// (debug build: overflow checks on).
    #[test]
    fn random_csv_rows_never_panic() {
        let mut rng = Rng(0x0123_4567_89ab_cdef);
        let (mut loaded, mut refused) = (0, 0);
        for _ in 0..300 {
            let dir = trace_dir(&mut rng);
            match Run::load(dir.path()) {
                Ok(run) => {
                    loaded += 1;
                    let _ = run.window();
                    let _ = run.label();
                }
                Err(_) => refused += 1,
            }
        }
        assert!(
            loaded > 100 && refused > 10,
            "{loaded} loaded, {refused} refused"
        );
    }
}
