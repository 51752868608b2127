//! The per-pod network spec: what the datapath is asked to build for one
//! pod, from what IPAM gave it and the node's facts. The CNI service builds
//! it for ADD; DEL, CHECK, GC and the datapath agent rebuild it from the
//! pod's ledger record, so every one of them asks for the same state.

use super::Node;
use crate::cni::protocol::PodRequest;
use std::net::{IpAddr, Ipv4Addr};
use terway_datapath::{Bandwidth, EniLink, Mode, PodSpec};
use terway_statestore::{EniRecord, PodRecord};

/// Where a pod's interface lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PodPlace {
    pub namespace: String,
    pub name: String,
    pub netns: String,
    pub ifname: String,
}

impl PodPlace {
    pub fn of(p: &PodRequest) -> Self {
        Self {
            namespace: p.pod_namespace.clone(),
            name: p.pod_name.clone(),
            netns: p.netns.clone(),
            ifname: p.ifname.clone(),
        }
    }
}

/// The mode a pod is wired with: a whole ENI when it holds one, else the
/// node's shared-ENI mode.
pub(crate) fn mode(node: &Node, exclusive_eni: bool) -> Mode {
    match node.config().datapath_mode {
        _ if exclusive_eni => Mode::ExclusiveEni,
        terway_config::DatapathMode::Veth => Mode::Veth,
        terway_config::DatapathMode::Ipvlan => Mode::Ipvlan,
        terway_config::DatapathMode::ExclusiveEni => Mode::ExclusiveEni,
    }
}

#[allow(clippy::too_many_arguments)] // each is one fact of the pod; a struct would only rename them
pub(crate) fn spec(
    node: &Node,
    pod: &PodPlace,
    eni: &EniRecord,
    ip: Ipv4Addr,
    ipv6: Option<IpAddr>,
    bandwidth: Bandwidth,
    exclusive_eni: bool,
    host_stack_cidrs: &[ipnet::IpNet],
) -> anyhow::Result<PodSpec> {
    Ok(PodSpec {
        namespace: pod.namespace.clone(),
        name: pod.name.clone(),
        netns: pod.netns.clone().into(),
        ifname: pod.ifname.clone(),
        ipv4: ip,
        ipv6: match ipv6 {
            Some(IpAddr::V6(v6)) => Some(v6),
            _ => None,
        },
        eni: eni_link(node, eni)?,
        node_ip: node.node_ip,
        mode: mode(node, exclusive_eni || eni.owner.is_some()),
        bandwidth,
        service_cidr: node.service_cidr(),
        host_stack_cidrs: host_stack_cidrs
            .iter()
            .filter_map(|c| match c {
                ipnet::IpNet::V4(v4) => Some(*v4),
                ipnet::IpNet::V6(_) => None,
            })
            .collect(),
    })
}

/// The spec of a pod the ledger holds (`netns`: the runtime's path when it
/// gave one, else the recorded one). `None` when the record names no IPv4
/// address or an ENI the ledger no longer has.
pub(crate) fn spec_of_record(node: &Node, record: &PodRecord, netns: Option<&str>) -> Option<PodSpec> {
    let first = *record.ips.first()?;
    let IpAddr::V4(ip) = first else {
        return None;
    };
    let eni = match &record.eni_id {
        Some(id) => node.ledger.eni(id)?,
        None => node.ledger.eni_of_ip(&first)?,
    };
    let bandwidth = Bandwidth {
        ingress_bps: (record.settings.ingress_bps > 0).then_some(record.settings.ingress_bps),
        egress_bps: (record.settings.egress_bps > 0).then_some(record.settings.egress_bps),
    };
    let place = PodPlace {
        namespace: record.pod.namespace.clone(),
        name: record.pod.name.clone(),
        netns: netns.filter(|n| !n.is_empty()).unwrap_or(&record.netns).to_owned(),
        ifname: record.ifname.clone(),
    };
    spec(
        node,
        &place,
        &eni,
        ip,
        record.ips.iter().copied().find(IpAddr::is_ipv6),
        bandwidth,
        record.eni_id.is_some(),
        &record.settings.host_stack_cidrs,
    )
    .ok()
}

/// An ENI as the datapath needs it.
pub(crate) fn eni_link(node: &Node, e: &EniRecord) -> anyhow::Result<EniLink> {
    let IpAddr::V4(gateway) = e.gateway else {
        anyhow::bail!("ENI {} has an IPv6 gateway", e.id)
    };
    Ok(EniLink {
        mac: terway_datapath::names::parse_mac(&e.mac)
            .ok_or_else(|| anyhow::anyhow!("ENI {} has a bad MAC {:?}", e.id, e.mac))?,
        route_table: e.route_table,
        gateway,
        cidr: e.cidr.parse()?,
        gateway_v6: e.ipv6.as_ref().map(|v6| v6.gateway),
        cidr_v6: e.ipv6.as_ref().map(|v6| v6.cidr.parse()).transpose()?,
        mtu: node.config().mtu,
    })
}

/// A recorded pod as policy sees it: its key, its host-side interface, and
/// why its mode cannot be policed (exclusive ENI, ipvlan), if it cannot.
pub(crate) fn policy_local(
    node: &Node,
    record: &PodRecord,
) -> Option<(
    crate::policy::ObjectKey,
    crate::policy::ruleset::LocalPod,
    Option<String>,
)> {
    let spec = spec_of_record(node, record, None)?;
    Some(policy_local_of(&spec, record.ips.clone()))
}

pub(crate) fn policy_local_of(
    spec: &PodSpec,
    ips: Vec<IpAddr>,
) -> (
    crate::policy::ObjectKey,
    crate::policy::ruleset::LocalPod,
    Option<String>,
) {
    let key = crate::policy::ObjectKey::new(&spec.namespace, &spec.name);
    let local = crate::policy::ruleset::LocalPod {
        ifname: terway_datapath::names::host_veth_name(&spec.namespace, &spec.name, &spec.ifname),
        ips,
    };
    let unpoliced = match spec.mode {
        Mode::Veth => None,
        Mode::ExclusiveEni => Some("it holds an exclusive ENI, whose traffic never crosses the host".to_owned()),
        Mode::Ipvlan => {
            Some("it is wired with ipvlan, whose traffic to pods on its ENI never crosses the host".to_owned())
        }
    };
    (key, local, unpoliced)
}
