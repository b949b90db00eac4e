//! A baseline step-time model, as LLM-serving simulators use one: ordinary least squares of
//! each phase's time on the step's batch features, fitted separately to steps with prefill
//! work and to decode-only steps (a prompt token and a decode token cost differently, and a
//! single line through both kinds of step fits neither).
//!
//! The solver is a few lines of modified Gram–Schmidt QR rather than a linear-algebra crate:
//! five columns, and QR solves the least squares without forming XᵀX (whose
//! condition number is the square of X's: token counts and context sums differ by 10⁶). A
//! column that is constant or a linear combination of the others in the fitted steps (in
//! decode-only steps, `prefill_tokens` and `prefill_requests` are all 0) is left out and
//! reported as not identifiable, instead of yielding arbitrary coefficients.

use serde::Serialize;

use super::table::Table;
use crate::schema::{
    load::Run,
    rows::{StepRow, PHASES},
};

/// A per-step feature: a steps.csv column read as a number (`None`: not observed).
pub struct Feature {
    pub name: &'static str,
    pub get: fn(&StepRow) -> Option<f64>,
    /// One of the model's regressors (the others are sums of these, or bookkeeping).
    pub regressor: bool,
}

/// The features of `tracer export --format features`, in column order. The regressors are
/// the model's columns, in this order: tokens of each kind, a cost per prefill request
/// (chunk) beyond its tokens, and the context the batch attends over. `batch_size` is not
/// one: without speculative decoding a decode request is one decode token, so batch size
/// is `prefill_requests + decode_tokens`.
pub const FEATURES: &[Feature] = &[
    Feature {
        name: "scheduled_tokens",
        get: |s| s.scheduled_tokens.map(f64::from),
        regressor: false,
    },
    Feature {
        name: "prefill_tokens",
        get: |s| s.prefill_tokens.map(f64::from),
        regressor: true,
    },
    Feature {
        name: "decode_tokens",
        get: |s| s.decode_tokens.map(f64::from),
        regressor: true,
    },
    Feature {
        name: "batch_size",
        get: |s| s.batch_size.map(f64::from),
        regressor: false,
    },
    Feature {
        name: "prefill_requests",
        get: |s| s.prefill_requests.map(f64::from),
        regressor: true,
    },
    Feature {
        name: "decode_requests",
        get: |s| s.decode_requests.map(f64::from),
        regressor: false,
    },
    Feature {
        name: "context_tokens_sum",
        get: |s| s.context_tokens_sum.map(|v| v as f64),
        regressor: true,
    },
    Feature {
        name: "context_tokens_max",
        get: |s| s.context_tokens_max.map(f64::from),
        regressor: false,
    },
    Feature {
        name: "new_requests",
        get: |s| s.new_requests.map(f64::from),
        regressor: false,
    },
    Feature {
        name: "resumed_requests",
        get: |s| s.resumed_requests.map(f64::from),
        regressor: false,
    },
    Feature {
        name: "preempted",
        get: |s| s.preempted.map(f64::from),
        regressor: false,
    },
    Feature {
        name: "kv_blocks_used",
        get: |s| s.kv_blocks_used.map(f64::from),
        regressor: false,
    },
];

/// Steps fitted apart: `prefill` = any prompt token scheduled (chunks and recomputation after
/// a preemption included, decodes beside them or not); `decode_only` = every token a decode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StepKind {
    Prefill,
    DecodeOnly,
}

impl StepKind {
    /// `None` for steps that scheduled nothing, or whose batch was not captured.
    pub fn of(step: &StepRow) -> Option<Self> {
        match (step.prefill_tokens?, step.decode_tokens?) {
            (0, 0) => None,
            (0, _) => Some(Self::DecodeOnly),
            _ => Some(Self::Prefill),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Prefill => "prefill",
            Self::DecodeOnly => "decode_only",
        }
    }
}

/// Fewest steps a fit needs (a few per coefficient, so R² is not a count of parameters).
pub const MIN_STEPS: usize = 20;

/// A column's part independent of the columns before it, relative to its size, below which
/// it counts as their linear combination.
const DEPENDENT: f64 = 1e-9;

