//! Shared ENI through ipvlan L2: the pod's interface is an ipvlan child of
//! the ENI and reaches the vSwitch gateway directly; a host-side child (the
//! "slave") holding the node IP with host scope carries pod ⇄ node traffic.

use super::*;
use crate::desired::{Desired, Item, LinkPlan, MacOf, Route};
use crate::spec::{PodAddress, PodSpec, PolicyPoint, Side};
use std::net::IpAddr;

/// The host-side ipvlan child of an ENI: `ipvl` + the last four bytes of its MAC.
pub(crate) fn host_slave_name(mac: &[u8; 6]) -> String {
    format!("ipvl{:02x}{:02x}{:02x}{:02x}", mac[2], mac[3], mac[4], mac[5])
}

pub(super) fn desired(pod: &PodSpec) -> Desired {
    let ifname = pod.ifname.as_str();
    let mtu = pod.eni.mtu;
    let slave = host_slave_name(&pod.eni.mac);
    let node_ip = IpAddr::V4(pod.node_ip);
    let mut addresses = vec![PodAddress {
        ip: IpAddr::V4(pod.ipv4),
        prefix: pod.eni.cidr.prefix_len(),
        gateway: IpAddr::V4(pod.eni.gateway),
    }];
    if let (Some(v6), Some(gw6), Some(cidr6)) = (pod.ipv6, pod.eni.gateway_v6, pod.eni.cidr_v6) {
        addresses.push(PodAddress {
            ip: IpAddr::V6(v6),
            prefix: cidr6.prefix_len(),
            gateway: IpAddr::V6(gw6),
        });
    }
    let mut items = vec![
        Item::Link(LinkPlan::IpvlanChild {
            parent: pod.eni.mac,
            side: Side::Host,
            name: slave.clone(),
            made_as: slave.clone(),
            mtu,
        }),
        Item::Address {
            side: Side::Host,
            link: name(&slave),
            ip: node_ip,
            prefix: 32,
            host_scope: true,
        },
        Item::Link(LinkPlan::IpvlanChild {
            parent: pod.eni.mac,
            side: Side::Pod,
            name: ifname.to_owned(),
            made_as: format!("ipv{}", &pod.host_veth()[4..]),
            mtu,
        }),
    ];
    for a in &addresses {
        items.push(address(Side::Pod, ifname, a.ip, a.prefix));
        items.push(default_route(Side::Pod, ifname, a.gateway));
    }
    items.push(Item::Route {
        side: Side::Pod,
        route: Route {
            destination: host_prefix(node_ip),
            gateway: None,
            dev: name(ifname),
            table: MAIN_TABLE,
            scope_link: true,
            onlink: false,
        },
    });
    items.push(Item::Neighbour {
        side: Side::Pod,
        link: name(ifname),
        ip: node_ip,
        mac: MacOf::Fixed(pod.eni.mac),
    });
    for ip in pod.ips() {
        items.push(host_route_to_pod(ip, &slave));
    }
    // Services and host_stack_cidrs (NodeLocal DNSCache) are served by the
    // host: the pod's packets to them, which ipvlan would send out of the
    // ENI to the VPC, are turned into the host slave's ingress (upstream: a
    // clsact egress filter on the ENI); the replies reach the pod through
    // the slave like any host traffic to it
    for cidr in pod.service_cidr.iter().chain(&pod.host_stack_cidrs) {
        items.push(Item::EgressRedirect {
            link: LinkRef::Mac(pod.eni.mac),
            cidr: *cidr,
            to: name(&slave),
        });
    }
    items.push(tbf(Side::Pod, ifname, pod.bandwidth.egress_bps, mtu));
    Desired {
        eni: eni_on_host(&pod.eni, pod.node_ip),
        pod: items,
        addresses,
        policy_point: PolicyPoint {
            side: Side::Pod,
            ifname: ifname.to_owned(),
        },
    }
}
