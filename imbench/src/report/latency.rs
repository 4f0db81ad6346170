//! Latency histograms: their bounds, how a sample is recorded, their wire form (agents
//! send deltas once a second), and the percentiles the report and the chart print.
//!
//! Microseconds inside, milliseconds out. It must not know about agents or runs.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Highest latency a histogram records, in microseconds (one hour); above it values
/// are clamped.
pub const MAX_LATENCY_US: u64 = 3_600_000_000;

/// An empty latency histogram: microseconds, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("static histogram bounds are valid")
}

/// Records `us` (clamped into the histogram's range).
pub fn record_us(h: &mut Histogram<u64>, us: u64) {
    h.saturating_record(us.clamp(1, MAX_LATENCY_US));
}

/// A histogram on the wire: `[value, count]` per non-empty bucket.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct HistData(pub Vec<[u64; 2]>);

impl HistData {
    /// Snapshot of `h`.
    pub fn from_histogram(h: &Histogram<u64>) -> Self {
        HistData(
            h.iter_recorded()
                .map(|v| [v.value_iterated_to(), v.count_at_value()])
                .collect(),
        )
    }

    /// Adds the snapshot into `h`.
    pub fn add_to(&self, h: &mut Histogram<u64>) {
        for &[value, count] in &self.0 {
            // value_iterated_to() of a bucket maps back into the same bucket
            let _ = h.record_n(value.clamp(1, MAX_LATENCY_US), count);
        }
    }

    /// Whether there is nothing in it.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest.
    pub max: f64,
    /// Mean.
    pub mean: f64,
    /// Number of samples.
    pub count: u64,
}

impl LatencySummary {
    /// Percentiles of a microsecond histogram, in milliseconds (all 0 when empty).
    pub fn from_histogram(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return LatencySummary::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        LatencySummary {
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
            mean: h.mean() / 1000.0,
            count: h.len(),
        }
    }
}

/// One point of a latency distribution.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Quantile {
    /// Fraction of samples at or below `ms` (0…1).
    pub quantile: f64,
    /// Latency, milliseconds.
    pub ms: f64,
}

/// The percentile distribution of a microsecond histogram, as HdrHistogram prints it
/// (5 steps per halving of the distance to 100%), in milliseconds.
pub fn distribution(h: &Histogram<u64>) -> Vec<Quantile> {
    if h.is_empty() {
        return Vec::new();
    }
    h.iter_quantiles(5)
        .map(|v| Quantile {
            quantile: v.quantile_iterated_to(),
            ms: v.value_iterated_to() as f64 / 1000.0,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_survive_the_wire() {
        let mut h = new_histogram();
        for us in [1, 50, 51, 999, 1_000, 12_345, 5_000_000, u64::MAX] {
            record_us(&mut h, us);
        }
        let wire: HistData =
            serde_json::from_str(&serde_json::to_string(&HistData::from_histogram(&h)).unwrap())
                .unwrap();
        let mut back = new_histogram();
        wire.add_to(&mut back);
        assert_eq!(back.len(), h.len());
        for q in [0.0, 0.25, 0.5, 0.9, 0.99, 1.0] {
            assert_eq!(back.value_at_quantile(q), h.value_at_quantile(q), "q={q}");
        }
        assert!(back.max() >= 3_600_000_000 - 3_600_000);
    }

    #[test]
    fn latency_summary_in_ms() {
        let mut h = new_histogram();
        for us in 1..=1000u64 {
            record_us(&mut h, us * 10); // 10 µs … 10 ms, uniform
        }
        let s = LatencySummary::from_histogram(&h);
        assert_eq!(s.count, 1000);
        assert!((s.p50 - 5.0).abs() < 0.01, "{s:?}");
        assert!((s.p90 - 9.0).abs() < 0.01, "{s:?}");
        assert!((s.p99 - 9.9).abs() < 0.01, "{s:?}");
        assert!((s.max - 10.0).abs() < 0.01, "{s:?}");
        assert_eq!(
            LatencySummary::from_histogram(&new_histogram()),
            LatencySummary::default()
        );
    }
}