/// Steps whose residual exceeds this many robust standard deviations (1.4826 × the median
/// absolute residual) are left out and the fit repeated, until none are (at most
/// [`TRIM_ROUNDS`] times). A step in which the engine thread was descheduled, or paused for
/// garbage collection, is milliseconds late for no reason in its batch, and a few such
/// steps sway least squares: in a fixture trace on our 2-core dev VM under load, 7 % of the
/// steps 1–7 ms late took the execute fit's R² from 1.00 to 0.20.
pub const OUTLIER_SIGMAS: f64 = 5.0;
const TRIM_ROUNDS: usize = 10;
/// No residual under this is an outlier (ns): below the tracer's own timing noise.
const OUTLIER_FLOOR_NS: f64 = 1_000.0;

#[derive(Clone, Debug, Serialize)]
pub struct Coefficient {
    pub feature: &'static str,
    /// ns of phase time per unit (token, request); `None`: not identifiable in these steps.
    pub ns_per_unit: Option<f64>,
}

/// One phase's fit over one kind of step.
#[derive(Clone, Debug, Serialize)]
pub struct Fit {
    pub steps: StepKind,
    pub phase: &'static str,
    /// Steps fitted.
    pub n: u64,
    /// Steps of this kind left out as outliers ([`OUTLIER_SIGMAS`]).
    pub outliers: u64,
    /// The residual beyond which a step was an outlier, ns (`None`: no trimming needed).
    pub outlier_above_ns: Option<f64>,
    /// `None` when the phase time is the same in every step (nothing to explain).
    pub r2: Option<f64>,
    /// Root mean square of the residuals, ns.
    pub rmse_ns: f64,
    pub intercept_ns: f64,
    /// In [`FEATURES`]' order of the regressors.
    pub coefficients: Vec<Coefficient>,
}

impl Fit {
    /// Predicted phase time of `step` (ns), if it has every regressor.
    pub fn predict(&self, step: &StepRow) -> Option<f64> {
        let mut total = self.intercept_ns;
        for (c, feature) in self.coefficients.iter().zip(regressors()) {
            total += c.ns_per_unit.unwrap_or(0.0) * (feature.get)(step)?;
        }
        Some(total)
    }
}

pub fn regressors() -> impl Iterator<Item = &'static Feature> {
    FEATURES.iter().filter(|f| f.regressor)
}

/// Fits every phase on each kind of step that has at least [`MIN_STEPS`] steps with all
/// regressors observed.
pub fn fits(run: &Run) -> Vec<Fit> {
    let mut out = Vec::new();
    for kind in [StepKind::Prefill, StepKind::DecodeOnly] {
        let rows: Vec<(&StepRow, Vec<f64>)> = run
            .steps
            .iter()
            .filter(|s| StepKind::of(s) == Some(kind))
            .filter_map(|s| Some((s, regressors().map(|f| (f.get)(s)).collect::<Option<_>>()?)))
            .collect();
        if rows.len() < MIN_STEPS {
            continue;
        }
        let mut columns = vec![vec![1.0; rows.len()]];
        columns.extend((0..regressors().count()).map(|k| rows.iter().map(|r| r.1[k]).collect()));
        for (phase, get) in PHASES {
            let y: Vec<f64> = rows.iter().map(|(s, _)| get(s) as f64).collect();
            let (beta, kept, bound) = trimmed_least_squares(&columns, &y);
            let predict = |i: usize| -> f64 {
                beta.iter()
                    .zip(&columns)
                    .map(|(b, c)| b.unwrap_or(0.0) * c[i])
                    .sum()
            };
            let y_kept: Vec<f64> = kept.iter().map(|&i| y[i]).collect();
            let predicted: Vec<f64> = kept.iter().map(|&i| predict(i)).collect();
            let (r2, rmse_ns) = goodness(&y_kept, &predicted);
            out.push(Fit {
                steps: kind,
                phase,
                n: kept.len() as u64,
                outliers: (y.len() - kept.len()) as u64,
                outlier_above_ns: bound,
                r2,
                rmse_ns,
                intercept_ns: beta[0].unwrap_or(0.0),
                coefficients: regressors()
                    .zip(&beta[1..])
                    .map(|(f, b)| Coefficient {
                        feature: f.name,
                        ns_per_unit: *b,
                    })
                    .collect(),
            });
        }
    }
    out
}

