//! Shared ENI through a veth pair and policy routing: the pod routes
//! everything to a link-local gateway answered by a static neighbour (the
//! host end's MAC); the host routes the pod's address to the veth, and the
//! pod's traffic out through its ENI's table.

use super::*;
use crate::desired::{Desired, Item, LinkPlan, MacOf};
use crate::names::{POD_GATEWAY_V4, POD_GATEWAY_V6};
use crate::spec::{PodAddress, PodSpec, PolicyPoint, Side};
use std::net::IpAddr;

pub(super) fn desired(pod: &PodSpec) -> Desired {
    let host = pod.host_veth();
    let ifname = pod.ifname.as_str();
    let mtu = pod.eni.mtu;
    let mut items = vec![Item::Link(LinkPlan::Veth {
        host: host.clone(),
        pod: ifname.to_owned(),
        mtu,
    })];
    if pod.ipv6.is_some() {
        // the address is ours alone (the cloud assigned it): no duplicate detection, no RAs
        for key in ["disable_ipv6", "accept_ra", "accept_dad"] {
            items.push(sysctl(Side::Pod, &format!("net/ipv6/conf/{ifname}/{key}"), "0"));
        }
        items.push(sysctl(Side::Host, &format!("net/ipv6/conf/{host}/accept_dad"), "0"));
        items.push(sysctl(Side::Host, &format!("net/ipv6/conf/{host}/accept_ra"), "0"));
        items.push(sysctl(Side::Host, &format!("net/ipv6/conf/{host}/forwarding"), "1"));
    }
    let mut addresses = vec![PodAddress {
        ip: IpAddr::V4(pod.ipv4),
        prefix: 32,
        gateway: IpAddr::V4(POD_GATEWAY_V4),
    }];
    if let Some(v6) = pod.ipv6 {
        addresses.push(PodAddress {
            ip: IpAddr::V6(v6),
            prefix: 128,
            gateway: IpAddr::V6(POD_GATEWAY_V6),
        });
    }
    for a in &addresses {
        items.push(address(Side::Pod, ifname, a.ip, a.prefix));
    }
    for a in &addresses {
        items.push(Item::Neighbour {
            side: Side::Pod,
            link: name(ifname),
            ip: a.gateway,
            mac: MacOf::Link(Side::Host, name(&host)),
        });
        items.push(default_route(Side::Pod, ifname, a.gateway));
    }
    for ip in pod.ips() {
        items.push(host_route_to_pod(ip, &host));
        items.extend(pod_rules(ip, pod.eni.route_table).map(Item::Rule));
    }
    items.extend(host_forwarding(&[&host], pod.ipv6.is_some()));
    items.push(tbf(Side::Host, &host, pod.bandwidth.ingress_bps, mtu));
    items.push(tbf(Side::Pod, ifname, pod.bandwidth.egress_bps, mtu));
    Desired {
        eni: eni_on_host(&pod.eni, pod.node_ip),
        pod: items,
        addresses,
        policy_point: PolicyPoint {
            side: Side::Host,
            ifname: host,
        },
    }
}
