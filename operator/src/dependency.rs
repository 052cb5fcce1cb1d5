//! How a dependency fares (a watch, the API server probe, the leader lease, the Events API,
//! the autoscaler's status writes), logged once per change of state with a count, not once
//! per attempt: during an API server outage every watch retries every few seconds and every
//! autoscaled app every tick, and a line per attempt (200 a second for 100 apps) buries
//! what matters. The first failure is logged with its error; the recovery with how many
//! attempts failed and for how long.
//!
//! [`Dependency::record`] is pure (the time is an argument); [`Dependency::observe`] logs.

use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

/// What a dependency is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Not tried yet (a watch before its first list).
    Pending,
    /// Working.
    Up,
    /// Failing since `since`.
    Down {
        /// The first failure of this outage.
        since: Instant,
        /// The latest failure.
        last: Instant,
        /// Failed attempts so far.
        failures: u64,
        /// The latest error.
        error: String,
    },
}

/// A change worth a log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// It worked for the first time.
    Started,
    /// It started failing with `error`.
    Failing {
        /// The error.
        error: String,
    },
    /// It works again, after `failures` failed attempts over `outage`.
    Recovered {
        /// Failed attempts.
        failures: u64,
        /// From the first failure to the recovery.
        outage: Duration,
        /// The last error seen.
        last_error: String,
    },
}

/// One dependency's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dependency {
    name: String,
    state: State,
}

impl Dependency {
    /// A dependency named `name` (`watch Deployment in shop`), not tried yet.
    pub fn new(name: impl Into<String>) -> Self {
        Dependency {
            name: name.into(),
            state: State::Pending,
        }
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its state.
    pub fn state(&self) -> &State {
        &self.state
    }

    /// The error while it fails (or has not been tried: `not ready yet`).
    pub fn error(&self) -> Option<&str> {
        match &self.state {
            State::Pending => Some("not ready yet"),
            State::Up => None,
            State::Down { error, .. } => Some(error),
        }
    }

    /// The latest failure, while it fails.
    pub fn last_failure(&self) -> Option<Instant> {
        match &self.state {
            State::Down { last, .. } => Some(*last),
            _ => None,
        }
    }

    /// Records one attempt at `now`: `None` when it worked, else the error. Returns the
    /// change of state, if any. Pure.
    pub fn record(&mut self, error: Option<String>, now: Instant) -> Option<Change> {
        match (&mut self.state, error) {
            (State::Up, None) => None,
            (State::Pending, None) => {
                self.state = State::Up;
                Some(Change::Started)
            }
            (State::Down { .. }, None) => {
                let State::Down {
                    since,
                    failures,
                    error,
                    ..
                } = std::mem::replace(&mut self.state, State::Up)
                else {
                    unreachable!("matched Down above")
                };
                Some(Change::Recovered {
                    failures,
                    outage: now.saturating_duration_since(since),
                    last_error: error,
                })
            }
            (
                State::Down {
                    last,
                    failures,
                    error,
                    ..
                },
                Some(e),
            ) => {
                *last = now;
                *failures += 1;
                *error = e;
                None
            }
            (State::Up | State::Pending, Some(e)) => {
                self.state = State::Down {
                    since: now,
                    last: now,
                    failures: 1,
                    error: e.clone(),
                };
                Some(Change::Failing { error: e })
            }
        }
    }

    /// Records one attempt now and logs a change of state.
    pub fn observe(&mut self, error: Option<String>) {
        if let Some(change) = self.record(error, Instant::now()) {
            log_change(&self.name, &change);
        }
    }
}

/// The log line of a change.
pub fn log_change(name: &str, change: &Change) {
    match change {
        Change::Started => debug!(dependency = name, "ready"),
        Change::Failing { error } => {
            warn!(dependency = name, error = %error, "failing; retrying quietly until it recovers")
        }
        Change::Recovered {
            failures,
            outage,
            last_error,
        } => info!(
            dependency = name,
            failures,
            outage_seconds = outage.as_secs(),
            last_error = %last_error,
            "recovered"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outage_is_two_changes_whatever_its_length() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut d = Dependency::new("watch Deployment in shop");
        assert_eq!(d.error(), Some("not ready yet"));
        assert_eq!(d.record(None, t0), Some(Change::Started));
        assert_eq!(d.record(None, t0 + s(1)), None);
        assert_eq!(
            d.record(Some("connection refused".into()), t0 + s(2)),
            Some(Change::Failing {
                error: "connection refused".into()
            })
        );
        // 89 more failed attempts: no change, whatever the error says.
        for i in 3..92 {
            assert_eq!(d.record(Some(format!("attempt {i}")), t0 + s(i)), None);
        }
        assert_eq!(d.error(), Some("attempt 91"));
        assert_eq!(d.last_failure(), Some(t0 + s(91)));
        assert_eq!(
            d.record(None, t0 + s(92)),
            Some(Change::Recovered {
                failures: 90,
                outage: s(90),
                last_error: "attempt 91".into()
            })
        );
        assert_eq!(d.error(), None);
        assert_eq!(d.record(None, t0 + s(93)), None);
    }

    #[test]
    fn failing_before_the_first_success_is_logged_too() {
        let t0 = Instant::now();
        let mut d = Dependency::new("api server");
        assert!(matches!(
            d.record(Some("refused".into()), t0),
            Some(Change::Failing { .. })
        ));
        assert!(matches!(
            d.record(None, t0),
            Some(Change::Recovered { failures: 1, .. })
        ));
    }
}
