//! A simulated ECS node for the demo and the end-to-end tests: a "node"
//! namespace plays the instance, a "vpc" namespace the vSwitch gateways.
//! When the emulator attaches an ENI, a veth carrying the ENI's MAC appears
//! in the node namespace with its peer, holding the gateway, in the vpc
//! namespace; detach removes it. Test infrastructure: it runs `ip`, which
//! the product's pod path never does.

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use terway_cloud::emulator::{AttachmentEvent, HotPlug};

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {args:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("ip {args:?}: {}", String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// Two namespaces, removed on drop.
#[derive(Debug)]
pub struct SimulatedNode {
    pub node_ns: String,
    pub vpc_ns: String,
    links: AtomicU32,
}

impl SimulatedNode {
    /// Makes the namespaces; `tag` keeps concurrent runs apart.
    pub fn new(tag: &str) -> Result<Self, String> {
        let node_ns = format!("trw{tag}node");
        let vpc_ns = format!("trw{tag}vpc");
        for ns in [&node_ns, &vpc_ns] {
            let _ = ip(&["netns", "del", ns]);
            ip(&["netns", "add", ns])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        // the VPC answers whatever source its ENIs bring (the SDN does no reverse-path check here)
        let _ = Command::new("ip")
            .args([
                "netns",
                "exec",
                &vpc_ns,
                "sysctl",
                "-qw",
                "net.ipv4.conf.all.rp_filter=0",
            ])
            .status();
        Ok(Self {
            node_ns,
            vpc_ns,
            links: AtomicU32::new(0),
        })
    }

    pub fn node_ns_path(&self) -> std::path::PathBuf {
        format!("/var/run/netns/{}", self.node_ns).into()
    }

    /// Puts `address` on the vpc namespace's loopback: "an address in the VPC".
    pub fn add_vpc_address(&self, address: &str) -> Result<(), String> {
        ip(&["-n", &self.vpc_ns, "addr", "add", address, "dev", "lo"])
    }

    /// What the VPC's SDN knows: `pod_ip` lives behind the ENI with `mac`.
    pub fn route_to_pod(&self, pod_ip: &str, mac: &str) -> Result<(), String> {
        let gw = self
            .gateway_link_of(mac)
            .ok_or_else(|| format!("no gateway link for ENI {mac}"))?;
        // several ENIs may share a vSwitch: deliver to this one, as the SDN does
        let host_prefix = if pod_ip.contains(':') { 128 } else { 32 };
        ip(&[
            "-n",
            &self.vpc_ns,
            "route",
            "replace",
            &format!("{pod_ip}/{host_prefix}"),
            "dev",
            &gw,
        ])?;
        ip(&[
            "-n",
            &self.vpc_ns,
            "neigh",
            "replace",
            pod_ip,
            "lladdr",
            mac,
            "dev",
            &gw,
            "nud",
            "permanent",
        ])
    }

    /// Packets the VPC received from the ENI with `mac` (its gateway link's rx count).
    pub fn gateway_rx_packets(&self, mac: &str) -> u64 {
        let Some(gw) = self.gateway_link_of(mac) else { return 0 };
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.vpc_ns,
                "cat",
                &format!("/sys/class/net/{gw}/statistics/rx_packets"),
            ])
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(0)
    }

    fn gateway_link_of(&self, mac: &str) -> Option<String> {
        Some(format!("g{}", mac.replace(':', "").get(4..)?))
    }

    fn attach(
        &self,
        mac: &str,
        gateway: &str,
        cidr: &str,
        ipv6: Option<&(std::net::Ipv6Addr, String)>,
    ) -> Result<(), String> {
        let n = self.links.fetch_add(1, Ordering::Relaxed);
        let eni = format!("eth{}", n + 1);
        let gw = self.gateway_link_of(mac).ok_or("bad MAC")?;
        let prefix = cidr.split('/').nth(1).unwrap_or("24");
        ip(&[
            "link",
            "add",
            &eni,
            "netns",
            &self.node_ns,
            "address",
            mac,
            "type",
            "veth",
            "peer",
            "name",
            &gw,
            "netns",
            &self.vpc_ns,
        ])?;
        // a second ENI on the same vSwitch would put the gateway there twice: once is enough
        let _ = ip(&[
            "-n",
            &self.vpc_ns,
            "addr",
            "add",
            &format!("{gateway}/{prefix}"),
            "dev",
            &gw,
        ]);
        if let Some((gateway6, cidr6)) = ipv6 {
            let prefix6 = cidr6.split('/').nth(1).unwrap_or("64");
            // no duplicate detection: the gateway answers at once
            let _ = ip(&[
                "-n",
                &self.vpc_ns,
                "addr",
                "add",
                &format!("{gateway6}/{prefix6}"),
                "dev",
                &gw,
                "nodad",
            ]);
        }
        ip(&["-n", &self.vpc_ns, "link", "set", &gw, "up"])
    }

    fn detach(&self, mac: &str) -> Result<(), String> {
        let gw = self.gateway_link_of(mac).ok_or("bad MAC")?;
        ip(&["-n", &self.vpc_ns, "link", "del", &gw])
    }
}

impl HotPlug for SimulatedNode {
    fn on_event(&self, event: &AttachmentEvent) {
        let result = match event {
            AttachmentEvent::Attached {
                mac,
                gateway,
                vswitch_cidr,
                ipv6,
                ..
            } => self.attach(mac, &gateway.to_string(), vswitch_cidr, ipv6.as_ref()),
            AttachmentEvent::Detached { mac, .. } => self.detach(mac),
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "simulated hot-plug failed");
        }
    }
}

impl Drop for SimulatedNode {
    fn drop(&mut self) {
        for ns in [&self.node_ns, &self.vpc_ns] {
            let _ = ip(&["netns", "del", ns]);
        }
    }
}
