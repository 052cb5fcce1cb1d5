use std::collections::BTreeSet;

use proptest::prelude::*;

use super::*;
use crate::config::{Algorithm, LifecycleConfig, ScalingConfig, WorkerLimits};
use crate::scaling::Reason;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn live(min: u32, max: u32) -> LiveConfig {
    LiveConfig {
        workers: WorkerLimits {
            min,
            max,
            initial: min,
        },
        scaling: ScalingConfig::default(),
        lifecycle: LifecycleConfig {
            timeout: None,
            max_requests: 0,
            max_requests_jitter: 0,
            max_lifetime: None,
            max_rss: None,
        },
    }
}

fn spawned(actions: &[Action]) -> Vec<WorkerId> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Spawn { id, .. } => Some(*id),
            _ => None,
        })
        .collect()
}

fn retired(actions: &[Action]) -> Vec<(WorkerId, RetireReason)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Retire { id, reason } => Some((*id, *reason)),
            _ => None,
        })
        .collect()
}

fn plan(before: u32, spawn: u32, retire: Vec<u64>) -> Plan {
    let after = before + spawn - retire.len() as u32;
    Plan {
        spawn,
        retire,
        refused: None,
        reason: Reason::Algorithm(Algorithm::Spare),
        why: String::new(),
        before,
        after,
    }
}

/// Starts a pool and makes every initial worker ready.
fn running(live: LiveConfig) -> Pool {
    let mut p = Pool::new(live, 7);
    for id in spawned(&p.start(ms(0))) {
        p.ready(id, ms(10));
    }
    p
}

#[test]
fn start_spawns_the_initial_workers() {
    let mut p = Pool::new(
        LiveConfig {
            workers: WorkerLimits {
                min: 1,
                max: 4,
                initial: 3,
            },
            ..live(1, 4)
        },
        1,
    );
    let a = p.start(ms(0));
    assert_eq!(spawned(&a), vec![1, 2, 3]);
    assert!(a.iter().all(|a| matches!(
        a,
        Action::Spawn {
            reason: SpawnReason::Initial,
            generation: 0,
            ..
        }
    )));
    assert_eq!(p.active(), 3);
}

#[test]
fn crash_loop_backoff_as_a_table() {
    // (lived ready, served) of successive deaths -> the respawn delay in force.
    /// (ms lived after ready, requests served) of one death.
    type Death = (Option<u64>, u64);
    let cases: &[(&[Death], &[u64])] = &[
        // The first young death respawns at once, then 100, 200, 400 ms.
        (
            &[(None, 0), (None, 0), (None, 0), (None, 0)],
            &[0, 100, 200, 400],
        ),
        // A worker that served requests was healthy: the count starts over.
        (
            &[(None, 0), (None, 0), (Some(10), 3), (None, 0)],
            &[0, 100, 0, 0],
        ),
        // One that lived STABLE after ready, too.
        (
            &[(None, 0), (None, 0), (Some(6_000), 0), (None, 0), (None, 0)],
            &[0, 100, 0, 0, 100],
        ),
    ];
    for (deaths, want) in cases {
        let mut p = running(live(1, 1));
        let mut now = ms(1_000);
        let mut delays = Vec::new();
        for &(lived, served) in *deaths {
            let id = p.members().next().map(|(id, _)| id).expect("a worker");
            if let Some(l) = lived {
                p.ready(id, now);
                now += ms(l);
            }
            let (ending, actions) = p.gone(
                id,
                now,
                Gone {
                    was_ready: lived.is_some(),
                    served,
                },
            );
            let Some(Ending::Crashed { respawn_in }) = ending else {
                panic!("{ending:?}");
            };
            delays.push(respawn_in.as_millis() as u64);
            if respawn_in.is_zero() {
                assert_eq!(spawned(&actions).len(), 1, "respawned at once");
            } else {
                assert!(spawned(&actions).is_empty(), "waits for the backoff");
                assert!(spawned(&p.tick(now + respawn_in - ms(1))).is_empty());
                now += respawn_in;
                assert_eq!(spawned(&p.tick(now)).len(), 1, "respawned after it");
            }
        }
        assert_eq!(&delays, want, "{deaths:?}");
    }
    let mut b = Backoff::default();
    for _ in 0..40 {
        b.record_exit(ms(0), None);
    }
    assert_eq!(b.record_exit(ms(0), None), Backoff::MAX);
}

