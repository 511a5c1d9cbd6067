//! Several runs of one measurement: median and spread.

use serde::Serialize;

/// The runs of one measurement, with their median and range.
#[derive(Debug, Clone, Serialize)]
pub struct Stat {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub runs: Vec<f64>,
}

impl Stat {
    /// `None` when there are no runs.
    pub fn of(runs: &[f64]) -> Option<Self> {
        let mut sorted: Vec<f64> = runs.iter().copied().filter(|v| v.is_finite()).collect();
        if sorted.is_empty() {
            return None;
        }
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let median = if n % 2 == 1 {
            sorted[n / 2]
        } else {
            f64::midpoint(sorted[n / 2 - 1], sorted[n / 2])
        };
        Some(Self {
            median,
            min: sorted[0],
            max: sorted[n - 1],
            runs: runs.to_vec(),
        })
    }

    /// The spread as a fraction of the median: (max - min) / median.
    pub fn spread(&self) -> f64 {
        if self.median == 0.0 {
            0.0
        } else {
            (self.max - self.min) / self.median.abs()
        }
    }

    /// `median (min–max)` with `digits` decimals.
    pub fn show(&self, digits: usize) -> String {
        if self.runs.len() < 2 {
            return format!("{:.digits$}", self.median);
        }
        format!("{:.digits$} ({:.digits$}–{:.digits$})", self.median, self.min, self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::Stat;

    #[test]
    fn median_of_odd_and_even_runs() {
        let odd = Stat::of(&[3.0, 1.0, 2.0]).expect("runs");
        assert!((odd.median - 2.0).abs() < f64::EPSILON);
        assert!((odd.min - 1.0).abs() < f64::EPSILON);
        assert!((odd.max - 3.0).abs() < f64::EPSILON);
        let even = Stat::of(&[4.0, 1.0, 2.0, 3.0]).expect("runs");
        assert!((even.median - 2.5).abs() < f64::EPSILON);
        assert!((even.spread() - 3.0 / 2.5).abs() < 1e-12);
        assert_eq!(even.show(1), "2.5 (1.0–4.0)");
        assert!(Stat::of(&[]).is_none());
        assert!(Stat::of(&[f64::NAN]).is_none());
    }
}
