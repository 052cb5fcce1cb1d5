//! The server's shutdown, step by step, as one contract: the server follows it on SIGTERM and
//! the operator sizes the pod's `terminationGracePeriodSeconds` from it, so the kubelet's
//! SIGKILL never cuts a step the server still has time for.
//!
//! On SIGTERM the server (1) stops accepting and drains: in-flight requests get up to
//! `--graceful-timeout`; (2) retires every worker, each exiting after its running request,
//! and kills those still there after [`ShutdownBudget::workers`]; (3) stops its fork servers
//! (all at once): a shutdown message, [`ShutdownBudget::fork_server`] to exit, then SIGKILL and
//! as long again to be reaped.

use std::time::Duration;

/// How long each step of a shutdown may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownBudget {
    /// Step 1: in-flight requests finish (`--graceful-timeout`).
    pub drain: Duration,
    /// Step 2: retired workers exit before they are killed.
    pub workers: Duration,
    /// Step 3: a fork server exits after its shutdown message (and, killed, is reaped).
    pub fork_server: Duration,
}

impl ShutdownBudget {
    /// Workers exit once their running request is done; after the drain only a request the
    /// client already gave up on can still run, so a few seconds bound the wait.
    pub const WORKERS: Duration = Duration::from_secs(5);
    /// A fork server has nothing to finish: it exits at once unless it is stuck.
    pub const FORK_SERVER: Duration = Duration::from_secs(2);

    /// The budget of a server started with `--graceful-timeout graceful`.
    pub fn new(graceful: Duration) -> ShutdownBudget {
        ShutdownBudget {
            drain: graceful,
            workers: Self::WORKERS,
            fork_server: Self::FORK_SERVER,
        }
    }

    /// The longest a shutdown can take, every step at its limit (the fork-server step twice:
    /// the wait for its exit, then for its reaping after SIGKILL).
    pub fn total(&self) -> Duration {
        self.drain + self.workers + self.fork_server * 2
    }

    /// The pod's `terminationGracePeriodSeconds` for this server after a preStop sleep of
    /// `pre_stop`: the sleep, then the whole shutdown, rounded up to whole seconds.
    pub fn termination_grace_period(&self, pre_stop: Duration) -> Duration {
        let total = pre_stop + self.total();
        let secs = total.as_secs() + u64::from(total.subsec_nanos() > 0);
        Duration::from_secs(secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_grace_period_covers_every_step() {
        let secs = Duration::from_secs;
        let cases = [
            // (graceful, preStop) -> terminationGracePeriodSeconds
            ((secs(25), secs(5)), secs(39)),
            ((secs(0), secs(0)), secs(9)),
            ((Duration::from_millis(1500), secs(0)), secs(11)),
        ];
        for ((graceful, pre_stop), want) in cases {
            let b = ShutdownBudget::new(graceful);
            let grace = b.termination_grace_period(pre_stop);
            assert_eq!(grace, want, "{graceful:?} + {pre_stop:?}");
            assert!(grace >= pre_stop + b.drain + b.workers + b.fork_server * 2);
        }
    }
}
