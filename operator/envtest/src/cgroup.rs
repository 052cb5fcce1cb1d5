//! The stand-in node's control groups: one per pod, with the pod's CPU limit enforced by the
//! kernel's CFS bandwidth control and its CPU time and memory accounted, as a kubelet's
//! container runtime does. cgroup v1 (separate `cpu`, `cpuacct` and `memory` hierarchies, what
//! these machines have) and v2 (one unified hierarchy, `cpu.max`) are both handled; the layout
//! is `<hierarchy>/wsgiscale-standin-<node>/pod-<uid>/`.
//!
//! The decisions (which files hold what, the quota of a limit, the working set of a memory
//! reading) are pure functions with tests; the I/O is plain file reads and writes.

use std::path::{Path, PathBuf};

/// The CFS period the quota is a share of (the kubelet's default, 100 ms).
pub const CFS_PERIOD_US: u64 = 100_000;

/// Why a cgroup could not be made, read or removed.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// Neither a writable v1 `cpu` hierarchy nor a v2 one with the `cpu` controller.
    #[error("no writable cgroup hierarchy with CPU control ({0})")]
    Unavailable(String),
    /// A file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CgroupError + '_ {
    move |source| CgroupError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Which cgroup version the machine has, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hierarchy {
    /// Separate v1 hierarchies.
    V1 {
        /// The `cpu` controller (quota).
        cpu: PathBuf,
        /// The `cpuacct` controller (usage); often the same mount as `cpu`.
        cpuacct: PathBuf,
        /// The `memory` controller, when mounted.
        memory: Option<PathBuf>,
    },
    /// The unified v2 hierarchy.
    V2 {
        /// Its mount point.
        root: PathBuf,
    },
}

impl Hierarchy {
    /// The machine's hierarchy under `/sys/fs/cgroup`, or why there is none this process can
    /// use (not root, not mounted).
    pub fn detect() -> Result<Hierarchy, CgroupError> {
        Self::detect_at(Path::new("/sys/fs/cgroup"))
    }

    fn detect_at(base: &Path) -> Result<Hierarchy, CgroupError> {
        let h = if base.join("cpu/cpu.cfs_quota_us").is_file() {
            let cpuacct = ["cpuacct", "cpu,cpuacct", "cpu"]
                .iter()
                .map(|d| base.join(d))
                .find(|d| d.join("cpuacct.usage").is_file())
                .ok_or_else(|| CgroupError::Unavailable("no cpuacct.usage".into()))?;
            Hierarchy::V1 {
                cpu: base.join("cpu"),
                cpuacct,
                memory: Some(base.join("memory"))
                    .filter(|m| m.join("memory.usage_in_bytes").is_file()),
            }
        } else if std::fs::read_to_string(base.join("cgroup.controllers"))
            .is_ok_and(|c| c.split_whitespace().any(|x| x == "cpu"))
        {
            Hierarchy::V2 {
                root: base.to_path_buf(),
            }
        } else {
            return Err(CgroupError::Unavailable(format!(
                "{} has neither cpu/cpu.cfs_quota_us (v1) nor a cpu controller (v2)",
                base.display()
            )));
        };
        // Writable: a directory can be made (and removed) at the top.
        let probe = h.dirs("probe", "probe");
        for d in &probe {
            std::fs::create_dir_all(d).map_err(|e| {
                CgroupError::Unavailable(format!("cannot create {}: {e}", d.display()))
            })?;
        }
        for d in probe.iter().rev() {
            let _ = std::fs::remove_dir(d);
            let _ = d.parent().map(std::fs::remove_dir);
        }
        Ok(h)
    }

    /// The directories of one pod's cgroup, one per hierarchy (v1) or one (v2).
    fn dirs(&self, node: &str, pod: &str) -> Vec<PathBuf> {
        let rel = Path::new(&format!("wsgiscale-standin-{node}")).join(format!("pod-{pod}"));
        let mut v = match self {
            Hierarchy::V1 {
                cpu,
                cpuacct,
                memory,
            } => {
                let mut v = vec![cpu.join(&rel)];
                if cpuacct != cpu {
                    v.push(cpuacct.join(&rel));
                }
                v.extend(memory.iter().map(|m| m.join(&rel)));
                v
            }
            Hierarchy::V2 { root } => vec![root.join(&rel)],
        };
        v.dedup();
        v
    }

    /// The node-level directories (parents of every pod's), for clean-up.
    pub fn node_dirs(&self, node: &str) -> Vec<PathBuf> {
        self.dirs(node, "x")
            .into_iter()
            .filter_map(|d| d.parent().map(Path::to_path_buf))
            .collect()
    }
}

