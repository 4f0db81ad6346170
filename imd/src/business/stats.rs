//! A shop's figures: first-response times kept as a histogram of fixed buckets, so
//! that any number of conversations costs a bounded record per shop (64 counters),
//! and the percentiles read from it.
//!
//! Bucket `i` holds times up to `FIRST_BOUND_MS × 1.25^i`: 250 ms, 312 ms, … up to
//! about 3.7 days for the last, which also holds anything longer. A percentile is
//! reported as the upper bound of the bucket it falls in, so it is at most 25% above
//! the true figure.

/// The upper bound of the first bucket.
const FIRST_BOUND_MS: f64 = 250.0;
/// How much each bucket's bound grows over the one before.
const GROWTH: f64 = 1.25;
/// How many buckets there are.
pub const BUCKETS: usize = 64;

/// The upper bound of bucket `i`, in ms.
pub fn bound_ms(i: usize) -> u64 {
    (FIRST_BOUND_MS * GROWTH.powi(i as i32)).round() as u64
}

/// The bucket of a time of `ms`.
pub fn bucket_of(ms: u64) -> usize {
    (0..BUCKETS - 1)
        .find(|&i| ms <= bound_ms(i))
        .unwrap_or(BUCKETS - 1)
}

/// The `q` quantile (0 < q ≤ 1) of the times counted in `counts` (index: bucket), as
/// its bucket's upper bound; `None` when nothing is counted.
pub fn quantile_ms(counts: &[u64], q: f64) -> Option<u64> {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return None;
    }
    // The rank of the q-th time, 1-based: the smallest that covers q of them.
    let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
    let mut seen = 0;
    for (i, n) in counts.iter().enumerate() {
        seen += n;
        if seen >= rank {
            return Some(bound_ms(i.min(BUCKETS - 1)));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_every_time_in_order() {
        assert_eq!(bucket_of(0), 0);
        assert_eq!(bucket_of(250), 0);
        assert_eq!(bucket_of(251), 1);
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
        let mut last = 0;
        for ms in (0..10_000_000).step_by(997) {
            let b = bucket_of(ms);
            assert!(b >= last, "buckets never go back");
            assert!(ms <= bound_ms(b) || b == BUCKETS - 1);
            assert!(
                b == 0 || ms > bound_ms(b - 1),
                "{ms} belongs to a lower bucket"
            );
            last = b;
        }
        // A day fits below the last bucket.
        assert!(bucket_of(86_400_000) < BUCKETS - 1);
    }

    #[test]
    fn quantiles_are_within_a_bucket_above_the_truth() {
        assert_eq!(quantile_ms(&[], 0.5), None);
        assert_eq!(quantile_ms(&[0, 0], 0.9), None);
        // 100 times: 1 s, 2 s, … 100 s.
        let mut counts = vec![0; BUCKETS];
        for s in 1..=100u64 {
            counts[bucket_of(s * 1000)] += 1;
        }
        for (q, truth) in [(0.5, 50_000u64), (0.9, 90_000), (1.0, 100_000)] {
            let got = quantile_ms(&counts, q).unwrap();
            assert!(
                got >= truth && got <= truth * 5 / 4 + 1,
                "q{q}: {got} for {truth}"
            );
        }
        // One time alone is every quantile.
        let mut one = vec![0; BUCKETS];
        one[bucket_of(3_000)] = 1;
        assert_eq!(quantile_ms(&one, 0.5), quantile_ms(&one, 0.99));
    }
}
