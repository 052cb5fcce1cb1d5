//! The stand-in node's pod network, made the way a CNI bridge plugin makes one: a Linux bridge
//! in the root network namespace holding the gateway address 198.18.X.1/24, and for each pod a
//! network namespace whose `eth0` (one end of a veth pair whose other end is on the bridge)
//! holds 198.18.X.N/24 with a default route through the gateway. 198.18.0.0/15 is the
//! benchmarking range of RFC 2544: the API server accepts it in EndpointSlices (it refuses
//! loopback addresses), and nothing outside this machine is ever addressed.
//!
//! A pod's `eth0` has a MAC address derived from its IP address (as Docker's bridge gives its
//! containers), so that the root namespace's neighbour entry for an address stays right when
//! the address passes to a new pod: with a random MAC, the entry the last pod in the slot left
//! (reachable for up to 45 s, then stale for 5 s more before the kernel probes it again) sent
//! the new pod's packets to a MAC no port had, and the pod was unreachable for 2 to 12 s
//! after its server was ready.
//!
//! X is allocated per network across processes through a lock file in
//! `/run/wsgiscale-standin/` holding the owner's pid; a network whose owner died (a test
//! killed mid-run) is cleaned up by the next process that allocates. Everything made here is
//! removed on drop.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Mutex;

/// Where allocations are recorded.
const LOCK_DIR: &str = "/run/wsgiscale-standin";

/// Why the network could not be made.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// An `ip` command failed.
    #[error("`ip {args}` failed: {stderr}")]
    Ip {
        /// Its arguments.
        args: String,
        /// What it printed.
        stderr: String,
    },
    /// No subnet is free (all 256 in use by live processes).
    #[error("no free pod subnet in 198.18.0.0/16")]
    Exhausted,
    /// No address is left in the pod subnet.
    #[error("no free pod address in {0}.0/24")]
    Full(String),
    /// A file operation failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

fn ip(args: &[&str]) -> Result<(), NetError> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(NetError::Ip {
            args: args.join(" "),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// Whether pid `pid` is alive.
fn alive(pid: u32) -> bool {
    PathBuf::from(format!("/proc/{pid}")).exists()
}

/// The names of subnet `x`'s devices and namespaces.
fn bridge_name(x: u8) -> String {
    format!("wsgiscale-{x}")
}

/// The MAC address of the pod with address 198.18.`x`.`n`: locally administered, unicast, one
/// per address.
fn pod_mac(x: u8, n: u8) -> String {
    format!("02:77:c6:12:{x:02x}:{n:02x}")
}

fn netns_name(x: u8, n: u8) -> String {
    format!("wsgiscale-pod-{x}-{n}")
}

fn veth_name(x: u8, n: u8) -> String {
    format!("wsp{x}h{n}")
}

/// Removes whatever subnet `x` left behind (its owner is gone).
fn sweep(x: u8) {
    let prefix = format!("wsgiscale-pod-{x}-");
    if let Ok(out) = Command::new("ip").args(["netns", "list"]).output() {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if let Some(name) = line.split_whitespace().next() {
                if name.starts_with(&prefix) {
                    let _ = ip(&["netns", "del", name]);
                }
            }
        }
    }
    let _ = ip(&["link", "del", &bridge_name(x)]);
}

/// Removes every subnet whose owner died without cleaning up (a test killed mid-run, a
/// process that exited with its network still held), so that leftovers do not pile up.
fn sweep_dead_owners() {
    let Ok(entries) = std::fs::read_dir(LOCK_DIR) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        let Some(x) = name.strip_prefix("net-").and_then(|x| x.parse::<u8>().ok()) else {
            continue;
        };
        let owner = std::fs::read_to_string(entry.path())
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok());
        if owner.is_some_and(alive) {
            continue;
        }
        sweep(x);
        let _ = std::fs::remove_file(entry.path());
    }
}