/// The CFS quota of a CPU limit in millicores, per [`CFS_PERIOD_US`] (at least 1 ms, the
/// kernel's minimum).
pub fn quota_us(millicores: u64) -> u64 {
    (millicores * CFS_PERIOD_US / 1000).max(1000)
}

/// The working set of a memory reading, as the kubelet and metrics-server compute it: usage
/// less the inactive file cache (page cache the kernel can drop), never below zero.
pub fn working_set(usage: u64, memory_stat: &str, v2: bool) -> u64 {
    let key = if v2 {
        "inactive_file"
    } else {
        "total_inactive_file"
    };
    let inactive = memory_stat
        .lines()
        .filter_map(|l| l.split_once(' '))
        .find(|(k, _)| *k == key)
        .and_then(|(_, v)| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    usage.saturating_sub(inactive)
}

/// CPU time in nanoseconds from a v2 `cpu.stat` (`usage_usec N`).
pub fn v2_usage_ns(cpu_stat: &str) -> Option<u64> {
    cpu_stat
        .lines()
        .filter_map(|l| l.split_once(' '))
        .find(|(k, _)| *k == "usage_usec")
        .and_then(|(_, v)| v.trim().parse::<u64>().ok())
        .map(|us| us * 1000)
}

/// One pod's cgroup.
#[derive(Debug)]
pub struct PodCgroup {
    hierarchy: Hierarchy,
    dirs: Vec<PathBuf>,
}

impl PodCgroup {
    /// Makes the pod's cgroup with its limits: `cpu_millis` (None: unlimited) and
    /// `memory_bytes` (None: unlimited).
    pub fn create(
        hierarchy: &Hierarchy,
        node: &str,
        pod: &str,
        cpu_millis: Option<u64>,
        memory_bytes: Option<u64>,
    ) -> Result<PodCgroup, CgroupError> {
        let dirs = hierarchy.dirs(node, pod);
        for d in &dirs {
            std::fs::create_dir_all(d).map_err(io(d))?;
        }
        let cg = PodCgroup {
            hierarchy: hierarchy.clone(),
            dirs,
        };
        let write = |file: PathBuf, value: String| -> Result<(), CgroupError> {
            std::fs::write(&file, value).map_err(io(&file))
        };
        match hierarchy {
            Hierarchy::V1 { .. } => {
                let cpu = &cg.dirs[0];
                write(cpu.join("cpu.cfs_period_us"), CFS_PERIOD_US.to_string())?;
                let quota = cpu_millis.map_or(-1, |m| quota_us(m) as i64);
                write(cpu.join("cpu.cfs_quota_us"), quota.to_string())?;
                if let (Some(bytes), Some(mem)) = (memory_bytes, cg.memory_dir()) {
                    write(mem.join("memory.limit_in_bytes"), bytes.to_string())?;
                }
            }
            Hierarchy::V2 { .. } => {
                let d = &cg.dirs[0];
                let max = cpu_millis.map_or("max".to_string(), |m| quota_us(m).to_string());
                write(d.join("cpu.max"), format!("{max} {CFS_PERIOD_US}"))?;
                if let Some(bytes) = memory_bytes {
                    write(d.join("memory.max"), bytes.to_string())?;
                }
            }
        }
        Ok(cg)
    }

    fn memory_dir(&self) -> Option<&Path> {
        match &self.hierarchy {
            Hierarchy::V1 {
                memory: Some(m), ..
            } => self
                .dirs
                .iter()
                .find(|d| d.starts_with(m))
                .map(PathBuf::as_path),
            Hierarchy::V1 { memory: None, .. } => None,
            Hierarchy::V2 { .. } => self.dirs.first().map(PathBuf::as_path),
        }
    }

    fn cpuacct_dir(&self) -> &Path {
        match &self.hierarchy {
            Hierarchy::V1 { cpuacct, .. } => self
                .dirs
                .iter()
                .find(|d| d.starts_with(cpuacct))
                .unwrap_or(&self.dirs[0]),
            Hierarchy::V2 { .. } => &self.dirs[0],
        }
    }

    /// The `cgroup.procs` files a process writes its pid into to join the pod (one per
    /// hierarchy).
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|d| d.join("cgroup.procs")).collect()
    }

    /// CPU time the pod's processes used, in nanoseconds, since the cgroup was made.
    pub fn cpu_usage_ns(&self) -> Result<u64, CgroupError> {
        let d = self.cpuacct_dir();
        match self.hierarchy {
            Hierarchy::V1 { .. } => {
                let f = d.join("cpuacct.usage");
                let text = std::fs::read_to_string(&f).map_err(io(&f))?;
                Ok(text.trim().parse().unwrap_or(0))
            }
            Hierarchy::V2 { .. } => {
                let f = d.join("cpu.stat");
                let text = std::fs::read_to_string(&f).map_err(io(&f))?;
                Ok(v2_usage_ns(&text).unwrap_or(0))
            }
        }
    }

    /// The pod's memory working set in bytes (0 when memory is not accounted).
    pub fn memory_working_set(&self) -> u64 {
        let Some(d) = self.memory_dir() else { return 0 };
        let v2 = matches!(self.hierarchy, Hierarchy::V2 { .. });
        let usage_file = d.join(if v2 {
            "memory.current"
        } else {
            "memory.usage_in_bytes"
        });
        let usage = std::fs::read_to_string(usage_file)
            .ok()
            .and_then(|t| t.trim().parse::<u64>().ok())
            .unwrap_or(0);
        let stat = std::fs::read_to_string(d.join("memory.stat")).unwrap_or_default();
        working_set(usage, &stat, v2)
    }

    /// The pids in the pod (its first hierarchy's view).
    pub fn pids(&self) -> Vec<i32> {
        std::fs::read_to_string(self.dirs[0].join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// Sends `signal` to every process in the pod.
    pub fn signal_all(&self, signal: &str) {
        let pids: Vec<String> = self.pids().iter().map(i32::to_string).collect();
        if !pids.is_empty() {
            let _ = std::process::Command::new("kill")
                .arg(format!("-{signal}"))
                .args(&pids)
                .stderr(std::process::Stdio::null())
                .status();
        }
    }

    /// Kills every process in the pod, waits (up to 5 s) until none is left, and removes the
    /// cgroup's directories.
    pub fn remove(&self) -> Result<(), CgroupError> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let left = self.pids();
            if left.is_empty() {
                break;
            }
            self.signal_all("KILL");
            if std::time::Instant::now() > deadline {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        for d in &self.dirs {
            match std::fs::remove_dir(d) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(CgroupError::Io {
                        path: d.clone(),
                        source: e,
                    })
                }
            }
        }
        Ok(())
    }
}

