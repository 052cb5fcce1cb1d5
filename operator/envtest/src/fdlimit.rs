//! Open-file limits: the harness's process needs many descriptors, its pods keep what they had.
//!
//! One process holds the stand-in kube-proxy's two descriptors per proxied connection and often
//! the load generator's one, so at a few hundred requests a second of 30-second timeouts it needs
//! tens of thousands; under the machine's default it would turn an overload into refused
//! connections that no cluster shows. The pods it starts keep the limit the process started
//! with, so that raising the harness's own limit changes nothing about the servers measured.

use std::sync::OnceLock;

use nix::sys::resource::{getrlimit, setrlimit, Resource};

/// The limit the harness asks for (what containerd 1.x gives a container).
const HARNESS: u64 = 1 << 20;

static BEFORE: OnceLock<u64> = OnceLock::new();

/// Raises this process's open-file limit as far as `nr_open` (and the hard limit, when not
/// root) allows, remembering the soft limit it had for the pods. Returns the soft limit now.
pub fn raise() -> u64 {
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return 0;
    };
    let _ = BEFORE.set(soft);
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(HARNESS);
    let want = HARNESS.min(nr_open);
    if setrlimit(Resource::RLIMIT_NOFILE, want.max(soft), want.max(hard)).is_ok() {
        return want.max(soft);
    }
    if setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        return hard;
    }
    soft
}

/// The limit a pod's processes get: the one this process had before [`raise`], if it raised.
pub fn for_pods() -> Option<u64> {
    BEFORE.get().copied()
}

/// This process's soft open-file limit now.
pub fn limit_now() -> u64 {
    getrlimit(Resource::RLIMIT_NOFILE).map_or(0, |l| l.0)
}

/// Descriptors this process has open now.
pub fn open_now() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raising_keeps_the_old_limit_for_pods() {
        let (soft, _) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
        let now = raise();
        assert!(now >= soft, "raised {now} below the old soft limit {soft}");
        assert_eq!(for_pods(), Some(soft));
        assert!(open_now() > 0);
    }
}
