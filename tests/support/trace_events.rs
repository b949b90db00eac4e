//! The Chrome trace-event JSON that `export-trace` writes, checked by the rules that
//! Perfetto's JSON importer enforces.

use std::collections::HashMap;

use serde_json::Value;

/// A thread's track: (pid, tid).
pub type Thread = (u64, u64);
/// A B, E or i event on a track: (ts µs, order in the file, phase, name).
type Mark = (f64, usize, String, String);
/// A slice: (name, begin µs, end µs, nesting depth).
pub type Slice = (String, f64, f64, usize);

/// The trace-event format's rules that Perfetto's JSON importer enforces: the events it
/// knows, numeric timestamps, B/E pairs balanced and properly nested per thread, in time
/// order, metadata with names. Returns each thread's slices as (name, begin µs, end µs, depth).
pub fn validate_trace(trace: &Value) -> HashMap<Thread, Vec<Slice>> {
    let events = trace["traceEvents"].as_array().expect("traceEvents array");
    slices(tracks(events))
}

/// Each thread's B, E and i events; the others are checked here.
fn tracks(events: &[Value]) -> HashMap<Thread, Vec<Mark>> {
    // The importer sorts a track by ts, keeping file order among equal timestamps.
    let mut tracks: HashMap<Thread, Vec<Mark>> = HashMap::new();
    for (order, e) in events.iter().enumerate() {
        let ph = e["ph"].as_str().expect("ph");
        let name = e["name"].as_str().expect("name");
        let pid = e["pid"].as_u64().expect("integer pid");
        assert!(pid <= u64::from(u32::MAX));
        match ph {
            "M" => {
                assert!(
                    [
                        "process_name",
                        "thread_name",
                        "process_sort_index",
                        "thread_sort_index"
                    ]
                    .contains(&name),
                    "{e}"
                );
                if name.ends_with("sort_index") {
                    e["args"]["sort_index"].as_i64().expect("sort_index");
                } else {
                    assert!(e["args"]["name"].is_string(), "{e}");
                }
                if name.starts_with("thread_") {
                    e["tid"].as_u64().expect("thread_name tid");
                }
            }
            "B" | "E" | "i" => {
                let tid = e["tid"].as_u64().expect("tid");
                let ts = e["ts"].as_f64().expect("numeric ts");
                assert!(ts >= 0.0, "{e}");
                if ph == "i" {
                    assert_eq!(e["s"], "t");
                }
                tracks
                    .entry((pid, tid))
                    .or_default()
                    .push((ts, order, ph.into(), name.into()));
            }
            "C" => {
                e["ts"].as_f64().expect("numeric ts");
                let args = e["args"].as_object().expect("counter args");
                assert!(
                    !args.is_empty() && args.values().all(Value::is_number),
                    "{e}"
                );
            }
            other => panic!("unexpected phase {other}: {e}"),
        }
    }
    tracks
}

/// Each thread's slices from its B/E pairs, which must balance and nest.
fn slices(tracks: HashMap<Thread, Vec<Mark>>) -> HashMap<Thread, Vec<Slice>> {
    let mut slices: HashMap<Thread, Vec<Slice>> = HashMap::new();
    for (key, mut track) in tracks {
        track.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        let mut stack: Vec<(String, f64)> = Vec::new();
        for (ts, _, ph, name) in track {
            match ph.as_str() {
                "B" => stack.push((name, ts)),
                "E" => {
                    let (open, begin) = stack
                        .pop()
                        .unwrap_or_else(|| panic!("E without B on {key:?}"));
                    assert_eq!(open, name, "misnested E on {key:?}");
                    slices
                        .entry(key)
                        .or_default()
                        .push((open, begin, ts, stack.len()));
                }
                _ => {}
            }
        }
        assert!(stack.is_empty(), "unclosed slices on {key:?}: {stack:?}");
    }
    for list in slices.values_mut() {
        list.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.3.cmp(&b.3)));
    }
    slices
}