/// [`least_squares`] over the rows left after trimming outliers ([`OUTLIER_SIGMAS`]):
/// (coefficients, rows kept, the residual bound of the last trim).
fn trimmed_least_squares(
    columns: &[Vec<f64>],
    y: &[f64],
) -> (Vec<Option<f64>>, Vec<usize>, Option<f64>) {
    let mut kept: Vec<usize> = (0..y.len()).collect();
    let mut bound = None;
    for _ in 0..TRIM_ROUNDS {
        let sub: Vec<Vec<f64>> = columns
            .iter()
            .map(|c| kept.iter().map(|&i| c[i]).collect())
            .collect();
        let beta = least_squares(&sub, &kept.iter().map(|&i| y[i]).collect::<Vec<_>>());
        let residual = |i: usize| -> f64 {
            y[i] - beta
                .iter()
                .zip(columns)
                .map(|(b, c)| b.unwrap_or(0.0) * c[i])
                .sum::<f64>()
        };
        let mut absolute: Vec<f64> = kept.iter().map(|&i| residual(i).abs()).collect();
        absolute.sort_by(f64::total_cmp);
        let sigma = 1.4826 * absolute[absolute.len() / 2];
        let above = (OUTLIER_SIGMAS * sigma).max(OUTLIER_FLOOR_NS);
        let inliers: Vec<usize> = kept
            .iter()
            .copied()
            .filter(|&i| residual(i).abs() <= above)
            .collect();
        if inliers.len() == kept.len() || inliers.len() < MIN_STEPS {
            return (beta, kept, bound);
        }
        kept = inliers;
        bound = Some(above);
    }
    let sub: Vec<Vec<f64>> = columns
        .iter()
        .map(|c| kept.iter().map(|&i| c[i]).collect())
        .collect();
    let beta = least_squares(&sub, &kept.iter().map(|&i| y[i]).collect::<Vec<_>>());
    (beta, kept, bound)
}

/// Least-squares coefficients of `y` on `columns` (one per column; `None` for a column
/// dependent on the ones before it), by modified Gram–Schmidt QR and back substitution.
pub fn least_squares(columns: &[Vec<f64>], y: &[f64]) -> Vec<Option<f64>> {
    let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
    // Kept columns: (index, orthonormal q, R's column above the diagonal, diagonal).
    let mut kept: Vec<(usize, Vec<f64>, Vec<f64>, f64)> = Vec::new();
    for (j, column) in columns.iter().enumerate() {
        let mut v = column.clone();
        let size = dot(&v, &v).sqrt();
        let mut above = Vec::with_capacity(kept.len());
        for (_, q, _, _) in &kept {
            let r = dot(q, &v);
            v.iter_mut().zip(q).for_each(|(x, q)| *x -= r * q);
            above.push(r);
        }
        let norm = dot(&v, &v).sqrt();
        if size == 0.0 || norm <= DEPENDENT * size {
            continue;
        }
        v.iter_mut().for_each(|x| *x /= norm);
        kept.push((j, v, above, norm));
    }
    // Qᵀy, then R β = Qᵀy from the last row up.
    let mut rest = y.to_vec();
    let qty: Vec<f64> = kept
        .iter()
        .map(|(_, q, _, _)| {
            let b = dot(q, &rest);
            rest.iter_mut().zip(q).for_each(|(x, q)| *x -= b * q);
            b
        })
        .collect();
    let mut beta = vec![0.0; kept.len()];
    for k in (0..kept.len()).rev() {
        let later: f64 = (k + 1..kept.len()).map(|m| kept[m].2[k] * beta[m]).sum();
        beta[k] = (qty[k] - later) / kept[k].3;
    }
    let mut out = vec![None; columns.len()];
    for ((j, ..), b) in kept.iter().zip(beta) {
        out[*j] = Some(b);
    }
    out
}

/// (R², RMSE) of `predicted` against `y`.
fn goodness(y: &[f64], predicted: &[f64]) -> (Option<f64>, f64) {
    let n = y.len() as f64;
    let mean = y.iter().sum::<f64>() / n;
    let total: f64 = y.iter().map(|v| (v - mean).powi(2)).sum();
    let residual: f64 = y.iter().zip(predicted).map(|(v, p)| (v - p).powi(2)).sum();
    let r2 = (total > 0.0).then(|| 1.0 - residual / total);
    (r2, (residual / n).sqrt())
}

/// `x` µs with four significant digits (coefficients span ns per context token to ms).
fn micros(ns: f64) -> String {
    let us = ns / 1e3;
    let digits = if us == 0.0 {
        0
    } else {
        (3 - us.abs().log10().floor() as i32).clamp(0, 9) as usize
    };
    format!("{us:.digits$}")
}

