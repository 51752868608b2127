//! One driver per mode: each turns a [`PodSpec`] into the [`Desired`]
//! state the engine applies. Drivers are pure: they read nothing from the
//! kernel, so the same spec always gives the same state.

mod exclusive;
mod ipvlan;
mod veth;

use crate::desired::{Desired, Item, LinkPlan, LinkRef, Route};
use crate::spec::{EniLink, Mode, PodSpec, Side};
use crate::tbf::Tbf;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use std::net::{IpAddr, Ipv4Addr};

pub(crate) const MAIN_TABLE: u32 = 254;

/// The desired state of `pod` wired as `mode` (the spec's mode, or veth
/// where the kernel has no ipvlan).
pub(crate) fn desired(pod: &PodSpec, mode: Mode) -> Desired {
    match mode {
        Mode::Veth => veth::desired(pod),
        Mode::ExclusiveEni => exclusive::desired(pod),
        Mode::Ipvlan => ipvlan::desired(pod),
    }
}

/// A shared ENI on the host: up with its MTU, the node IP /32 as its only
/// IPv4 address, its table's default route through the vSwitch gateway,
/// and no reverse-path filter.
pub(crate) fn eni_on_host(eni: &EniLink, node_ip: Ipv4Addr) -> Vec<Item> {
    let dev = LinkRef::Mac(eni.mac);
    let mut items = vec![
        Item::Link(LinkPlan::EniOnHost {
            mac: eni.mac,
            mtu: eni.mtu,
        }),
        Item::OnlyV4Address {
            side: Side::Host,
            link: dev.clone(),
            ip: IpAddr::V4(node_ip),
        },
        Item::Route {
            side: Side::Host,
            route: Route {
                destination: default_v4(),
                gateway: Some(IpAddr::V4(eni.gateway)),
                dev: dev.clone(),
                table: eni.route_table,
                scope_link: false,
                onlink: true,
            },
        },
        Item::LinkSysctl {
            side: Side::Host,
            link: dev,
            template: "net/ipv4/conf/{}/rp_filter",
            value: "0",
        },
    ];
    let dev = LinkRef::Mac(eni.mac);
    if let Some(gateway) = eni.gateway_v6 {
        // dual stack: the ENI's IPv6 default route in its table, through the
        // vSwitch's IPv6 gateway (found by neighbour discovery from the
        // ENI's link-local address); router advertisements are not ours to follow
        items.push(Item::LinkSysctl {
            side: Side::Host,
            link: dev.clone(),
            template: "net/ipv6/conf/{}/accept_ra",
            value: "0",
        });
        items.push(Item::Route {
            side: Side::Host,
            route: Route {
                destination: default_v6(),
                gateway: Some(IpAddr::V6(gateway)),
                dev,
                table: eni.route_table,
                scope_link: false,
                onlink: true,
            },
        });
    }
    items
}

/// Forwarding on, reverse-path filtering off for the host links pods use.
fn host_forwarding(links: &[&str], ipv6: bool) -> Vec<Item> {
    let mut items = vec![
        sysctl(Side::Host, "net/ipv4/ip_forward", "1"),
        sysctl(Side::Host, "net/ipv4/conf/all/rp_filter", "0"),
    ];
    items.extend(
        links
            .iter()
            .map(|l| sysctl(Side::Host, &format!("net/ipv4/conf/{l}/rp_filter"), "0")),
    );
    if ipv6 {
        items.push(sysctl(Side::Host, "net/ipv6/conf/all/forwarding", "1"));
    }
    items
}

fn sysctl(side: Side, key: &str, value: &'static str) -> Item {
    Item::Sysctl {
        side,
        key: key.to_owned(),
        value,
    }
}

fn name(n: &str) -> LinkRef {
    LinkRef::Name(n.to_owned())
}

fn address(side: Side, link: &str, ip: IpAddr, prefix: u8) -> Item {
    Item::Address {
        side,
        link: name(link),
        ip,
        prefix,
        host_scope: false,
    }
}

fn tbf(side: Side, link: &str, bps: Option<u64>, mtu: u32) -> Item {
    Item::RootTbf {
        side,
        link: name(link),
        tbf: bps.map(|b| Tbf::from_bits_per_second(b, mtu)),
    }
}

pub(crate) fn default_v4() -> IpNet {
    IpNet::V4(Ipv4Net::default())
}

pub(crate) fn default_v6() -> IpNet {
    IpNet::V6(Ipv6Net::default())
}

pub(crate) fn host_prefix(ip: IpAddr) -> IpNet {
    IpNet::new(ip, if ip.is_ipv4() { 32 } else { 128 }).unwrap_or(default_v4())
}

/// A default route (of the gateway's family) through `dev`, `onlink`.
fn default_route(side: Side, dev: &str, gateway: IpAddr) -> Item {
    Item::Route {
        side,
        route: Route {
            destination: if gateway.is_ipv4() { default_v4() } else { default_v6() },
            gateway: Some(gateway),
            dev: name(dev),
            table: MAIN_TABLE,
            scope_link: false,
            onlink: true,
        },
    }
}

/// The host's route to one pod address through `dev`.
fn host_route_to_pod(ip: IpAddr, dev: &str) -> Item {
    Item::Route {
        side: Side::Host,
        route: Route {
            destination: host_prefix(ip),
            gateway: None,
            dev: name(dev),
            table: MAIN_TABLE,
            scope_link: true,
            onlink: false,
        },
    }
}

