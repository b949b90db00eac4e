//! The report's charts, as SVG strings (plotters' SVG backend: text stays text, no fonts
//! needed to render them).
//!
//! Long runs have hundreds of thousands of steps; time series are averaged into at most
//! [`TIME_BINS`] bins and scatter plots thinned to [`MAX_POINTS`], so the files stay small.

use std::ops::Range;

use anyhow::{anyhow, Result};
use plotters::{
    chart::MeshStyle,
    coord::{types::RangedCoordf64, Shift},
    prelude::*,
    style::text_anchor::{HPos, Pos, VPos},
};

use super::{
    model::{fits, StepKind},
    spans::{lifecycles, State},
};
use crate::schema::load::Run;

const SIZE: (u32, u32) = (960, 420);
pub const TIME_BINS: usize = 300;
pub const MAX_POINTS: usize = 5_000;
/// Requests drawn in the Gantt chart (the first ones to arrive).
pub const GANTT_REQUESTS: usize = 120;

const SCHEDULE: RGBColor = RGBColor(0x4c, 0x78, 0xa8);
const EXECUTE: RGBColor = RGBColor(0xf5, 0x85, 0x18);
const UPDATE: RGBColor = RGBColor(0x54, 0xa2, 0x4b);
const PREEMPTED: RGBColor = RGBColor(0xe4, 0x57, 0x56);
const FONT: &str = "sans-serif";

/// A named chart.
pub struct Plot {
    /// File stem, e.g. `phases_over_time`.
    pub name: &'static str,
    pub title: &'static str,
    pub svg: String,
}

pub fn all(run: &Run) -> Result<Vec<Plot>> {
    Ok(vec![
        Plot {
            name: "phases_over_time",
            title: "Phase time per step over time",
            svg: phases_over_time(run)?,
        },
        Plot {
            name: "step_vs_tokens",
            title: "Step time vs scheduled tokens",
            svg: step_vs_tokens(run)?,
        },
        Plot {
            name: "queues_over_time",
            title: "Queue lengths over time",
            svg: queues_over_time(run)?,
        },
        Plot {
            name: "requests_gantt",
            title: "Request timeline",
            svg: gantt(run)?,
        },
        Plot {
            name: "model_fit",
            title: "Execute time: OLS model vs measured",
            svg: model_fit(run)?,
        },
    ])
}

fn plot_error<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("drawing a chart: {e:?}")
}

/// Draws into an SVG string.
fn svg(draw: impl FnOnce(&DrawingArea<SVGBackend, Shift>) -> Result<()>) -> Result<String> {
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(plot_error)?;
        draw(&root)?;
        root.present().map_err(plot_error)?;
    }
    Ok(out)
}

/// A chart that says why it has nothing to show.
fn placeholder(root: &DrawingArea<SVGBackend, Shift>, title: &str, why: &str) -> Result<()> {
    let style = TextStyle::from((FONT, 16).into_font())
        .color(&BLACK)
        .pos(Pos::new(HPos::Center, VPos::Center));
    let (w, h) = root.dim_in_pixel();
    root.draw(&Text::new(
        format!("{title}: {why}"),
        (w as i32 / 2, h as i32 / 2),
        style,
    ))
    .map_err(plot_error)
}

/// Every chart here: f64 on both axes.
type Chart<'a, 'b> = ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// A chart on `root` over `x` × `y` with the report's caption, margins and fonts, its mesh
/// drawn with the axes described; `mesh` adds what one chart needs beyond that.
fn axes<'a, 'b>(
    root: &'a DrawingArea<SVGBackend<'b>, Shift>,
    caption: &str,
    (x, y): (Range<f64>, Range<f64>),
    (x_desc, y_desc): (&str, &str),
    mesh: impl FnOnce(&mut MeshStyle<'_, '_, RangedCoordf64, RangedCoordf64, SVGBackend<'b>>),
) -> Result<Chart<'a, 'b>> {
    let mut chart = ChartBuilder::on(root)
        .caption(caption, (FONT, 18))
        .margin(12)
        .x_label_area_size(50)
        .y_label_area_size(70)
        .build_cartesian_2d(x, y)
        .map_err(plot_error)?;
    let mut style = chart.configure_mesh();
    style
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 15))
        .x_desc(x_desc)
        .y_desc(y_desc);
    mesh(&mut style);
    style.draw().map_err(plot_error)?;
    Ok(chart)
}

/// The chart's legend, at `position`.
fn legend<'a, 'b: 'a>(chart: &mut Chart<'a, 'b>, position: SeriesLabelPosition) -> Result<()> {
    chart
        .configure_series_labels()
        .label_font((FONT, 14))
        .position(position)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(plot_error)
}

/// Seconds since the run's start for a CLOCK_MONOTONIC ns time.
fn seconds(t_ns: u64, start_ns: u64) -> f64 {
    t_ns.saturating_sub(start_ns) as f64 / 1e9
}

