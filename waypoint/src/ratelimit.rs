//! Local rate limiting (Ambit `RateLimitPolicy`): a token bucket per
//! service or per route. Sans-IO: the caller passes the time, so tests are
//! exact. Over the limit the waypoint answers 429 with
//! `x-ratelimit-limited: local` (and `x-envoy-ratelimited` for tools that
//! look for Envoy's header).

use std::time::{Duration, Instant};

use ambit_api::xds::proto::l7 as pb;

/// Header set on a 429 from the local limiter.
pub const LIMITED_HEADER: &str = "x-ratelimit-limited";

/// One token bucket.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    max: u32,
    per_fill: u32,
    interval: Duration,
    tokens: u32,
    last_fill: Instant,
}

impl TokenBucket {
    /// A full bucket for `limit`, starting at `now`. `None` for a limit the
    /// controller would have rejected (no tokens or no interval).
    pub fn new(limit: &pb::RateLimit, now: Instant) -> Option<Self> {
        (limit.max_tokens > 0 && limit.fill_interval_ms > 0).then(|| TokenBucket {
            max: limit.max_tokens,
            per_fill: limit.tokens_per_fill.max(1),
            interval: Duration::from_millis(limit.fill_interval_ms),
            tokens: limit.max_tokens,
            last_fill: now,
        })
    }

    /// Takes a token if one is there (refilling for the intervals elapsed).
    pub fn try_take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last_fill);
        let fills = (elapsed.as_nanos() / self.interval.as_nanos().max(1)) as u64;
        if fills > 0 {
            let add = fills.saturating_mul(u64::from(self.per_fill));
            self.tokens = u64::from(self.tokens)
                .saturating_add(add)
                .min(u64::from(self.max)) as u32;
            self.last_fill += self.interval * u32::try_from(fills).unwrap_or(u32::MAX);
        }
        if self.tokens == 0 {
            return false;
        }
        self.tokens -= 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_empties_and_refills_per_interval() {
        let t0 = Instant::now();
        let limit = pb::RateLimit {
            name: "r".into(),
            route: String::new(),
            max_tokens: 3,
            tokens_per_fill: 1,
            fill_interval_ms: 100,
        };
        let mut b = TokenBucket::new(&limit, t0).unwrap();
        assert!((0..3).all(|_| b.try_take(t0)));
        assert!(
            !b.try_take(t0),
            "4th request in the same instant is limited"
        );
        assert!(!b.try_take(t0 + Duration::from_millis(99)));
        assert!(
            b.try_take(t0 + Duration::from_millis(100)),
            "one token per interval"
        );
        assert!(!b.try_take(t0 + Duration::from_millis(150)));
        // A long pause refills to the cap, not beyond.
        let later = t0 + Duration::from_secs(10);
        assert_eq!((0..10).filter(|_| b.try_take(later)).count(), 3);
        assert!(TokenBucket::new(&pb::RateLimit::default(), t0).is_none());
    }
}