#[test]
fn retired_and_timed_out_workers_are_not_crashes() {
    let mut p = running(live(2, 2));
    let a = p.apply(&plan(2, 0, vec![1]), ms(100));
    assert_eq!(retired(&a), vec![(1, RetireReason::Scale("spare"))]);
    // The target stays at MIN: the convergence replaces the retired worker.
    assert_eq!(spawned(&a), vec![3]);
    let (ending, _) = p.gone(1, ms(200), Gone::default());
    assert_eq!(ending, Some(Ending::Retired(RetireReason::Scale("spare"))));
    assert_eq!(p.timed_out(2), vec![Action::Kill { id: 2 }]);
    assert!(p.timed_out(2).is_empty(), "killed once");
    let (ending, actions) = p.gone(2, ms(300), Gone::default());
    assert_eq!(ending, Some(Ending::TimedOut));
    assert_eq!(spawned(&actions), vec![4], "replaced without backoff");
    assert_eq!(p.gone(99, ms(300), Gone::default()).0, None);
}

#[test]
fn a_plan_sets_the_target_and_the_convergence_carries_it_out() {
    let mut p = running(live(1, 4));
    let a = p.apply(&plan(1, 2, vec![]), ms(100));
    assert_eq!(spawned(&a), vec![2, 3]);
    assert_eq!(p.target(), 3);
    for id in [2, 3] {
        p.ready(id, ms(150));
    }
    let a = p.apply(&plan(3, 0, vec![1, 2]), ms(200));
    assert_eq!(retired(&a).len(), 2);
    assert!(spawned(&a).is_empty());
    assert_eq!((p.target(), p.active()), (1, 1));
    // A plan beyond MAX is clamped; a no-op plan changes nothing.
    let a = p.apply(&plan(1, 9, vec![]), ms(300));
    assert_eq!((spawned(&a).len(), p.target()), (3, 4));
    assert!(p.apply(&plan(4, 0, vec![]), ms(300)).is_empty());
}

#[test]
fn a_floor_plan_during_a_backoff_waits_for_it() {
    // Before: the driver's MIN top-up spawned past the backoff and raised the target above
    // MIN. Now the plan only sets the target and the backoff still holds the spawn.
    let mut p = running(live(2, 4));
    p.gone(1, ms(100), Gone::default());
    let (_, a) = p.gone(3, ms(101), Gone::default()); // its young replacement died too
    assert!(spawned(&a).is_empty());
    let a = p.apply(
        &Plan {
            reason: Reason::Min,
            ..plan(1, 1, vec![])
        },
        ms(102),
    );
    assert!(spawned(&a).is_empty(), "the backoff holds");
    assert_eq!(p.target(), 2);
    assert_eq!(spawned(&p.tick(ms(201))).len(), 1);
    assert_eq!(p.active(), 2);
}