/// Means of `values` (one vector per series) over time bins: (bin mid time s, means).
fn binned(times: &[f64], values: &[Vec<f64>], t_end: f64) -> Vec<(f64, Vec<f64>)> {
    let bins = TIME_BINS.min(times.len()).max(1);
    let width = (t_end / bins as f64).max(1e-9);
    let mut sums = vec![(0usize, vec![0.0; values.len()]); bins];
    for (i, &t) in times.iter().enumerate() {
        let b = ((t / width) as usize).min(bins - 1);
        sums[b].0 += 1;
        for (k, series) in values.iter().enumerate() {
            sums[b].1[k] += series[i];
        }
    }
    sums.into_iter()
        .enumerate()
        .filter(|(_, (n, _))| *n > 0)
        .map(|(b, (n, s))| {
            (
                (b as f64 + 0.5) * width,
                s.into_iter().map(|v| v / n as f64).collect(),
            )
        })
        .collect()
}

fn phases_over_time(run: &Run) -> Result<String> {
    let title = "Phase time per step over time";
    svg(|root| {
        if run.steps.is_empty() {
            return placeholder(root, title, "no steps");
        }
        let (start, end) = run.window();
        let t_end = seconds(end, start).max(1e-6);
        let times: Vec<f64> = run
            .steps
            .iter()
            .map(|s| seconds(s.start_ns, start))
            .collect();
        // Stacked: schedule, schedule+execute, schedule+execute+update, in ms.
        let ms = |ns: u64| ns as f64 / 1e6;
        let stacks: Vec<Vec<f64>> = vec![
            run.steps.iter().map(|s| ms(s.schedule_ns)).collect(),
            run.steps
                .iter()
                .map(|s| ms(s.schedule_ns + s.execute_ns))
                .collect(),
            run.steps
                .iter()
                .map(|s| ms(s.schedule_ns + s.execute_ns + s.update_ns))
                .collect(),
        ];
        let bins = binned(&times, &stacks, t_end);
        let y_max = bins.iter().map(|(_, v)| v[2]).fold(0.0, f64::max) * 1.1 + 1e-6;
        let mut chart = axes(
            root,
            &format!("{title} (mean per bin)"),
            (0.0..t_end, 0.0..y_max),
            ("time since trace start (s)", "ms per step"),
            |_| {},
        )?;
        // Drawn top layer first, so each lower band paints over the one above it.
        for (k, (name, color)) in [
            ("update", UPDATE),
            ("execute", EXECUTE),
            ("schedule", SCHEDULE),
        ]
        .into_iter()
        .enumerate()
        {
            let layer = 2 - k;
            chart
                .draw_series(
                    AreaSeries::new(
                        bins.iter().map(|(t, v)| (*t, v[layer])),
                        0.0,
                        color.mix(0.85),
                    )
                    .border_style(color),
                )
                .map_err(plot_error)?
                .label(name)
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled())
                });
        }
        legend(&mut chart, SeriesLabelPosition::MiddleRight)
    })
}

fn step_vs_tokens(run: &Run) -> Result<String> {
    let title = "Step time vs scheduled tokens";
    svg(|root| {
        let points: Vec<(f64, f64)> = run
            .steps
            .iter()
            .filter_map(|s| Some((f64::from(s.scheduled_tokens?), s.step_ns as f64 / 1e6)))
            .collect();
        if points.is_empty() {
            return placeholder(
                root,
                title,
                "scheduled tokens were not captured in this run",
            );
        }
        let stride = points.len().div_ceil(MAX_POINTS);
        let x_max = points.iter().map(|p| p.0).fold(0.0, f64::max) * 1.05 + 1.0;
        let y_max = points.iter().map(|p| p.1).fold(0.0, f64::max) * 1.05 + 1e-6;
        let mut chart = axes(
            root,
            title,
            (0.0..x_max, 0.0..y_max),
            ("scheduled tokens in the step", "step time (ms)"),
            |_| {},
        )?;
        chart
            .draw_series(
                points
                    .iter()
                    .step_by(stride)
                    .map(|&p| Circle::new(p, 2, SCHEDULE.mix(0.5).filled())),
            )
            .map_err(plot_error)?;
        Ok(())
    })
}

fn queues_over_time(run: &Run) -> Result<String> {
    let title = "Queue lengths over time";
    svg(|root| {
        let steps: Vec<_> = run
            .steps
            .iter()
            .filter(|s| s.running.is_some() && s.waiting.is_some())
            .collect();
        if steps.is_empty() {
            return placeholder(root, title, "queue lengths were not captured in this run");
        }
        let (start, end) = run.window();
        let t_end = seconds(end, start).max(1e-6);
        let times: Vec<f64> = steps.iter().map(|s| seconds(s.start_ns, start)).collect();
        let series = vec![
            steps
                .iter()
                .map(|s| f64::from(s.running.unwrap_or(0)))
                .collect(),
            steps
                .iter()
                .map(|s| f64::from(s.waiting.unwrap_or(0)))
                .collect(),
        ];
        let bins = binned(&times, &series, t_end);
        let y_max = bins
            .iter()
            .flat_map(|(_, v)| v.iter().copied())
            .fold(0.0, f64::max)
            * 1.1
            + 1.0;
        let mut chart = axes(
            root,
            &format!("{title} (mean per bin, after schedule())"),
            (0.0..t_end, 0.0..y_max),
            ("time since trace start (s)", "requests"),
            |_| {},
        )?;
        for (k, (name, color)) in [("running", SCHEDULE), ("waiting", EXECUTE)]
            .into_iter()
            .enumerate()
        {
            chart
                .draw_series(LineSeries::new(
                    bins.iter().map(|(t, v)| (*t, v[k])),
                    color.stroke_width(2),
                ))
                .map_err(plot_error)?
                .label(name)
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 14, y)], color.stroke_width(2))
                });
        }
        legend(&mut chart, SeriesLabelPosition::MiddleRight)
    })
}

