//! The per-pod network spec the node service hands the datapath, and what
//! comes back from it.

use crate::names::host_veth_name;
use ipnet::{Ipv4Net, Ipv6Net};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

/// An ENI as the datapath needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EniLink {
    pub mac: [u8; 6],
    /// The policy-routing table of this ENI ([`crate::names::eni_route_table`]
    /// of its link index when it was adopted; recorded, so it never moves).
    pub route_table: u32,
    pub gateway: Ipv4Addr,
    /// The vSwitch CIDR.
    pub cidr: Ipv4Net,
    /// The vSwitch's IPv6 gateway and CIDR, on dual-stack vSwitches.
    pub gateway_v6: Option<Ipv6Addr>,
    pub cidr_v6: Option<Ipv6Net>,
    pub mtu: u32,
}

/// How a pod is wired; chosen per pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Shared ENI through a veth pair and policy routing.
    Veth,
    /// The ENI itself moves into the pod.
    ExclusiveEni,
    /// Shared ENI through an ipvlan L2 child (veth where the kernel lacks ipvlan).
    Ipvlan,
}

/// Rate limits in bits per second.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Bandwidth {
    pub ingress_bps: Option<u64>,
    pub egress_bps: Option<u64>,
}

/// Everything that decides one pod's datapath.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodSpec {
    pub namespace: String,
    pub name: String,
    pub netns: PathBuf,
    pub ifname: String,
    pub ipv4: Ipv4Addr,
    pub ipv6: Option<Ipv6Addr>,
    pub eni: EniLink,
    /// The node's primary address (source of the ENI's ARP, target of pod→node routes).
    pub node_ip: Ipv4Addr,
    pub mode: Mode,
    pub bandwidth: Bandwidth,
    /// Exclusive ENI: Service traffic goes through the host peer.
    pub service_cidr: Option<Ipv4Net>,
    /// Exclusive ENI: further destinations reached through the host peer
    /// (`host_stack_cidrs`, e.g. NodeLocal DNSCache).
    pub host_stack_cidrs: Vec<Ipv4Net>,
}

impl PodSpec {
    pub fn host_veth(&self) -> String {
        host_veth_name(&self.namespace, &self.name, &self.ifname)
    }

    pub(crate) fn ips(&self) -> Vec<IpAddr> {
        std::iter::once(IpAddr::V4(self.ipv4))
            .chain(self.ipv6.map(IpAddr::V6))
            .collect()
    }
}

/// One address of the pod as its interface carries it: the prefix length
/// and the gateway it routes through depend on the mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodAddress {
    pub ip: IpAddr,
    pub prefix: u8,
    pub gateway: IpAddr,
}

/// Which side of the pod a link lives on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// The namespace the datapath works in (the node's).
    Host,
    /// The pod's namespace.
    Pod,
}

/// Where every packet of the pod crosses into or out of it, so a policy
/// engine can hook there: the host end of its veth, or (exclusive ENI,
/// ipvlan) its own interface inside the pod's namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyPoint {
    pub side: Side,
    pub ifname: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetupResult {
    /// The mode really used (ipvlan falls back to veth where unsupported).
    pub mode: Mode,
    pub host_veth: Option<String>,
    /// MAC of the pod's interface.
    pub pod_mac: Vec<u8>,
    /// The pod's addresses with their prefixes and gateways, per family.
    pub addresses: Vec<PodAddress>,
    pub policy_point: PolicyPoint,
    pub warnings: Vec<String>,
}

/// One way the actual state differs from the desired one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drift {
    pub kind: DriftKind,
    pub message: String,
}

/// What kind of thing drifted (a metrics label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DriftKind {
    Namespace,
    Link,
    Address,
    Route,
    Rule,
    Neighbour,
    Qdisc,
    Sysctl,
}

impl DriftKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Namespace => "namespace",
            Self::Link => "link",
            Self::Address => "address",
            Self::Route => "route",
            Self::Rule => "rule",
            Self::Neighbour => "neighbour",
            Self::Qdisc => "qdisc",
            Self::Sysctl => "sysctl",
        }
    }
}

impl Drift {
    pub(crate) fn new(kind: DriftKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for Drift {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}
