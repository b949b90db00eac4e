//! The few statistics the report and compare need: nearest-rank percentiles and the
//! Mann–Whitney U test (step and latency distributions are skewed and long-tailed, so a
//! rank test rather than a t-test).

/// The `p`-th percentile (0–100) of `sorted` by nearest rank: a value that occurred, so a
/// reader can recompute it from the CSV exactly.
pub fn percentile(sorted: &[u64], p: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    Some(sorted[rank.min(sorted.len()) - 1])
}

pub fn mean(values: &[u64]) -> Option<f64> {
    (!values.is_empty())
        .then(|| values.iter().map(|&v| v as f64).sum::<f64>() / values.len() as f64)
}

/// Two-sided p-value of the Mann–Whitney U test that `a` and `b` come from the same
/// distribution (normal approximation with tie correction; `None` below 8 values a side,
/// where the approximation is poor).
pub fn mann_whitney_p(a: &[u64], b: &[u64]) -> Option<f64> {
    const MIN_N: usize = 8;
    let (n1, n2) = (a.len(), b.len());
    if n1 < MIN_N || n2 < MIN_N {
        return None;
    }
    let mut all: Vec<(u64, bool)> = a
        .iter()
        .map(|&v| (v, true))
        .chain(b.iter().map(|&v| (v, false)))
        .collect();
    all.sort_unstable_by_key(|&(v, _)| v);
    let n = all.len();
    let (mut rank_sum_a, mut tie_term) = (0.0, 0.0);
    let mut i = 0;
    while i < n {
        let mut j = i;
        while j < n && all[j].0 == all[i].0 {
            j += 1;
        }
        // Ranks i+1 ..= j share their average.
        let average = (i + 1 + j) as f64 / 2.0;
        let from_a = all[i..j].iter().filter(|(_, in_a)| *in_a).count();
        rank_sum_a += average * from_a as f64;
        let t = (j - i) as f64;
        tie_term += t * t * t - t;
        i = j;
    }
    let (n1f, n2f, nf) = (n1 as f64, n2 as f64, n as f64);
    let u = rank_sum_a - n1f * (n1f + 1.0) / 2.0;
    let mu = n1f * n2f / 2.0;
    let sigma = (n1f * n2f / 12.0 * ((nf + 1.0) - tie_term / (nf * (nf - 1.0)))).sqrt();
    if sigma == 0.0 {
        return Some(1.0);
    }
    let z = (u - mu).abs() / sigma;
    Some((2.0 * normal_upper_tail(z)).min(1.0))
}

/// P(Z > z) for a standard normal Z (W. J. Cody's rational erfc approximation as given in
/// Numerical Recipes, `erfcc`: relative error < 1.2e-7).
fn normal_upper_tail(z: f64) -> f64 {
    let x = z / std::f64::consts::SQRT_2;
    let t = 1.0 / (1.0 + 0.5 * x.abs());
    let poly = -x * x - 1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98
                                + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let erfc = t * poly.exp();
    let erfc = if x >= 0.0 { erfc } else { 2.0 - erfc };
    erfc / 2.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), Some(50));
        assert_eq!(percentile(&v, 99.0), Some(99));
        assert_eq!(percentile(&v, 100.0), Some(100));
        assert_eq!(percentile(&v, 0.0), Some(1));
        assert_eq!(percentile(&[7], 90.0), Some(7));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn normal_tail_matches_tables() {
        assert!((normal_upper_tail(0.0) - 0.5).abs() < 1e-7);
        assert!((normal_upper_tail(1.959_964) - 0.025).abs() < 1e-6);
        assert!((normal_upper_tail(3.0) - 0.001_349_9).abs() < 1e-6);
    }

    #[test]
    fn mann_whitney_separates_shifted_samples_only() {
        let a: Vec<u64> = (0..200).map(|i| 1000 + (i * 37) % 100).collect();
        let same: Vec<u64> = (0..200).map(|i| 1000 + (i * 53) % 100).collect();
        let shifted: Vec<u64> = a.iter().map(|v| v + 30).collect();
        assert!(mann_whitney_p(&a, &same).unwrap() > 0.5);
        assert!(mann_whitney_p(&a, &shifted).unwrap() < 1e-6);
        // Worked by hand: a = 1..=10, b = 6..=15 → U = 12.5, five tied pairs, tie-corrected
        // sigma = 13.202, z = 2.8401, p = 0.004510 (asymptotic, no continuity correction).
        let a: Vec<u64> = (1..=10).collect();
        let b: Vec<u64> = (6..=15).collect();
        let p = mann_whitney_p(&a, &b).unwrap();
        assert!((p - 0.004_510).abs() < 1e-5, "{p}");
        assert_eq!(mann_whitney_p(&a[..3], &b), None);
    }
}