#[test]
fn recycling_takes_a_quarter_at_a_time_and_replaces_each() {
    let mut l = live(8, 8);
    l.lifecycle.max_requests = 100;
    l.lifecycle.max_requests_jitter = 10;
    let mut p = running(l);
    for (_, m) in p.members() {
        assert!(
            (100..=110).contains(&m.request_limit),
            "{}",
            m.request_limit
        );
    }
    let all: Vec<(WorkerId, u64, Option<u64>)> = (1..=8).map(|id| (id, 500, None)).collect();
    let a = p.recycle(ms(1_000), &all);
    assert_eq!(retired(&a).len(), 2, "8 / 4 at a time");
    assert_eq!(spawned(&a).len(), 2, "each replaced");
    assert!(retired(&a)
        .iter()
        .all(|(_, r)| *r == RetireReason::MaxRequests));
    assert!(
        retired(&p.recycle(ms(2_000), &all)).is_empty(),
        "the cap holds"
    );
    for (id, _) in retired(&a) {
        p.gone(id, ms(2_100), Gone::default());
    }
    assert_eq!(
        retired(&p.recycle(ms(3_000), &all)).len(),
        2,
        "the next quarter"
    );

    let mut l = live(1, 1);
    l.lifecycle.max_lifetime = Some(Duration::from_secs(60));
    l.lifecycle.max_rss = Some(1 << 20);
    let mut p = running(l);
    assert!(p.recycle(ms(59_000), &[(1, 0, Some(1 << 19))]).is_empty());
    let a = p.recycle(ms(60_000), &[(1, 0, None)]);
    assert_eq!(retired(&a), vec![(1, RetireReason::Lifetime)]);
    let mut p = running(l);
    let a = p.recycle(ms(1_000), &[(1, 0, Some(2 << 20))]);
    assert_eq!(retired(&a), vec![(1, RetireReason::Rss)]);
    // Not before it is ready.
    let mut p = Pool::new(l, 1);
    p.start(ms(0));
    assert!(retired(&p.recycle(ms(90_000), &[(1, 0, Some(9 << 20))])).is_empty());
}

#[test]
fn reload_replaces_each_worker_when_its_successor_is_ready() {
    let mut p = running(live(2, 2));
    assert_eq!(
        p.reload(),
        Some(vec![Action::StartForkServer { reload: true }])
    );
    assert_eq!(p.reload(), None, "one at a time");
    assert!(p.reloading());
    let a = p.fork_server_started(true, Ok(()), ms(500));
    assert_eq!(
        a,
        vec![
            Action::Spawn {
                id: 3,
                reason: SpawnReason::Reload,
                generation: 1
            },
            Action::Spawn {
                id: 4,
                reason: SpawnReason::Reload,
                generation: 1
            },
        ]
    );
    assert_eq!(
        retired(&p.ready(3, ms(600))),
        vec![(1, RetireReason::Reload)]
    );
    assert_eq!(
        retired(&p.ready(4, ms(600))),
        vec![(2, RetireReason::Reload)]
    );
    assert!(!p.reloading());
    assert!(p.gone(1, ms(700), Gone::default()).1.is_empty());
    let (_, a) = p.gone(2, ms(700), Gone::default());
    assert_eq!(a, vec![Action::StopForkServer { generation: 0 }]);
    // A failed reload keeps the current workers and fork server.
    p.reload();
    assert!(p.fork_server_started(true, Err(()), ms(800)).is_empty());
    assert!(!p.reloading());
    assert_eq!(p.active(), 2);
}

#[test]
fn a_lost_fork_server_is_restarted_in_the_background() {
    let mut p = running(live(2, 2));
    p.fork_server_lost();
    let (_, a) = p.gone(1, ms(100), Gone::default());
    assert!(spawned(&a).is_empty(), "nothing to fork from");
    let a = p.tick(ms(200));
    assert_eq!(a, vec![Action::StartForkServer { reload: false }]);
    assert_eq!(p.fork_server(), ForkServer::Starting);
    assert!(p.tick(ms(300)).is_empty(), "started once");
    let a = p.fork_server_started(false, Ok(()), ms(400));
    assert_eq!(spawned(&a).len(), 1);
    // A start that fails waits for the backoff before the next try.
    p.fork_server_lost();
    p.tick(ms(500));
    p.fork_server_started(false, Err(()), ms(600));
    p.fork_server_lost();
    p.tick(ms(600));
    p.fork_server_started(false, Err(()), ms(700));
    assert!(p.tick(ms(701)).is_empty(), "backing off");
    assert_eq!(
        p.tick(ms(900)),
        vec![Action::StartForkServer { reload: false }]
    );
}

