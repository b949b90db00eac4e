//! Request lifecycles as spans (waiting, running, preempted), from events.csv: what the
//! report's Gantt chart and the Perfetto request tracks draw.

use std::collections::HashMap;

use crate::schema::rows::{EventKind, EventRow};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum State {
    Waiting,
    Running,
    Preempted,
}

impl State {
    pub fn name(self) -> &'static str {
        match self {
            State::Waiting => "waiting",
            State::Running => "running",
            State::Preempted => "preempted",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Span {
    pub state: State,
    pub start_ns: u64,
    pub end_ns: u64,
    /// Still open when the trace ended (closed at the window's end).
    pub open: bool,
}

/// One request's life as the trace saw it.
#[derive(Clone, Debug, PartialEq)]
pub struct Lifecycle {
    pub request_id: String,
    pub pid: u32,
    pub spans: Vec<Span>,
    pub first_token_ns: Option<u64>,
    /// `finished` / `aborted` detail (finish status), if it ended in the trace.
    pub end: Option<String>,
}

/// Every request's spans, in order of first appearance. Events must be in time order per
/// request (events.csv is). Spans still open at the end are closed at `end_ns`.
pub fn lifecycles(events: &[EventRow], end_ns: u64) -> Vec<Lifecycle> {
    let mut index: HashMap<(u32, &str), usize> = HashMap::new();
    let mut out: Vec<Lifecycle> = Vec::new();
    // The state each request is in and since when.
    let mut current: Vec<Option<(State, u64)>> = Vec::new();
    for e in events {
        let i = *index
            .entry((e.pid, e.request_id.as_str()))
            .or_insert_with(|| {
                out.push(Lifecycle {
                    request_id: e.request_id.clone(),
                    pid: e.pid,
                    spans: Vec::new(),
                    first_token_ns: None,
                    end: None,
                });
                current.push(None);
                out.len() - 1
            });
        let next = match e.event {
            EventKind::Arrived => Some(State::Waiting),
            EventKind::Scheduled | EventKind::Resumed => Some(State::Running),
            EventKind::Preempted => Some(State::Preempted),
            EventKind::FirstToken => {
                out[i].first_token_ns.get_or_insert(e.t_ns);
                continue;
            }
            EventKind::PrefillChunk => continue,
            EventKind::Finished | EventKind::Aborted => {
                out[i].end = Some(e.detail.clone());
                None
            }
        };
        if let Some((state, since)) = current[i] {
            if next == Some(state) {
                continue;
            }
            out[i].spans.push(Span {
                state,
                start_ns: since,
                end_ns: e.t_ns.max(since),
                open: false,
            });
        }
        current[i] = next.map(|s| (s, e.t_ns));
    }
    for (life, state) in out.iter_mut().zip(current) {
        if let Some((state, since)) = state {
            life.spans.push(Span {
                state,
                start_ns: since,
                end_ns: end_ns.max(since),
                open: true,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: &str, t_ns: u64, event: EventKind) -> EventRow {
        EventRow {
            request_id: id.into(),
            pid: 1,
            t_ns,
            event,
            ..Default::default()
        }
    }

    #[test]
    fn waiting_running_preempted_and_open_spans() {
        use EventKind::*;
        let events = [
            event("a", 10, Arrived),
            event("a", 20, Scheduled),
            event("a", 20, PrefillChunk),
            event("b", 25, Arrived),
            event("a", 30, FirstToken),
            event("a", 40, Preempted),
            event("a", 50, Resumed),
            event("a", 60, Finished),
        ];
        let lives = lifecycles(&events, 100);
        assert_eq!(lives.len(), 2);
        let a: Vec<(State, u64, u64, bool)> = lives[0]
            .spans
            .iter()
            .map(|s| (s.state, s.start_ns, s.end_ns, s.open))
            .collect();
        assert_eq!(
            a,
            [
                (State::Waiting, 10, 20, false),
                (State::Running, 20, 40, false),
                (State::Preempted, 40, 50, false),
                (State::Running, 50, 60, false),
            ]
        );
        assert_eq!(lives[0].first_token_ns, Some(30));
        assert_eq!(
            lives[1].spans,
            [Span {
                state: State::Waiting,
                start_ns: 25,
                end_ns: 100,
                open: true
            }]
        );
    }
}