impl Drop for PodCgroup {
    fn drop(&mut self) {
        let _ = self.remove();
    }
}

/// Removes a node's top-level cgroup directories (after its pods'), also those a crashed
/// earlier run left: every pod directory below them is emptied and removed first.
pub fn remove_node(hierarchy: &Hierarchy, node: &str) {
    for top in hierarchy.node_dirs(node) {
        if let Ok(entries) = std::fs::read_dir(&top) {
            for e in entries.flatten() {
                let p = e.path();
                if p.is_dir() {
                    let pids = std::fs::read_to_string(p.join("cgroup.procs")).unwrap_or_default();
                    for pid in pids.lines() {
                        let _ = std::process::Command::new("kill")
                            .args(["-KILL", pid.trim()])
                            .stderr(std::process::Stdio::null())
                            .status();
                    }
                    for _ in 0..100 {
                        if std::fs::remove_dir(&p).is_ok() {
                            break;
                        }
                        std::thread::sleep(std::time::Duration::from_millis(20));
                    }
                }
            }
        }
        let _ = std::fs::remove_dir(&top);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quota_is_a_share_of_the_period() {
        assert_eq!(quota_us(250), 25_000);
        assert_eq!(quota_us(1000), 100_000);
        assert_eq!(quota_us(2500), 250_000);
        assert_eq!(quota_us(1), 1000, "the kernel's minimum");
    }

    #[test]
    fn working_set_drops_inactive_file_cache() {
        let v1 = "cache 100\ntotal_inactive_file 4096\ntotal_active_file 10\n";
        assert_eq!(working_set(10_000, v1, false), 5904);
        assert_eq!(working_set(1000, v1, false), 0, "never below zero");
        let v2 = "anon 5\ninactive_file 1000\n";
        assert_eq!(working_set(3000, v2, true), 2000);
        assert_eq!(working_set(3000, "", true), 3000);
        assert_eq!(
            v2_usage_ns("usage_usec 1500\nuser_usec 1000\n"),
            Some(1_500_000)
        );
    }

    #[test]
    fn pod_dirs_sit_under_the_node_in_each_hierarchy() {
        let h = Hierarchy::V1 {
            cpu: "/cg/cpu".into(),
            cpuacct: "/cg/cpuacct".into(),
            memory: Some("/cg/memory".into()),
        };
        let d = h.dirs("n1", "abc");
        assert_eq!(
            d,
            vec![
                PathBuf::from("/cg/cpu/wsgiscale-standin-n1/pod-abc"),
                PathBuf::from("/cg/cpuacct/wsgiscale-standin-n1/pod-abc"),
                PathBuf::from("/cg/memory/wsgiscale-standin-n1/pod-abc"),
            ]
        );
        let v2 = Hierarchy::V2 { root: "/cg".into() };
        assert_eq!(
            v2.node_dirs("n1"),
            vec![PathBuf::from("/cg/wsgiscale-standin-n1")]
        );
    }
}
