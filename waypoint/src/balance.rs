//! DestinationRule load balancing over a subset's healthy endpoints:
//! ROUND_ROBIN, LEAST_REQUEST (Envoy's power of two choices), RANDOM, and
//! consistent hashing on a header. Sans-IO: the caller passes in-flight
//! counts and random numbers.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};

use ambit_api::xds::proto::l7 as pb;

/// Picks endpoints for one (service, subset).
#[derive(Debug)]
pub struct Balancer {
    policy: pb::load_balancer::Simple,
    hash_header: String,
    next: AtomicUsize,
}

impl Balancer {
    /// For `lb` (unset: Istio's default, LEAST_REQUEST).
    pub fn new(lb: Option<&pb::LoadBalancer>) -> Self {
        use pb::load_balancer::Simple;
        let policy = lb
            .and_then(|l| Simple::try_from(l.simple).ok())
            .filter(|s| *s != Simple::Unspecified)
            .unwrap_or(Simple::LeastRequest);
        Balancer {
            policy,
            hash_header: lb
                .map(|l| l.hash_header.to_ascii_lowercase())
                .unwrap_or_default(),
            next: AtomicUsize::new(0),
        }
    }

    /// The header hashed on, if consistent hashing is configured.
    pub fn hash_header(&self) -> Option<&str> {
        (!self.hash_header.is_empty()).then_some(self.hash_header.as_str())
    }

    /// Index into `in_flight` (one entry per endpoint: its active requests)
    /// of the endpoint to use. `hash_value` is the request's value of the hash
    /// header; `random` any random u64. `None` when there are no endpoints.
    pub fn pick(
        &self,
        in_flight: &[usize],
        hash_value: Option<&str>,
        random: u64,
    ) -> Option<usize> {
        use pb::load_balancer::Simple;
        let n = in_flight.len();
        if n == 0 {
            return None;
        }
        if let (Some(_), Some(v)) = (self.hash_header(), hash_value) {
            let mut h = DefaultHasher::new();
            v.hash(&mut h);
            return Some((h.finish() % n as u64) as usize);
        }
        Some(match self.policy {
            Simple::RoundRobin | Simple::Passthrough | Simple::Unspecified => {
                self.next.fetch_add(1, Ordering::Relaxed) % n
            }
            Simple::Random => (random % n as u64) as usize,
            Simple::LeastRequest => {
                // Two random choices, keep the less loaded (Envoy's default).
                let a = (random % n as u64) as usize;
                let b = ((random >> 32) % n as u64) as usize;
                if in_flight[b] < in_flight[a] { b } else { a }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pb::load_balancer::Simple;

    fn lb(simple: Simple, header: &str) -> pb::LoadBalancer {
        pb::LoadBalancer {
            simple: simple as i32,
            hash_header: header.into(),
        }
    }

    #[test]
    fn policies() {
        let rr = Balancer::new(Some(&lb(Simple::RoundRobin, "")));
        let picks: Vec<_> = (0..6)
            .map(|_| rr.pick(&[0, 0, 0], None, 0).unwrap())
            .collect();
        assert_eq!(picks, vec![0, 1, 2, 0, 1, 2]);

        let least = Balancer::new(Some(&lb(Simple::LeastRequest, "")));
        // Choices 0 and 1 (random = 1<<32 | 0): endpoint 1 is idle, 0 is busy.
        assert_eq!(least.pick(&[5, 0, 9], None, 1u64 << 32), Some(1));
        assert_eq!(
            Balancer::new(None).pick(&[3, 0], None, 1u64 << 32),
            Some(1),
            "default is LEAST_REQUEST"
        );

        let hash = Balancer::new(Some(&lb(Simple::Unspecified, "X-User")));
        assert_eq!(hash.hash_header(), Some("x-user"));
        let a = hash.pick(&[0; 5], Some("jason"), 1);
        assert!(
            (0..20).all(|r| hash.pick(&[0; 5], Some("jason"), r) == a),
            "same user, same endpoint"
        );

        let random = Balancer::new(Some(&lb(Simple::Random, "")));
        assert_eq!(random.pick(&[0, 0, 0], None, 7), Some(1));
        assert_eq!(random.pick(&[], None, 7), None);
    }
}
