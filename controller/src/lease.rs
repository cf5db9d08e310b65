//! Leader election on a `coordination.k8s.io/v1` Lease, as client-go's
//! leader elector does it: the holder renews `renewTime` every
//! `retry`; a candidate takes the Lease when it is free or its holder has
//! not renewed for `leaseDurationSeconds`; every write carries the
//! `resourceVersion` read, so of two candidates racing, one wins and the
//! other gets 409. A holder that cannot renew within `renew_deadline`
//! steps down before the Lease can expire under it, so two replicas never
//! both believe they lead. What only one replica may do (the waypoint
//! deployer) runs while [`LeaderElector::run`] says so.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::chrono::{DateTime, Utc};
use kube::api::{Api, PostParams};
use tokio::sync::watch;
use tracing::{info, warn};

/// Timings (client-go's defaults: 15 s, 10 s, 2 s).
#[derive(Clone, Copy, Debug)]
pub struct Timings {
    /// How long a Lease holds without renewal.
    pub lease_duration: Duration,
    /// How long a holder keeps trying to renew before it steps down.
    pub renew_deadline: Duration,
    /// How often to try to take or renew.
    pub retry: Duration,
}

impl Default for Timings {
    fn default() -> Self {
        Timings {
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry: Duration::from_secs(2),
        }
    }
}

/// Competes for one Lease.
pub struct LeaderElector {
    leases: Api<Lease>,
    name: String,
    identity: String,
    timings: Timings,
}

impl std::fmt::Debug for LeaderElector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaderElector")
            .field("name", &self.name)
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

/// What one attempt found.
enum Attempt {
    /// We hold the Lease (taken or renewed).
    Held,
    /// Someone else holds it, and has renewed in time.
    Taken(String),
}

fn seconds(d: Duration) -> i32 {
    i32::try_from(d.as_secs()).unwrap_or(i32::MAX)
}

impl LeaderElector {
    /// Competes for Lease `namespace/name` as `identity` (the pod's name).
    pub fn new(
        client: kube::Client,
        namespace: &str,
        name: &str,
        identity: &str,
        timings: Timings,
    ) -> Self {
        LeaderElector {
            leases: Api::namespaced(client, namespace),
            name: name.to_string(),
            identity: identity.to_string(),
            timings,
        }
    }

    fn spec(&self, now: DateTime<Utc>, acquired: DateTime<Utc>, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(seconds(self.timings.lease_duration)),
            acquire_time: Some(MicroTime(acquired)),
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }

    async fn attempt(&self) -> Result<Attempt, kube::Error> {
        let now = Utc::now();
        let Some(mut lease) = self.leases.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(self.spec(now, now, 0)),
            };
            self.leases.create(&PostParams::default(), &lease).await?;
            return Ok(Attempt::Held);
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let ours = holder == self.identity;
        let duration = i64::from(spec.lease_duration_seconds.unwrap_or(0));
        let expired = spec
            .renew_time
            .as_ref()
            .is_none_or(|t| t.0 + k8s_openapi::chrono::Duration::seconds(duration) < now);
        if !ours && !holder.is_empty() && !expired {
            return Ok(Attempt::Taken(holder));
        }
        let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(!ours);
        let acquired = match (&spec.acquire_time, ours) {
            (Some(t), true) => t.0,
            _ => now,
        };
        lease.spec = Some(self.spec(now, acquired, transitions));
        // `replace` sends the resourceVersion read: a racing writer gets 409.
        self.leases
            .replace(&self.name, &PostParams::default(), &lease)
            .await?;
        Ok(Attempt::Held)
    }

    /// Competes until `leader`'s receivers are all gone, keeping `leader`
    /// true exactly while this replica holds the Lease.
    pub async fn run(self, leader: watch::Sender<bool>) {
        let mut last_renewed: Option<tokio::time::Instant> = None;
        loop {
            let leading = *leader.borrow();
            match self.attempt().await {
                Ok(Attempt::Held) => {
                    last_renewed = Some(tokio::time::Instant::now());
                    if !leading {
                        info!(lease = %self.name, identity = %self.identity, "became leader");
                        leader.send_replace(true);
                    }
                }
                Ok(Attempt::Taken(holder)) => {
                    if leading {
                        warn!(lease = %self.name, %holder, "lost the lease");
                        leader.send_replace(false);
                    }
                    last_renewed = None;
                }
                Err(e) => {
                    let stale =
                        last_renewed.is_none_or(|t| t.elapsed() >= self.timings.renew_deadline);
                    if leading && stale {
                        warn!(lease = %self.name, error = %e, "could not renew in time; stepping down");
                        leader.send_replace(false);
                    } else if !matches!(&e, kube::Error::Api(s) if s.code == 409) {
                        warn!(lease = %self.name, error = %e, "lease attempt failed");
                    }
                }
            }
            if leader.is_closed() {
                return;
            }
            tokio::time::sleep(self.timings.retry).await;
        }
    }
}

/// Runs `task()` while `leader` is true: started on gaining the lead,
/// aborted on losing it (another replica takes over). Ends when `leader`'s
/// sender goes away.
pub async fn while_leader<F, Fut>(mut leader: watch::Receiver<bool>, mut task: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let mut running: Option<tokio::task::JoinHandle<()>> = None;
    loop {
        let leading = *leader.borrow_and_update();
        match (leading, running.is_some()) {
            (true, false) => running = Some(tokio::spawn(task())),
            (false, true) => {
                if let Some(t) = running.take() {
                    t.abort();
                }
            }
            _ => {}
        }
        if leader.changed().await.is_err() {
            if let Some(t) = running.take() {
                t.abort();
            }
            return;
        }
    }
}
