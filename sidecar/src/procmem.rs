//! A worker's memory, as the recycling rule (`--max-rss`) and the spawn budget read it: its
//! unique set size (USS: `Private_Clean + Private_Dirty` of `/proc/PID/smaps_rollup`), the
//! pages no other process maps.
//!
//! Not RSS, which counts in every worker the preloaded app's copy-on-write pages that all of
//! them share with the fork server (so each looks as large as a cold one, and workers are
//! recycled and spawns refused far earlier than memory allows). Not PSS either, which splits
//! the shared pages among the processes that map them: every worker's PSS rises when a
//! sibling retires and falls when one is spawned, so a scale-down could make the survivors
//! cross `--max-rss` without growing at all. USS moves only with what the worker itself adds
//! (its leaks, its caches), is what retiring it gives back, and is what one more worker
//! costs (bench/memory.py measures that marginal cost as a difference of USS).
//!
//! Kernels without `smaps_rollup` (before 4.14) give RSS from `/proc/PID/statm` instead.

/// The `/proc/PID/smaps_rollup` figures used, bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Rollup {
    /// Resident set size.
    pub rss: u64,
    /// Proportional set size.
    pub pss: u64,
    /// Unique set size: private clean plus private dirty pages.
    pub uss: u64,
}

/// Parses `/proc/PID/smaps_rollup` (`Name:   N kB` lines); `None` without an `Rss` and a
/// `Private_Dirty` line (not that file, or cut short).
pub fn parse_smaps_rollup(text: &str) -> Option<Rollup> {
    let mut r = Rollup::default();
    let (mut seen_rss, mut seen_dirty) = (false, false);
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let (Some(name), Some(value), Some("kB")) = (words.next(), words.next(), words.next())
        else {
            continue;
        };
        let Ok(kib) = value.parse::<u64>() else {
            continue;
        };
        let bytes = kib.saturating_mul(1024);
        match name {
            "Rss:" => {
                r.rss = bytes;
                seen_rss = true;
            }
            "Pss:" => r.pss = bytes,
            "Private_Clean:" => r.uss = r.uss.saturating_add(bytes),
            "Private_Dirty:" => {
                r.uss = r.uss.saturating_add(bytes);
                seen_dirty = true;
            }
            _ => {}
        }
    }
    (seen_rss && seen_dirty).then_some(r)
}

/// Parses `/proc/PID/statm` into the resident set size, bytes, with pages of `page` bytes.
pub fn parse_statm_rss(text: &str, page: u64) -> Option<u64> {
    let pages: u64 = text.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages.saturating_mul(page))
}

/// The figure that decides: the USS when the rollup is there, else the RSS.
pub fn choose(rollup: Option<Rollup>, rss: Option<u64>) -> Option<u64> {
    rollup.map(|r| r.uss).or(rss)
}

/// A process's memory as [`choose`] picks it; `None` when it is gone.
pub fn read(pid: u32) -> Option<u64> {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .ok()
        .and_then(|t| parse_smaps_rollup(&t));
    if rollup.is_some() {
        return choose(rollup, None);
    }
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .unwrap_or(4096) as u64;
    let rss = std::fs::read_to_string(format!("/proc/{pid}/statm"))
        .ok()
        .and_then(|t| parse_statm_rss(&t, page));
    choose(None, rss)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A forked worker's rollup (Linux 6.1): most of its RSS is shared with the fork server.
    const WORKER: &str = "55d0c8a5a000-7ffc6f1e2000 ---p 00000000 00:00 0                  [rollup]
Rss:               24580 kB
Pss:                6120 kB
Pss_Dirty:          3402 kB
Pss_Anon:           3380 kB
Pss_File:           2740 kB
Pss_Shmem:             0 kB
Shared_Clean:      14328 kB
Shared_Dirty:       6688 kB
Private_Clean:       148 kB
Private_Dirty:      3416 kB
Referenced:        24580 kB
Anonymous:         10104 kB
LazyFree:              0 kB
AnonHugePages:         0 kB
ShmemPmdMapped:        0 kB
FilePmdMapped:         0 kB
Shared_Hugetlb:        0 kB
Private_Hugetlb:       0 kB
Swap:                  0 kB
SwapPss:               0 kB
Locked:                0 kB
";

    #[test]
    fn the_rollup_gives_rss_pss_and_uss() {
        assert_eq!(
            parse_smaps_rollup(WORKER),
            Some(Rollup {
                rss: 24580 * 1024,
                pss: 6120 * 1024,
                uss: (148 + 3416) * 1024,
            })
        );
        assert_eq!(parse_smaps_rollup(""), None);
        assert_eq!(
            parse_smaps_rollup("Rss: 12 kB\nPss: 3 kB\n"),
            None,
            "cut short"
        );
        assert_eq!(parse_smaps_rollup("Rss: x kB\nPrivate_Dirty: 1 kB\n"), None);
    }

    #[test]
    fn statm_gives_rss_in_pages() {
        assert_eq!(
            parse_statm_rss("6000 1500 900 300 0 2000 0\n", 4096),
            Some(1500 * 4096)
        );
        assert_eq!(parse_statm_rss("6000\n", 4096), None);
    }

    /// USS decides, not the RSS that counts the shared pages in every worker; RSS only where
    /// the kernel has no rollup.
    #[test]
    fn the_unique_set_size_decides() {
        let r = parse_smaps_rollup(WORKER);
        assert_eq!(choose(r, Some(24580 * 1024)), Some(3564 * 1024));
        assert_eq!(choose(None, Some(24580 * 1024)), Some(24580 * 1024));
        assert_eq!(choose(None, None), None);
    }

    #[test]
    fn this_process_has_a_figure() {
        let me = read(std::process::id()).expect("our own memory");
        assert!(me > 0);
        assert_eq!(read(u32::MAX), None, "no such process");
    }
}
