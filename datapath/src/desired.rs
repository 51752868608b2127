//! The desired state of a pod's network, as data: what a driver produces
//! from a [`PodSpec`](crate::PodSpec) and what the engine applies, checks,
//! repairs and tears down. Links are named, never indexed, so a desired
//! state can be computed before anything exists and compared after a
//! restart.

use crate::spec::{PodAddress, PolicyPoint, Side};
use crate::tbf::Tbf;
use ipnet::IpNet;
use std::net::IpAddr;

/// A link, by what identifies it on its side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkRef {
    Name(String),
    /// An ENI, by its MAC (its name is the kernel's business).
    Mac([u8; 6]),
}

impl std::fmt::Display for LinkRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Name(n) => f.write_str(n),
            Self::Mac(m) => write!(f, "ENI {}", crate::names::format_mac(m)),
        }
    }
}

/// A link to create (or find) and bring up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkPlan {
    /// A veth pair: `host` in the host namespace, its peer `pod` in the pod's.
    Veth { host: String, pod: String, mtu: u32 },
    /// The ENI itself, moved into the pod and renamed `name`.
    EniInPod { mac: [u8; 6], name: String, mtu: u32 },
    /// An ENI left in the host: up with its MTU.
    EniOnHost { mac: [u8; 6], mtu: u32 },
    /// An ipvlan L2 child of the ENI `parent`, on `side` as `name`; made in
    /// the host as `made_as` (unique per pod) and moved when `side` is the pod.
    IpvlanChild {
        parent: [u8; 6],
        side: Side,
        name: String,
        made_as: String,
        mtu: u32,
    },
}

/// Where a neighbour entry's MAC comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MacOf {
    Fixed([u8; 6]),
    /// The MAC of a link (the host end of the pod's veth).
    Link(Side, LinkRef),
}

/// A route, with its device by reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub destination: IpNet,
    pub gateway: Option<IpAddr>,
    pub dev: LinkRef,
    pub table: u32,
    pub scope_link: bool,
    pub onlink: bool,
}

/// One piece of desired state.
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    Link(LinkPlan),
    Address {
        side: Side,
        link: LinkRef,
        ip: IpAddr,
        prefix: u8,
        /// `scope host` (the ipvlan slave's node address).
        host_scope: bool,
    },
    /// The only IPv4 address of the link (an ENI carries the node IP /32 and nothing else).
    OnlyV4Address {
        side: Side,
        link: LinkRef,
        ip: IpAddr,
    },
    Route {
        side: Side,
        route: Route,
    },
    Rule(crate::RuleSpec),
    Neighbour {
        side: Side,
        link: LinkRef,
        ip: IpAddr,
        mac: MacOf,
    },
    /// The link's root qdisc: a TBF, or (`None`) no TBF.
    RootTbf {
        side: Side,
        link: LinkRef,
        tbf: Option<Tbf>,
    },
    Sysctl {
        side: Side,
        key: String,
        value: &'static str,
    },
    /// A per-link sysctl: `{}` in `template` is the link's name.
    LinkSysctl {
        side: Side,
        link: LinkRef,
        template: &'static str,
        value: &'static str,
    },
    /// Packets to `cidr` leaving `link` go to the ingress of `to` instead
    /// (a clsact egress filter; on the host). Shared by every pod of `link`:
    /// never removed with one pod.
    EgressRedirect {
        link: LinkRef,
        cidr: ipnet::Ipv4Net,
        to: LinkRef,
    },
}

impl std::fmt::Display for Item {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Item::Link(LinkPlan::Veth { host, pod, .. }) => write!(f, "veth {host} (pod end {pod})"),
            Item::Link(LinkPlan::EniInPod { mac, name, .. }) => {
                write!(f, "ENI {} as {name} in the pod", crate::names::format_mac(mac))
            }
            Item::Link(LinkPlan::EniOnHost { mac, .. }) => write!(f, "ENI link {}", crate::names::format_mac(mac)),
            Item::Link(LinkPlan::IpvlanChild { name, .. }) => write!(f, "ipvlan link {name}"),
            Item::Address {
                side, link, ip, prefix, ..
            } => write!(f, "address {ip}/{prefix} on {link} ({})", side_name(*side)),
            Item::OnlyV4Address { side, link, ip } => {
                write!(f, "{ip} as the only IPv4 address of {link} ({})", side_name(*side))
            }
            Item::Route { side, route } => {
                write!(f, "route {}", route.destination)?;
                if let Some(gw) = route.gateway {
                    write!(f, " via {gw}")?;
                }
                write!(f, " dev {} table {} ({})", route.dev, route.table, side_name(*side))
            }
            Item::Rule(r) => write!(
                f,
                "rule prio {} {} {} lookup {}",
                r.priority,
                if r.from { "from" } else { "to" },
                r.address,
                r.table
            ),
            Item::Neighbour { side, link, ip, .. } => {
                write!(f, "static neighbour {ip} on {link} ({})", side_name(*side))
            }
            Item::RootTbf { side, link, tbf } => match tbf {
                Some(t) => write!(f, "TBF of {} bytes/s on {link} ({})", t.rate, side_name(*side)),
                None => write!(f, "no TBF on {link} ({})", side_name(*side)),
            },
            Item::Sysctl { side, key, value } => write!(f, "sysctl {key}={value} ({})", side_name(*side)),
            Item::LinkSysctl {
                side,
                link,
                template,
                value,
            } => write!(
                f,
                "sysctl {}={value} ({})",
                template.replace("{}", &link.to_string()),
                side_name(*side)
            ),
            Item::EgressRedirect { link, cidr, to } => write!(f, "redirect of {cidr} leaving {link} to {to} (host)"),
        }
    }
}

fn side_name(side: Side) -> &'static str {
    match side {
        Side::Host => "host",
        Side::Pod => "pod",
    }
}

/// What a driver wants for one pod.
#[derive(Debug, Clone, PartialEq)]
pub struct Desired {
    /// The shared ENI's own set-up on the host (empty when the ENI goes into the pod).
    pub eni: Vec<Item>,
    /// The pod's links, addresses, routes, rules, neighbours, qdiscs and sysctls, in order.
    pub pod: Vec<Item>,
    pub addresses: Vec<PodAddress>,
    pub policy_point: PolicyPoint,
}