/// Traffic to a pod looks up main; traffic from it, its ENI's table.
pub(crate) fn pod_rules(ip: IpAddr, table: u32) -> [crate::RuleSpec; 2] {
    [
        crate::RuleSpec {
            priority: crate::names::RULE_PRIORITY_TO_POD,
            from: false,
            address: ip,
            table: MAIN_TABLE,
        },
        crate::RuleSpec {
            priority: crate::names::RULE_PRIORITY_FROM_POD,
            from: true,
            address: ip,
            table,
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::{Desired, MacOf};
    use crate::spec::{Bandwidth, PodSpec};

    fn pod(mode: Mode) -> PodSpec {
        PodSpec {
            namespace: "ns".into(),
            name: "web".into(),
            netns: "/var/run/netns/x".into(),
            ifname: "eth0".into(),
            ipv4: Ipv4Addr::new(192, 168, 1, 10),
            ipv6: None,
            eni: EniLink {
                mac: [0, 0x16, 0x3e, 0, 1, 1],
                route_table: 1001,
                gateway: Ipv4Addr::new(192, 168, 1, 253),
                cidr: "192.168.1.0/24".parse().unwrap_or_default(),
                gateway_v6: None,
                cidr_v6: None,
                mtu: 1500,
            },
            node_ip: Ipv4Addr::new(10, 0, 0, 5),
            mode,
            bandwidth: Bandwidth::default(),
            service_cidr: None,
            host_stack_cidrs: vec!["169.254.20.10/32".parse().unwrap()],
        }
    }

    fn rules(d: &Desired) -> usize {
        d.pod.iter().filter(|i| matches!(i, Item::Rule(_))).count()
    }

    #[test]
    fn veth_routes_through_a_link_local_gateway_with_a_static_neighbour() {
        let d = desired(&pod(Mode::Veth), Mode::Veth);
        assert_eq!(d.addresses[0].prefix, 32);
        assert_eq!(d.addresses[0].gateway, IpAddr::V4(crate::names::POD_GATEWAY_V4));
        assert_eq!(rules(&d), 2, "to-pod and from-pod rules");
        assert!(d.pod.iter().any(|i| matches!(
            i,
            Item::Neighbour {
                side: Side::Pod,
                mac: MacOf::Link(Side::Host, _),
                ..
            }
        )));
        assert!(!d.eni.is_empty(), "the shared ENI is set up on the host");
        assert_eq!(d.policy_point.side, Side::Host);
    }

    #[test]
    fn an_exclusive_eni_routes_to_its_vswitch_and_needs_no_host_set_up() {
        let d = desired(&pod(Mode::ExclusiveEni), Mode::ExclusiveEni);
        assert_eq!(d.addresses[0].gateway, IpAddr::V4(Ipv4Addr::new(192, 168, 1, 253)));
        assert_eq!(rules(&d), 0);
        assert!(d.eni.is_empty());
        assert!(matches!(d.pod[0], Item::Link(LinkPlan::EniInPod { .. })));
        assert_eq!(d.policy_point.side, Side::Pod);
        // host_stack_cidrs go through the host peer, like the node and Services
        let node_local_dns: ipnet::IpNet = "169.254.20.10/32".parse().unwrap_or_default();
        assert!(d.pod.iter().any(|i| matches!(
            i,
            Item::Route { side: Side::Pod, route } if route.destination == node_local_dns
                && route.gateway == Some(IpAddr::V4(crate::names::POD_GATEWAY_V4))
        )));
    }

    #[test]
    fn ipvlan_takes_the_vswitch_prefix_and_no_rules() {
        let d = desired(&pod(Mode::Ipvlan), Mode::Ipvlan);
        assert_eq!(d.addresses[0].prefix, 24);
        assert_eq!(rules(&d), 0);
        let made: Vec<&str> = d
            .pod
            .iter()
            .filter_map(|i| match i {
                Item::Link(LinkPlan::IpvlanChild { made_as, .. }) => Some(made_as.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(made.len(), 2, "the host-side child and the pod's");
        assert!(made.iter().all(|n| n.len() <= 15), "{made:?}");
        // Services and host_stack_cidrs are turned from the ENI into the host slave
        let p = PodSpec {
            service_cidr: Some("172.21.0.0/20".parse().unwrap()),
            ..pod(Mode::Ipvlan)
        };
        let redirected: Vec<String> = desired(&p, Mode::Ipvlan)
            .pod
            .iter()
            .filter_map(|i| match i {
                Item::EgressRedirect {
                    link: LinkRef::Mac(mac),
                    cidr,
                    to: LinkRef::Name(to),
                } if *mac == p.eni.mac && *to == ipvlan::host_slave_name(&p.eni.mac) => Some(cidr.to_string()),
                _ => None,
            })
            .collect();
        assert_eq!(redirected, ["172.21.0.0/20", "169.254.20.10/32"]);
    }

    #[test]
    fn the_same_spec_gives_the_same_state() {
        let p = pod(Mode::Veth);
        assert_eq!(desired(&p, Mode::Veth), desired(&p, Mode::Veth));
    }
}