#[test]
fn new_live_settings_clamp_the_target() {
    let mut p = running(live(1, 4));
    p.apply(&plan(1, 3, vec![]), ms(0));
    assert_eq!(p.target(), 4);
    p.set_live(live(1, 2), ms(10));
    assert_eq!(p.target(), 2);
    let a = p.set_live(live(3, 6), ms(20));
    assert_eq!(p.target(), 3);
    assert!(spawned(&a).is_empty(), "4 are still active");
}

/// Something that can happen to a pool.
#[derive(Debug, Clone)]
enum Event {
    Ready(usize),
    Gone(usize, bool, u64),
    TimedOut(usize),
    Tick(u64),
    Plan(u32, usize),
    Reload,
    ForkServerDone(bool),
    ForkServerLost,
    Live(u32, u32),
    Advance(u64),
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        4 => (0usize..16).prop_map(Event::Ready),
        3 => (0usize..16, any::<bool>(), 0u64..3).prop_map(|(i, r, s)| Event::Gone(i, r, s)),
        1 => (0usize..16).prop_map(Event::TimedOut),
        3 => (0u64..300).prop_map(Event::Tick),
        2 => (0u32..4, 0usize..3).prop_map(|(s, r)| Event::Plan(s, r)),
        1 => Just(Event::Reload),
        1 => any::<bool>().prop_map(Event::ForkServerDone),
        1 => Just(Event::ForkServerLost),
        1 => (1u32..4, 0u32..4).prop_map(|(a, b)| Event::Live(a, a + b)),
        3 => (0u64..2_000).prop_map(Event::Advance),
    ]
}

/// What the property test has seen so far.
#[derive(Default)]
struct Seen {
    seen: BTreeSet<WorkerId>,
    retired: BTreeSet<WorkerId>,
    killed: BTreeSet<WorkerId>,
    starting: bool,
}

impl Seen {
    fn check(
        &mut self,
        p: &Pool,
        actions: &[Action],
        before: &Pool,
        now: Duration,
    ) -> Result<(), TestCaseError> {
        for a in actions {
            match a {
                Action::Spawn { id, reason, .. } => {
                    prop_assert!(self.seen.insert(*id), "id {} reused", id);
                    if *reason != SpawnReason::Reload {
                        prop_assert!(p.backoff.allows(now), "spawn during backoff");
                        prop_assert!(
                            p.fork_server() == ForkServer::Up,
                            "spawn without a fork server"
                        );
                    }
                }
                Action::Retire { id, .. } => {
                    prop_assert!(
                        before.member(*id).is_some() || self.seen.contains(id),
                        "unknown {}",
                        id
                    );
                    prop_assert!(self.retired.insert(*id), "{} retired twice", id);
                }
                Action::Kill { id } => prop_assert!(self.killed.insert(*id), "{} killed twice", id),
                Action::StartForkServer { reload } => {
                    if !reload {
                        prop_assert!(!self.starting, "two restarts at once");
                        self.starting = true;
                    }
                }
                Action::StopForkServer { generation } => {
                    prop_assert!(p.members().all(|(_, m)| m.generation != *generation));
                }
            }
        }
        let w = p.live().workers;
        prop_assert!(
            w.min <= p.target() && p.target() <= w.max.max(w.min),
            "target {}",
            p.target()
        );
        let recycling_before = before
            .members()
            .filter(|(_, m)| m.retiring.is_some_and(RetireReason::is_recycle))
            .count() as u32;
        let recycled_now = retired(actions)
            .iter()
            .filter(|(_, r)| r.is_recycle())
            .count() as u32;
        if recycled_now > 0 {
            prop_assert!(
                recycling_before + recycled_now <= (before.active() / 4).max(1),
                "{} recycling, {} more, {} active",
                recycling_before,
                recycled_now,
                before.active()
            );
        }
        if !p.reloading() {
            prop_assert!(
                p.active() <= p.target().max(before.active()),
                "active {} > target {}",
                p.active(),
                p.target()
            );
        }
        Ok(())
    }
}