fn gantt(run: &Run) -> Result<String> {
    let title = "Request timeline";
    svg(|root| {
        let (start, end) = run.window();
        let lives = lifecycles(&run.events, end);
        if lives.is_empty() {
            return placeholder(root, title, "request events were not captured in this run");
        }
        let lives = &lives[..lives.len().min(GANTT_REQUESTS)];
        let t_end = lives
            .iter()
            .flat_map(|l| l.spans.iter().map(|s| seconds(s.end_ns, start)))
            .fold(0.0, f64::max)
            .max(1e-6);
        let rows = lives.len() as f64;
        let mut chart = axes(
            root,
            &format!("{title} (first {} requests)", lives.len()),
            (0.0..t_end * 1.02, rows..0.0),
            ("time since trace start (s)", "request (arrival order)"),
            |mesh| {
                mesh.y_label_formatter(&|y| format!("{y:.0}"))
                    .disable_y_mesh();
            },
        )?;
        let color = |state: State| match state {
            State::Waiting => EXECUTE,
            State::Running => SCHEDULE,
            State::Preempted => PREEMPTED,
        };
        for state in [State::Waiting, State::Running, State::Preempted] {
            chart
                .draw_series(lives.iter().enumerate().flat_map(|(row, life)| {
                    life.spans
                        .iter()
                        .filter(|s| s.state == state)
                        .map(move |s| {
                            Rectangle::new(
                                [
                                    (seconds(s.start_ns, start), row as f64 + 0.1),
                                    (seconds(s.end_ns, start), row as f64 + 0.9),
                                ],
                                color(state).filled(),
                            )
                        })
                }))
                .map_err(plot_error)?
                .label(state.name())
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 12, y + 5)], color(state).filled())
                });
        }
        legend(&mut chart, SeriesLabelPosition::UpperRight)
    })
}

/// Each step's execute time against the model's prediction for it (a point on the diagonal
/// is predicted exactly), per kind of step.
fn model_fit(run: &Run) -> Result<String> {
    let title = "Execute time: OLS model vs measured";
    /// (predicted ms, measured ms) per step.
    type Points = Vec<(f64, f64)>;
    svg(|root| {
        let series: Vec<(StepKind, u64, Points)> = fits(run)
            .into_iter()
            .filter(|f| f.phase == "execute")
            .map(|fit| {
                // Outliers left out of the fit are left out here too (milliseconds off the
                // diagonal, they would squeeze the rest into a corner).
                let bound = fit.outlier_above_ns.unwrap_or(f64::INFINITY);
                let points = run
                    .steps
                    .iter()
                    .filter(|s| StepKind::of(s) == Some(fit.steps))
                    .filter_map(|s| Some((fit.predict(s)?, s.execute_ns as f64)))
                    .filter(|(predicted, measured)| (measured - predicted).abs() <= bound)
                    .map(|(predicted, measured)| (predicted / 1e6, measured / 1e6))
                    .collect();
                (fit.steps, fit.outliers, points)
            })
            .collect();
        if series.is_empty() {
            return placeholder(root, title, "no model (batch features not captured)");
        }
        let all = series.iter().flat_map(|(.., p)| p.iter());
        let max = all.fold(0.0, |m: f64, p| m.max(p.0).max(p.1)) * 1.05 + 1e-6;
        let mut chart = axes(
            root,
            title,
            (0.0..max, 0.0..max),
            ("predicted execute time (ms)", "measured execute time (ms)"),
            |_| {},
        )?;
        chart
            .draw_series(LineSeries::new([(0.0, 0.0), (max, max)], BLACK.mix(0.4)))
            .map_err(plot_error)?;
        for (kind, outliers, points) in &series {
            let color = match kind {
                StepKind::Prefill => EXECUTE,
                StepKind::DecodeOnly => SCHEDULE,
            };
            let stride = points.len().div_ceil(MAX_POINTS).max(1);
            chart
                .draw_series(
                    points
                        .iter()
                        .step_by(stride)
                        .map(|&p| Circle::new(p, 2, color.mix(0.5).filled())),
                )
                .map_err(plot_error)?
                .label(format!("{} ({outliers} outliers not shown)", kind.name()))
                .legend(move |(x, y)| Circle::new((x + 6, y), 4, color.filled()));
        }
        legend(&mut chart, SeriesLabelPosition::UpperLeft)
    })
}