/// The report's table of fits.
pub fn table(fits: &[Fit]) -> Table {
    let names: Vec<String> = regressors().map(|f| format!("µs/{}", f.name)).collect();
    let mut header = vec![
        "steps",
        "phase",
        "n",
        "outliers",
        "R²",
        "RMSE µs",
        "intercept µs",
    ];
    header.extend(names.iter().map(String::as_str));
    let mut table = Table::new("Step-time model (OLS per phase)", &header);
    for fit in fits {
        let mut row = vec![
            fit.steps.name().into(),
            fit.phase.into(),
            fit.n.to_string(),
            fit.outliers.to_string(),
            fit.r2.map_or("-".into(), |r| format!("{r:.3}")),
            micros(fit.rmse_ns),
            micros(fit.intercept_ns),
        ];
        row.extend(
            fit.coefficients
                .iter()
                .map(|c| c.ns_per_unit.map_or("-".into(), micros)),
        );
        table.row(row);
    }
    if fits.is_empty() {
        return table.with_note(format!(
            "no fit: fewer than {MIN_STEPS} steps of a kind with their batch captured"
        ));
    }
    table.with_note(format!(
        "phase time = intercept + Σ coefficient × feature, least squares over the steps of \
         each kind (prefill: any prompt token in the batch; decode_only: only decodes), \
         leaving out outliers beyond {OUTLIER_SIGMAS} robust σ of the residuals; \
         '-' = not identifiable there (constant, or a sum of the other columns); \
         exact values (ns) in summary.json"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovers_an_exact_plane_and_drops_dependent_columns() {
        let x1: Vec<f64> = (0..50).map(|i| f64::from(i % 7) * 100.0).collect();
        let x2: Vec<f64> = (0..50).map(|i| f64::from((i * 13) % 11) * 1e5).collect();
        let sum: Vec<f64> = x1.iter().zip(&x2).map(|(a, b)| a + b).collect();
        let zero = vec![0.0; 50];
        let y: Vec<f64> = x1
            .iter()
            .zip(&x2)
            .map(|(a, b)| 1e6 + 2_000.0 * a + 0.5 * b)
            .collect();
        let columns = [vec![1.0; 50], x1, zero, x2, sum];
        let beta = least_squares(&columns, &y);
        assert!((beta[0].unwrap() - 1e6).abs() < 1e-3, "{beta:?}");
        assert!((beta[1].unwrap() - 2_000.0).abs() < 1e-6, "{beta:?}");
        assert_eq!(beta[2], None);
        assert!((beta[3].unwrap() - 0.5).abs() < 1e-9, "{beta:?}");
        assert_eq!(beta[4], None);
    }

    #[test]
    fn late_steps_are_trimmed_not_fitted() {
        // 1 ms + 20 µs a token, ±2 µs of jitter, and every tenth step 3 ms late.
        let x: Vec<f64> = (0..200).map(|i| f64::from((i * 7) % 31)).collect();
        let y: Vec<f64> = x
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let late = if i % 10 == 0 { 3e6 } else { 0.0 };
                1e6 + 2e4 * t + f64::from((i * 13 % 5) as u32) * 1e3 - 2e3 + late
            })
            .collect();
        let (beta, kept, bound) = trimmed_least_squares(&[vec![1.0; 200], x], &y);
        assert_eq!(kept.len(), 180);
        assert!(kept.iter().all(|i| i % 10 != 0));
        // Between the jitter and the lateness.
        assert!((2e3..3e6).contains(&bound.unwrap()), "{bound:?}");
        assert!((beta[1].unwrap() - 2e4).abs() < 20.0, "{beta:?}");
        assert!((beta[0].unwrap() - 1e6).abs() < 1e3, "{beta:?}");
    }

    #[test]
    fn r2_and_rmse() {
        let (r2, rmse) = goodness(&[1.0, 2.0, 3.0], &[1.0, 2.0, 4.0]);
        assert!((r2.unwrap() - 0.5).abs() < 1e-12);
        assert!((rmse - (1.0f64 / 3.0).sqrt()).abs() < 1e-12);
        assert_eq!(goodness(&[2.0, 2.0], &[2.0, 2.0]).0, None);
    }

    #[test]
    fn micros_keeps_four_significant_digits() {
        assert_eq!(micros(1_234_567.0), "1235");
        assert_eq!(micros(2_000.0), "2.000");
        assert_eq!(micros(1.5), "0.001500");
        assert_eq!(micros(0.0), "0");
    }
}