proptest! {
    /// Whatever happens, in any order: the target stays within [MIN, MAX]; every spawned id is
    /// new; only known, not yet retired workers are retired, each once; a kill happens once per
    /// worker; no spawn happens while the backoff holds or without a running fork server
    /// (except a reload's own); recycling never has more than a quarter (at least one) of the
    /// workers going at once; outside a reload the pool never runs more than its target.
    #[test]
    fn the_pool_keeps_its_promises(
        min in 1u32..4,
        extra in 0u32..4,
        initial_extra in 0u32..4,
        max_requests in prop_oneof![Just(0u64), 1u64..5],
        events in proptest::collection::vec(event(), 1..120),
    ) {
        let mut l = live(min, min + extra);
        l.workers.initial = min + initial_extra.min(extra);
        l.lifecycle.max_requests = max_requests;
        l.lifecycle.max_requests_jitter = 2;
        l.lifecycle.max_lifetime = Some(Duration::from_secs(3));
        let mut p = Pool::new(l, 42);
        let mut now = Duration::ZERO;
        let mut seen = Seen::default();
        let before = p.clone();
        let a = p.start(now);
        seen.check(&p, &a, &before, now)?;
        for ev in events {

            let before = p.clone();
            let ids: Vec<WorkerId> = p.members().map(|(id, _)| id).collect();
            let pick = |i: usize| ids.get(i % ids.len().max(1)).copied().unwrap_or(999);
            let actions = match ev {
                Event::Ready(i) => p.ready(pick(i), now),
                Event::Gone(i, was_ready, served) => p.gone(pick(i), now, Gone { was_ready, served }).1,
                Event::TimedOut(i) => p.timed_out(pick(i)),
                Event::Tick(requests) => {
                    let workers: Vec<_> = ids.iter().map(|&id| (id, requests, None)).collect();
                    let a = p.tick(now);
                    seen.check(&p, &a, &before, now)?;
                    let before = p.clone();
                    let a = p.recycle(now, &workers);
                    seen.check(&p, &a, &before, now)?;
                    Vec::new()
                }
                Event::Plan(spawn, retire) => {
                    if p.reloading() {
                        Vec::new() // scaling waits for a reload, as in the server
                    } else {
                        let idle: Vec<u64> = p
                            .members()
                            .filter(|(_, m)| m.retiring.is_none())
                            .map(|(id, _)| id)
                            .take(retire)
                            .collect();
                        let before_n = p.active();
                        let after = (before_n + spawn).saturating_sub(idle.len() as u32);
                        p.apply(&Plan { after, ..plan(before_n, spawn, idle.clone()) }, now)
                    }
                }
                Event::Reload => p.reload().unwrap_or_default(),
                Event::ForkServerDone(ok) => {
                    let result = if ok { Ok(()) } else { Err(()) };
                    if p.reload_pending {
                        p.fork_server_started(true, result, now)
                    } else if p.fork_server() == ForkServer::Starting {
                        seen.starting = false;
                        p.fork_server_started(false, result, now)
                    } else {
                        Vec::new()
                    }
                }
                Event::ForkServerLost => {
                    if p.fork_server() == ForkServer::Up {
                        p.fork_server_lost();
                    }
                    Vec::new()
                }
                Event::Live(a, b) => {
                    let mut l = *p.live();
                    l.workers.min = a;
                    l.workers.max = b;
                    p.set_live(l, now)
                }
                Event::Advance(dt) => {
                    now += ms(dt);
                    Vec::new()
                }
            };
            seen.check(&p, &actions, &before, now)?;
            for (id, _) in retired(&actions) {
                prop_assert!(p.member(id).is_some_and(|m| m.retiring.is_some()));
            }
        }
        // Given time and a fork server, the pool converges on its target.
        if p.fork_server() != ForkServer::Up {
            if p.fork_server() == ForkServer::Down {
                now += Backoff::MAX;
                p.tick(now);
            }
            p.fork_server_started(false, Ok(()), now);
        }
        now += Backoff::MAX;
        p.tick(now);
        prop_assert!(p.active() >= p.target());
    }
}
