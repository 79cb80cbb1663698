//! Pods as network namespaces on one LAN, for tests that need the kernel's own redirection
//! (iptables, `SO_ORIGINAL_DST`) between real addresses. Needs root and `ip` (iproute2).
//!
//! The LAN is a bridge `br0` in a namespace of its own, which also holds the LAN's own address
//! (a client there is "outside the mesh": no rules, no proxy). Each pod is a namespace with `lo`
//! and `eth0`, one end of a veth pair whose other end is a port of the bridge, and a default route
//! through the LAN address, as a pod has: a destination that exists nowhere (a service IP) is
//! still routable, so a connect to it reaches the `OUTPUT` chain instead of failing with
//! "network unreachable". The host's own interfaces are never touched: every link is created
//! inside the namespaces. Dropping the [`PodNetwork`] deletes every namespace, which deletes
//! their links and iptables rules with them.

// Each test binary uses a different part of this shared support module.
#![allow(dead_code)]

use std::process::{Command, Stdio};

/// The LAN namespace and the pods on it; all deleted on drop.
pub struct PodNetwork {
    prefix: String,
    lan: String,
    /// Every namespace created, the LAN's first.
    namespaces: Vec<String>,
}

impl PodNetwork {
    /// Creates the LAN namespace `<prefix>-lan` with its bridge at `lan_addr` (`10.98.0.1/24`).
    pub fn new(prefix: &str, lan_addr: &str) -> Result<Self, String> {
        let lan = format!("{prefix}-lan");
        let mut network = Self {
            prefix: prefix.to_owned(),
            lan: lan.clone(),
            namespaces: Vec::new(),
        };
        network.add_namespace(&lan)?;
        ip(&["-n", &lan, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &lan, "addr", "add", lan_addr, "dev", "br0"])?;
        ip(&["-n", &lan, "link", "set", "br0", "up"])?;
        Ok(network)
    }

    /// Adds the pod `name` (namespace `<prefix>-<name>`) with `eth0` at `addr` (`10.98.0.2/24`)
    /// and a default route via `gateway` (the LAN address); returns the namespace.
    pub fn add_pod(&mut self, name: &str, addr: &str, gateway: &str) -> Result<String, String> {
        let ns = format!("{}-{name}", self.prefix);
        self.add_namespace(&ns)?;
        let lan = self.lan.as_str();
        // The bridge port is named after the pod, so `ip -n <lan> link` reads like a switch.
        ip(&[
            "-n", &ns, "link", "add", "eth0", "type", "veth", "peer", "name", name, "netns", lan,
        ])?;
        ip(&["-n", lan, "link", "set", name, "master", "br0"])?;
        ip(&["-n", lan, "link", "set", name, "up"])?;
        ip(&["-n", &ns, "addr", "add", addr, "dev", "eth0"])?;
        ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        ip(&["-n", &ns, "route", "add", "default", "via", gateway])?;
        Ok(ns)
    }

    /// The LAN namespace, where a client outside the mesh runs.
    pub fn lan(&self) -> &str {
        &self.lan
    }

    /// `program` run inside the namespace `ns` (`ip netns exec`, which execs it: the child's pid
    /// is the program's own, so killing the child kills the program).
    pub fn exec(ns: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns])
            .arg(program)
            .stdin(Stdio::null());
        cmd
    }

    fn add_namespace(&mut self, ns: &str) -> Result<(), String> {
        // A leftover from a crashed run with the same pid would make `add` fail.
        let _ = ip(&["netns", "del", ns]);
        ip(&["netns", "add", ns])?;
        self.namespaces.push(ns.to_owned());
        ip(&["-n", ns, "link", "set", "lo", "up"])
    }
}

impl Drop for PodNetwork {
    fn drop(&mut self) {
        // Pods first: deleting a pod's namespace deletes its veth and so the bridge port.
        for ns in self.namespaces.drain(..).rev() {
            let _ = ip(&["netns", "del", &ns]);
        }
    }
}

/// Runs `ip` with `args`; the error names the command and what `ip` said.
pub fn ip(args: &[&str]) -> Result<(), String> {
    run("ip", args)
}

/// Runs `program` with `args` to its end; the error names the command and its stderr.
pub fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{program} {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        ))
    }
}