/// A pod subnet: its bridge and the addresses handed out.
#[derive(Debug)]
pub struct PodNetwork {
    x: u8,
    lock: PathBuf,
    used: Mutex<[bool; 256]>,
    released: std::sync::atomic::AtomicBool,
}

impl PodNetwork {
    /// Allocates a free subnet 198.18.X.0/24 and makes its bridge.
    pub fn create() -> Result<PodNetwork, NetError> {
        std::fs::create_dir_all(LOCK_DIR)?;
        sweep_dead_owners();
        let me = std::process::id();
        // Start at a pid-derived subnet so that concurrent test binaries rarely race.
        let first = (me % 256) as u8;
        for i in 0..=255u8 {
            let x = first.wrapping_add(i);
            let lock = PathBuf::from(LOCK_DIR).join(format!("net-{x}"));
            let taken = match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&lock)
            {
                Ok(mut f) => {
                    use std::io::Write;
                    f.write_all(me.to_string().as_bytes())?;
                    true
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let owner = std::fs::read_to_string(&lock)
                        .ok()
                        .and_then(|s| s.trim().parse::<u32>().ok());
                    match owner {
                        Some(pid) if alive(pid) => false,
                        _ => {
                            // A dead owner: clean up after it and take the subnet over.
                            sweep(x);
                            std::fs::write(&lock, me.to_string())?;
                            true
                        }
                    }
                }
                Err(e) => return Err(e.into()),
            };
            if !taken {
                continue;
            }
            sweep(x);
            let net = PodNetwork {
                x,
                lock,
                used: Mutex::new([false; 256]),
                released: std::sync::atomic::AtomicBool::new(false),
            };
            let br = bridge_name(x);
            ip(&["link", "add", &br, "type", "bridge"])?;
            ip(&["addr", "add", &format!("{}/24", net.gateway()), "dev", &br])?;
            ip(&["link", "set", &br, "up"])?;
            return Ok(net);
        }
        Err(NetError::Exhausted)
    }

    /// Removes the bridge and every pod namespace of this subnet and frees the subnet. The
    /// node calls it when it stops, whoever still holds the network; dropping does it too.
    pub fn release(&self) {
        // Once only: after the first release the subnet may belong to another process.
        if self
            .released
            .swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            return;
        }
        sweep(self.x);
        let _ = std::fs::remove_file(&self.lock);
    }

    /// The prefix of this subnet's pod namespaces (`wsgiscale-pod-X-`).
    pub fn netns_prefix(&self) -> String {
        format!("wsgiscale-pod-{}-", self.x)
    }

    /// The gateway address (the root namespace's address on the bridge): stand-ins that run
    /// in the root namespace (the metrics-server) listen on it.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, self.x, 1)
    }

    /// Another address of the root namespace on the bridge, as a second host-network
    /// process has (a second activator replica): the next free address of the subnet, gone
    /// with the bridge.
    pub fn add_host_address(&self) -> Result<Ipv4Addr, NetError> {
        let n = {
            let mut used = self.used.lock().unwrap_or_else(|e| e.into_inner());
            let Some(n) = (2..=254u8).rev().find(|&n| !used[n as usize]) else {
                return Err(NetError::Full(format!("198.18.{}", self.x)));
            };
            used[n as usize] = true;
            n
        };
        let addr = Ipv4Addr::new(198, 18, self.x, n);
        ip(&[
            "addr",
            "add",
            &format!("{addr}/32"),
            "dev",
            &bridge_name(self.x),
        ])?;
        Ok(addr)
    }

    /// Makes a pod's namespace and interface, with the next free address.
    pub fn add_pod(&self) -> Result<PodNet, NetError> {
        let n = {
            let mut used = self.used.lock().unwrap_or_else(|e| e.into_inner());
            let Some(n) = (2..=254u8).find(|&n| !used[n as usize]) else {
                return Err(NetError::Full(format!("198.18.{}", self.x)));
            };
            used[n as usize] = true;
            n
        };
        let pod = PodNet {
            ns: netns_name(self.x, n),
            ip: Ipv4Addr::new(198, 18, self.x, n),
            n,
        };
        let result = (|| {
            let (ns, veth) = (pod.ns.as_str(), veth_name(self.x, n));
            let _ = ip(&["netns", "del", ns]);
            // The kernel destroys a deleted namespace's interfaces later, in the background:
            // the host end of the last pod in this slot may still hold the name (the veth
            // add then fails with "File exists"). Deleting it here frees the name at once.
            let _ = ip(&["link", "del", &veth]);
            ip(&["netns", "add", ns])?;
            ip(&[
                "link",
                "add",
                &veth,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "address",
                &pod_mac(self.x, n),
                "netns",
                ns,
            ])?;
            ip(&["link", "set", &veth, "master", &bridge_name(self.x)])?;
            ip(&["link", "set", &veth, "up"])?;
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{}/24", pod.ip),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
            ip(&[
                "-n",
                ns,
                "route",
                "add",
                "default",
                "via",
                &self.gateway().to_string(),
            ])
        })();
        match result {
            Ok(()) => Ok(pod),
            Err(e) => {
                self.remove_pod(pod);
                Err(e)
            }
        }
    }

    /// Removes a pod's interface and namespace and frees its address. The veth pair is
    /// deleted first, at once: left to the namespace's deletion it goes only when the kernel
    /// gets round to it, and the next pod in the slot found its name taken.
    pub fn remove_pod(&self, pod: PodNet) {
        let _ = ip(&["link", "del", &veth_name(self.x, pod.n)]);
        let _ = ip(&["netns", "del", &pod.ns]);
        // The next pod in the slot has the same MAC; the entry goes anyway, so that nothing
        // is sent to an address no pod holds as if it were still reachable.
        let _ = ip(&[
            "neigh",
            "del",
            &pod.ip.to_string(),
            "dev",
            &bridge_name(self.x),
        ]);
        let mut used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        used[pod.n as usize] = false;
    }
}

