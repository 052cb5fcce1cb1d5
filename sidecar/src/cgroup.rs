//! The container's memory limit and usage from its cgroup (v2, or v1 where that is what the
//! node has), so the server does not spawn a worker that would push the container over its
//! limit and get it OOM-killed.

use std::path::{Path, PathBuf};

/// Limit and usage, when known.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CgroupMemory {
    /// memory.max (v2) or memory.limit_in_bytes (v1); None when unlimited.
    pub limit: Option<u64>,
    /// memory.current (v2) or memory.usage_in_bytes (v1).
    pub current: Option<u64>,
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
            };
        }
    }
    let v1 = root.join("memory");
    CgroupMemory {
        limit: read(&v1.join("memory.limit_in_bytes")).and_then(|t| parse_v1_limit(&t)),
        current: read(&v1.join("memory.usage_in_bytes")).and_then(|t| parse_bytes(&t)),
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
}
