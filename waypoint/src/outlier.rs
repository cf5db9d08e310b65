//! DestinationRule `outlierDetection` as Envoy applies it for Istio: an
//! endpoint with `consecutive5xxErrors` 5xx answers in a row (or
//! `consecutiveGatewayErrors` 502/503/504 or connect failures) is ejected for
//! `baseEjectionTime` × the number of times it has been ejected, unless that
//! would eject more than `maxEjectionPercent` of the endpoints; when fewer
//! than `minHealthPercent` are healthy, ejection is ignored and all are used.
//! Sans-IO: the caller passes the time. A threshold of 0 disables that check.

use std::time::{Duration, Instant};

use ambit_api::xds::proto::l7 as pb;

/// Istio's defaults for fields left at 0.
const DEFAULT_BASE_EJECTION: Duration = Duration::from_secs(30);
const DEFAULT_MAX_EJECTION_PERCENT: u32 = 10;

#[derive(Clone, Debug, Default)]
struct Health {
    consecutive_5xx: u32,
    consecutive_gateway: u32,
    ejected_until: Option<Instant>,
    times_ejected: u32,
}

/// Ejection state for one subset's endpoints.
#[derive(Debug)]
pub struct OutlierDetector {
    five_xx: u32,
    gateway: u32,
    base: Duration,
    max_percent: u32,
    min_health_percent: u32,
    endpoints: Vec<Health>,
}

impl OutlierDetector {
    /// For `endpoints` endpoints under `cfg`.
    pub fn new(cfg: &pb::OutlierDetection, endpoints: usize) -> Self {
        OutlierDetector {
            five_xx: cfg.consecutive_5xx_errors,
            gateway: cfg.consecutive_gateway_errors,
            base: match cfg.base_ejection_time_ms {
                0 => DEFAULT_BASE_EJECTION,
                ms => Duration::from_millis(ms),
            },
            max_percent: match cfg.max_ejection_percent {
                0 => DEFAULT_MAX_EJECTION_PERCENT,
                p => p.min(100),
            },
            min_health_percent: cfg.min_health_percent.min(100),
            endpoints: vec![Health::default(); endpoints],
        }
    }

    fn ejected(&self, now: Instant) -> usize {
        self.endpoints
            .iter()
            .filter(|h| h.ejected_until.is_some_and(|t| now < t))
            .count()
    }

    /// Records the outcome of a request to endpoint `i`: its HTTP status, or
    /// `None` for a connect failure / reset (a gateway error).
    pub fn record(&mut self, i: usize, status: Option<u16>, now: Instant) {
        let n = self.endpoints.len();
        let ejected_now = self.ejected(now);
        let Some(h) = self.endpoints.get_mut(i) else {
            return;
        };
        let gateway_error = matches!(status, None | Some(502..=504));
        let server_error = gateway_error || status.is_some_and(|s| s >= 500);
        if !server_error {
            h.consecutive_5xx = 0;
            h.consecutive_gateway = 0;
            return;
        }
        h.consecutive_5xx += 1;
        if gateway_error {
            h.consecutive_gateway += 1;
        } else {
            h.consecutive_gateway = 0;
        }
        let tripped = (self.five_xx > 0 && h.consecutive_5xx >= self.five_xx)
            || (self.gateway > 0 && h.consecutive_gateway >= self.gateway);
        let already = h.ejected_until.is_some_and(|t| now < t);
        // Envoy always allows ejecting at least one host.
        let cap = ((n as u64 * u64::from(self.max_percent)) / 100).max(1) as usize;
        if tripped && !already && ejected_now < cap {
            h.times_ejected += 1;
            h.ejected_until = Some(now + self.base * h.times_ejected);
            h.consecutive_5xx = 0;
            h.consecutive_gateway = 0;
        }
    }

    /// Endpoints to balance over now (indices). Everyone when too few are
    /// healthy (`minHealthPercent`).
    pub fn available(&self, now: Instant) -> Vec<usize> {
        let n = self.endpoints.len();
        let healthy: Vec<usize> = (0..n)
            .filter(|i| self.endpoints[*i].ejected_until.is_none_or(|t| now >= t))
            .collect();
        if n > 0 && (healthy.len() * 100) / n < self.min_health_percent as usize {
            return (0..n).collect();
        }
        healthy
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(five_xx: u32, gateway: u32, max_percent: u32, min_health: u32) -> pb::OutlierDetection {
        pb::OutlierDetection {
            consecutive_5xx_errors: five_xx,
            consecutive_gateway_errors: gateway,
            interval_ms: 1000,
            base_ejection_time_ms: 1000,
            max_ejection_percent: max_percent,
            min_health_percent: min_health,
        }
    }

    #[test]
    fn ejects_after_consecutive_errors_and_restores() {
        let t0 = Instant::now();
        let mut d = OutlierDetector::new(&cfg(3, 0, 100, 0), 3);
        d.record(0, Some(500), t0);
        d.record(0, Some(200), t0); // a success resets the count
        d.record(0, Some(500), t0);
        d.record(0, Some(503), t0);
        assert_eq!(d.available(t0), vec![0, 1, 2]);
        d.record(0, Some(500), t0);
        assert_eq!(d.available(t0), vec![1, 2], "third 5xx in a row ejects");
        assert_eq!(
            d.available(t0 + Duration::from_millis(1000)),
            vec![0, 1, 2],
            "restored after baseEjectionTime"
        );
        // Ejected again: twice as long.
        let t1 = t0 + Duration::from_secs(2);
        for _ in 0..3 {
            d.record(0, Some(500), t1);
        }
        assert_eq!(d.available(t1 + Duration::from_millis(1500)), vec![1, 2]);
        assert_eq!(d.available(t1 + Duration::from_millis(2000)), vec![0, 1, 2]);
    }

    #[test]
    fn gateway_errors_caps_and_min_health() {
        let t0 = Instant::now();
        // Gateway errors only: a 500 does not count, connect failures do.
        let mut d = OutlierDetector::new(&cfg(0, 2, 100, 0), 2);
        d.record(0, Some(500), t0);
        d.record(0, Some(500), t0);
        assert_eq!(d.available(t0), vec![0, 1]);
        d.record(0, None, t0);
        d.record(0, Some(502), t0);
        assert_eq!(d.available(t0), vec![1]);

        // maxEjectionPercent 50 of 2 endpoints: only one may be out.
        let mut d = OutlierDetector::new(&cfg(1, 0, 50, 0), 2);
        d.record(0, Some(500), t0);
        d.record(1, Some(500), t0);
        assert_eq!(d.available(t0), vec![1]);

        // minHealthPercent 60: with 1 of 2 healthy (50 %), ejection is ignored.
        let mut d = OutlierDetector::new(&cfg(1, 0, 100, 60), 2);
        d.record(0, Some(500), t0);
        assert_eq!(d.available(t0), vec![0, 1]);
    }
}
