//! The container's memory limit and usage from its cgroup (v2, or v1 where that is what the
//! node has), so the server does not spawn a worker that would push the container over its
//! limit and get it OOM-killed.
//!
//! The usage that counts is the cgroup's charge less its inactive file cache (v2:
//! `memory.current - inactive_file`; v1: `memory.usage_in_bytes - total_inactive_file`, from
//! `memory.stat`): the kubelet's "working set". The charge also holds the page cache of every
//! file the pod read or wrote (its code, its logs, the server's temporary files), which the
//! kernel reclaims before it OOM-kills; counted in full, it would refuse spawns that fit.

use std::path::{Path, PathBuf};

/// Limit and usage, when known.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CgroupMemory {
    /// memory.max (v2) or memory.limit_in_bytes (v1); None when unlimited.
    pub limit: Option<u64>,
    /// memory.current (v2) or memory.usage_in_bytes (v1).
    pub current: Option<u64>,
    /// `inactive_file` (v2) or `total_inactive_file` (v1) of memory.stat.
    pub inactive_file: Option<u64>,
}

impl CgroupMemory {
    /// The usage the spawn budget reads: [`working_set`].
    pub fn usage(&self) -> Option<u64> {
        working_set(self.current, self.inactive_file)
    }
}

/// The charge less the inactive file cache (the whole charge when memory.stat is unreadable).
pub fn working_set(current: Option<u64>, inactive_file: Option<u64>) -> Option<u64> {
    Some(current?.saturating_sub(inactive_file.unwrap_or(0)))
}

/// The value of `key` in a memory.stat text (`key value` lines).
pub fn parse_stat_field(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// v1 reports "unlimited" as a huge number near i64::MAX rounded to the page size.
const V1_UNLIMITED: u64 = 1 << 60;

/// Parses a v2 `memory.max` value ("max" is unlimited).
pub fn parse_v2_max(text: &str) -> Option<u64> {
    match text.trim() {
        "max" => None,
        t => t.parse().ok(),
    }
}

/// Parses a v1 `memory.limit_in_bytes` value.
pub fn parse_v1_limit(text: &str) -> Option<u64> {
    text.trim().parse().ok().filter(|v| *v < V1_UNLIMITED)
}

/// Parses a plain byte count.
pub fn parse_bytes(text: &str) -> Option<u64> {
    text.trim().parse().ok()
}

/// The v2 cgroup directory of this process, from the `0::/path` line of /proc/self/cgroup.
pub fn v2_dir(proc_self_cgroup: &str, root: &Path) -> Option<PathBuf> {
    let path = proc_self_cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))?
        .trim_start_matches('/');
    Some(root.join(path))
}

fn read(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// Reads the current figures. Unreadable files give `None` (and so no memory refusals).
pub fn read_memory() -> CgroupMemory {
    let root = Path::new("/sys/fs/cgroup");
    let mut dirs = Vec::new();
    if let Some(d) = read(Path::new("/proc/self/cgroup")).and_then(|t| v2_dir(&t, root)) {
        dirs.push(d);
    }
    dirs.push(root.to_path_buf());
    for d in dirs {
        if let Some(current) = read(&d.join("memory.current")).and_then(|t| parse_bytes(&t)) {
            let limit = read(&d.join("memory.max")).and_then(|t| parse_v2_max(&t));
            return CgroupMemory {
                limit,
                current: Some(current),
                inactive_file: read(&d.join("memory.stat"))
                    .and_then(|t| parse_stat_field(&t, "inactive_file")),
            };
        }
    }
    let v1 = root.join("memory");
    CgroupMemory {
        limit: read(&v1.join("memory.limit_in_bytes")).and_then(|t| parse_v1_limit(&t)),
        current: read(&v1.join("memory.usage_in_bytes")).and_then(|t| parse_bytes(&t)),
        inactive_file: read(&v1.join("memory.stat"))
            .and_then(|t| parse_stat_field(&t, "total_inactive_file")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_versions() {
        assert_eq!(parse_v2_max("max\n"), None);
        assert_eq!(parse_v2_max("536870912\n"), Some(512 << 20));
        assert_eq!(parse_v1_limit("9223372036854771712\n"), None);
        assert_eq!(parse_v1_limit("268435456"), Some(256 << 20));
        assert_eq!(parse_bytes("garbage"), None);
        assert_eq!(
            v2_dir("0::/kubepods/pod1/c1\n", Path::new("/sys/fs/cgroup")),
            Some(PathBuf::from("/sys/fs/cgroup/kubepods/pod1/c1"))
        );
        assert_eq!(v2_dir("12:memory:/x\n", Path::new("/r")), None);
    }

    /// memory.stat of a v2 cgroup and of a v1 one (abridged): the inactive file cache is
    /// read by its own name in each, not by a prefix of another key.
    #[test]
    fn memory_stat_gives_the_inactive_file_cache() {
        let v2 = "anon 104857600\nfile 734003200\nkernel 5242880\nactive_file 209715200\n\
                  inactive_file 524288000\nunevictable 0\n";
        assert_eq!(parse_stat_field(v2, "inactive_file"), Some(500 << 20));
        assert_eq!(parse_stat_field(v2, "active_file"), Some(200 << 20));
        let v1 = "cache 734003200\nrss 104857600\ninactive_file 1048576\n\
                  total_cache 734003200\ntotal_inactive_file 524288000\n";
        assert_eq!(parse_stat_field(v1, "total_inactive_file"), Some(500 << 20));
        assert_eq!(parse_stat_field(v1, "missing"), None);
        assert_eq!(parse_stat_field("inactive_file x\n", "inactive_file"), None);
    }

    /// The usage that decides is the charge less the inactive file cache; without
    /// memory.stat, the whole charge (erring towards refusing a spawn).
    #[test]
    fn the_working_set_decides() {
        let m = CgroupMemory {
            limit: Some(1 << 30),
            current: Some(840 << 20),
            inactive_file: Some(500 << 20),
        };
        assert_eq!(m.usage(), Some(340 << 20));
        assert_eq!(working_set(Some(840 << 20), None), Some(840 << 20));
        assert_eq!(working_set(Some(10), Some(20)), Some(0), "never below zero");
        assert_eq!(working_set(None, Some(20)), None);
    }
}
