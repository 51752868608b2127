//! Exclusive ENI: the ENI itself is the pod's interface and routes straight
//! to its vSwitch gateway; a veth "host peer" carries the pod's traffic to
//! the node and to Services through the host.

use super::*;
use crate::desired::{Desired, Item, LinkPlan, MacOf, Route};
use crate::names::POD_GATEWAY_V4;
use crate::spec::{PodAddress, PodSpec, PolicyPoint, Side};
use std::net::IpAddr;

/// The pod end of the host peer.
pub(crate) const HOST_PEER_IFNAME: &str = "veth1";

pub(super) fn desired(pod: &PodSpec) -> Desired {
    let host = pod.host_veth();
    let ifname = pod.ifname.as_str();
    let mtu = pod.eni.mtu;
    let v4 = IpAddr::V4(pod.ipv4);
    let mut addresses = vec![PodAddress {
        ip: v4,
        prefix: 32,
        gateway: IpAddr::V4(pod.eni.gateway),
    }];
    if let (Some(v6), Some(gw6)) = (pod.ipv6, pod.eni.gateway_v6) {
        addresses.push(PodAddress {
            ip: IpAddr::V6(v6),
            prefix: 128,
            gateway: IpAddr::V6(gw6),
        });
    }
    let mut items = vec![Item::Link(LinkPlan::EniInPod {
        mac: pod.eni.mac,
        name: ifname.to_owned(),
        mtu,
    })];
    for a in &addresses {
        items.push(address(Side::Pod, ifname, a.ip, a.prefix));
        items.push(default_route(Side::Pod, ifname, a.gateway));
    }
    items.push(Item::Link(LinkPlan::Veth {
        host: host.clone(),
        pod: HOST_PEER_IFNAME.into(),
        mtu,
    }));
    items.push(address(Side::Pod, HOST_PEER_IFNAME, v4, 32));
    items.push(Item::Neighbour {
        side: Side::Pod,
        link: name(HOST_PEER_IFNAME),
        ip: IpAddr::V4(POD_GATEWAY_V4),
        mac: MacOf::Link(Side::Host, name(&host)),
    });
    let via_host = |destination: ipnet::IpNet| Item::Route {
        side: Side::Pod,
        route: Route {
            destination,
            gateway: Some(IpAddr::V4(POD_GATEWAY_V4)),
            dev: name(HOST_PEER_IFNAME),
            table: MAIN_TABLE,
            scope_link: false,
            onlink: true,
        },
    };
    items.push(via_host(host_prefix(IpAddr::V4(pod.node_ip))));
    if let Some(svc) = pod.service_cidr {
        items.push(via_host(ipnet::IpNet::V4(svc)));
    }
    for cidr in &pod.host_stack_cidrs {
        items.push(via_host(ipnet::IpNet::V4(*cidr)));
    }
    items.push(host_route_to_pod(v4, &host));
    items.extend(host_forwarding(&[&host], false));
    items.push(tbf(Side::Pod, ifname, pod.bandwidth.egress_bps, mtu));
    Desired {
        eni: Vec::new(),
        pod: items,
        addresses,
        policy_point: PolicyPoint {
            side: Side::Pod,
            ifname: ifname.to_owned(),
        },
    }
}