impl Drop for PodNetwork {
    fn drop(&mut self) {
        self.release();
    }
}

/// One pod's place on the network.
#[derive(Debug)]
pub struct PodNet {
    /// The network namespace (`/var/run/netns/<ns>`).
    pub ns: String,
    /// The pod's address.
    pub ip: Ipv4Addr,
    n: u8,
}

impl PodNet {
    /// The path `nsenter --net=` takes.
    pub fn ns_path(&self) -> PathBuf {
        PathBuf::from("/var/run/netns").join(&self.ns)
    }
}

/// Whether this process can make pod networks (root, with `ip` and `nsenter`), and why not.
pub fn check_available() -> Result<(), String> {
    for tool in ["ip", "nsenter"] {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
            .unwrap_or(false);
        if !found {
            return Err(format!("`{tool}` is not on the PATH"));
        }
    }
    if !std::fs::metadata("/proc/self")
        .map(|_| {
            std::fs::read_to_string("/proc/self/status")
                .unwrap_or_default()
                .lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
    {
        return Err("network namespaces and cgroups need root".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_the_kernels_limits() {
        // Interface names are at most 15 bytes.
        assert!(bridge_name(255).len() <= 15);
        assert!(veth_name(255, 254).len() <= 15);
        assert_eq!(netns_name(3, 7), "wsgiscale-pod-3-7");
    }

    #[test]
    fn a_pods_mac_is_unicast_local_and_one_per_address() {
        assert_eq!(pod_mac(224, 3), "02:77:c6:12:e0:03");
        let mut seen = std::collections::HashSet::new();
        for x in [0u8, 1, 224, 255] {
            for n in 2..=254u8 {
                let mac = pod_mac(x, n);
                let first = u8::from_str_radix(&mac[..2], 16).expect("hex");
                // Bit 0 clear: unicast; bit 1 set: locally administered.
                assert_eq!(first & 0b11, 0b10, "{mac}");
                assert!(seen.insert(mac));
            }
        }
    }
}
