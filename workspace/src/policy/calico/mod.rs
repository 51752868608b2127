//! Calico's policies on the same engine as Kubernetes': `NetworkPolicy`
//! (namespaced) and `GlobalNetworkPolicy` (cluster-wide) from Calico's API.
//!
//! Semantics, as Calico defines them for its default tier: the policies that
//! apply to a pod in a direction are taken in `order` (lower first; no order
//! is last; ties by name). Kubernetes NetworkPolicies take part at order
//! 1000 with Allow rules, as Calico converts them. Within a policy, rules are
//! taken in order: the first whose match holds decides with its action —
//! Allow, Deny, or Pass (skip the rest of the tier: with one tier, the pod's
//! namespace profile then allows) — while Log records and goes on. A pod
//! that some policy applies to and no rule decided for is denied.
//!
//! - [`selector`]: the selector language; [`model`]: the policy objects.
//! - Here: the ordered list of policies for a pod, and the match of one rule
//!   against a packet (the evaluator); `ruleset` compiles the same list.

pub mod model;
pub mod selector;

use super::model::{ClusterState, Direction, Labels, ObjectKey, PodInfo, Policy, Protocol};
use model::{CalicoPolicy, CalicoRule, EntityRule, IpProtocol, PortSpec, ServiceAccountMatch, KUBERNETES_ORDER};
use selector::Selector;
use std::net::IpAddr;

/// A policy taking part in a pod's ordered list.
#[derive(Debug, Clone, Copy)]
pub enum Ordered<'a> {
    Kubernetes(&'a Policy),
    Calico(&'a CalicoPolicy),
}

impl Ordered<'_> {
    /// How explain names it.
    pub fn id(&self) -> String {
        match self {
            Self::Kubernetes(p) => p.key.to_string(),
            Self::Calico(p) => p.id(),
        }
    }

    /// Calico's sort key: order (none is last), then name. Kubernetes
    /// policies sort as Calico names them, `knp.default.<name>`.
    fn sort_key(&self) -> (f64, String) {
        match self {
            Self::Kubernetes(p) => (KUBERNETES_ORDER, format!("knp.default.{}", p.key.name)),
            Self::Calico(p) => (p.order.unwrap_or(f64::INFINITY), p.name.clone()),
        }
    }
}

/// Which pods an entity rule's selectors name, with the policy's namespace
/// scope resolved: a set's worth of pods, independent of the subject.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EndpointMatch {
    /// Only pods in this namespace (a namespaced policy without a
    /// `namespaceSelector` in the rule).
    pub namespace: Option<String>,
    pub namespace_selector: Option<Selector>,
    pub selector: Option<Selector>,
    pub service_accounts: Option<ServiceAccountMatch>,
}

impl EndpointMatch {
    /// The positive selectors of `entity` (`negated`: its `notSelector`).
    pub fn of(entity: &EntityRule, policy_namespace: Option<&str>, negated: bool) -> Self {
        Self {
            namespace: match entity.namespace_selector {
                Some(_) => None,
                None => policy_namespace.map(str::to_owned),
            },
            namespace_selector: entity.namespace_selector.clone(),
            selector: if negated {
                entity.not_selector.clone()
            } else {
                entity.selector.clone()
            },
            service_accounts: if negated { None } else { entity.service_accounts.clone() },
        }
    }

    pub fn matches_pod(&self, state: &ClusterState, key: &ObjectKey, pod: &PodInfo) -> bool {
        if pod.host_network {
            return false; // a host endpoint, not a workload
        }
        if self.namespace.as_ref().is_some_and(|ns| *ns != key.namespace) {
            return false;
        }
        if let Some(sel) = &self.namespace_selector {
            let labels = state.namespace_labels(&key.namespace).cloned().unwrap_or_default();
            if !sel.matches(&model::namespace_labels(&key.namespace, &labels)) {
                return false;
            }
        }
        if let Some(sa) = &self.service_accounts {
            if !sa.names.is_empty() && !sa.names.contains(&pod.service_account) {
                return false;
            }
            if let Some(sel) = &sa.selector {
                let labels = state.service_account_labels(&key.namespace, &pod.service_account);
                if !sel.matches(&labels) {
                    return false;
                }
            }
        }
        self.selector.as_ref().is_none_or(|sel| {
            sel.matches(&model::endpoint_labels(
                &key.namespace,
                &pod.labels,
                &pod.service_account,
            ))
        })
    }
}

/// A packet as the evaluator sees it.
#[derive(Debug, Clone, Copy)]
pub struct Packet {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub protocol: Protocol,
    /// Destination port; for ICMP, the type (code 0).
    pub port: u16,
}

impl Packet {
    pub fn ip_protocol(&self) -> IpProtocol {
        match self.protocol {
            Protocol::Tcp => IpProtocol::TCP,
            Protocol::Udp => IpProtocol::UDP,
            Protocol::Sctp => IpProtocol::SCTP,
            Protocol::Icmp if self.src.is_ipv6() => IpProtocol::ICMPV6,
            Protocol::Icmp => IpProtocol::ICMP,
        }
    }
}

impl ClusterState {
    pub fn service_account_labels(&self, ns: &str, name: &str) -> Labels {
        self.service_accounts
            .get(&ObjectKey::new(ns, name))
            .cloned()
            .unwrap_or_default()
    }

    /// The policies that apply to a pod in `direction`, in Calico's order:
    /// Kubernetes policies of its namespace whose podSelector matches, Calico
    /// policies whose selectors do (those with problems are refused whole).
    /// None for a hostNetwork pod: it is its node.
    pub fn ordered_policies<'a>(&'a self, key: &ObjectKey, pod: &PodInfo, direction: Direction) -> Vec<Ordered<'a>> {
        if pod.host_network {
            return Vec::new();
        }
        let mut out: Vec<Ordered<'a>> = self
            .policies
            .range(ObjectKey::new(&key.namespace, "")..)
            .take_while(|(k, _)| k.namespace == key.namespace)
            .map(|(_, p)| p)
            .filter(|p| p.pod_selector.matches(&pod.labels) && p.rules(direction).is_some())
            .map(Ordered::Kubernetes)
            .collect();
        if !self.calico.is_empty() {
            let labels = model::endpoint_labels(&key.namespace, &pod.labels, &pod.service_account);
            let ns_labels = self
                .namespace_labels(&key.namespace)
                .map(|l| model::namespace_labels(&key.namespace, l));
            let sa_labels = self.service_account_labels(&key.namespace, &pod.service_account);
            out.extend(
                self.calico
                    .values()
                    .filter(|p| p.problems.is_empty() && p.rules(direction).is_some())
                    .filter(|p| p.applies_to(&key.namespace, &labels, ns_labels.as_ref(), Some(&sa_labels)))
                    .map(Ordered::Calico),
            );
            out.sort_by(|a, b| {
                let (x, y) = (a.sort_key(), b.sort_key());
                x.0.total_cmp(&y.0).then_with(|| x.1.cmp(&y.1))
            });
        }
        out
    }
}

impl CalicoPolicy {
    pub fn rules(&self, direction: Direction) -> Option<&[CalicoRule]> {
        match direction {
            Direction::Ingress => self.ingress.as_deref(),
            Direction::Egress => self.egress.as_deref(),
        }
    }
}

/// Does a Calico rule match a packet? `subject` is the pod the policy applies to.
pub fn rule_matches(state: &ClusterState, policy: &CalicoPolicy, rule: &CalicoRule, packet: &Packet) -> bool {
    let family_ok = match rule.ip_version {
        Some(4) => packet.src.is_ipv4(),
        Some(6) => packet.src.is_ipv6(),
        _ => true,
    };
    let proto = packet.ip_protocol();
    let icmp_type = (packet.protocol == Protocol::Icmp).then_some(packet.port);
    let icmp_ok = |m: &model::Icmp| icmp_type.is_some_and(|t| u16::from(m.kind) == t && m.code.is_none_or(|c| c == 0));
    family_ok
        && rule.protocol.is_none_or(|p| p == proto)
        && rule.not_protocol.is_none_or(|p| p != proto)
        && rule.icmp.as_ref().is_none_or(icmp_ok)
        && rule.not_icmp.as_ref().is_none_or(|m| !icmp_ok(m))
        && entity_matches(state, policy, &rule.source, packet.src, None, proto)
        && entity_matches(state, policy, &rule.destination, packet.dst, Some(packet.port), proto)
}

/// One side of a packet against an entity rule; `port` only on the
/// destination side (the evaluator's packets carry no source port).
fn entity_matches(
    state: &ClusterState,
    policy: &CalicoPolicy,
    entity: &EntityRule,
    ip: IpAddr,
    port: Option<u16>,
    proto: IpProtocol,
) -> bool {
    if !entity.nets.is_empty() && !entity.nets.iter().any(|n| n.contains(&ip)) {
        return false;
    }
    if entity.not_nets.iter().any(|n| n.contains(&ip)) {
        return false;
    }
    let pod = state
        .pods_at(ip)
        .find(|(_, p)| !p.host_network)
        .map(|(k, p)| (k.clone(), p));
    let ns = policy.namespace.as_deref();
    if entity.selects_endpoints() {
        let wanted = EndpointMatch::of(entity, ns, false);
        if !pod.as_ref().is_some_and(|(k, p)| wanted.matches_pod(state, k, p)) {
            return false;
        }
    }
    if entity.not_selector.is_some() {
        let unwanted = EndpointMatch::of(entity, ns, true);
        if pod.as_ref().is_some_and(|(k, p)| unwanted.matches_pod(state, k, p)) {
            return false;
        }
    }
    let port_in = |specs: &[PortSpec], port: u16| {
        specs.iter().any(|s| match s {
            PortSpec::Range(a, b) => (*a..=*b).contains(&port),
            PortSpec::Named(name) => {
                pod.as_ref()
                    .and_then(|(_, p)| Protocol::of_ip(proto).and_then(|pr| p.resolve(name, pr)))
                    == Some(port)
            }
        })
    };
    match port {
        // the evaluator's packets have no source port: a source port match cannot hold
        None => entity.ports.is_empty(),
        Some(port) => {
            (entity.ports.is_empty() || port_in(&entity.ports, port))
                && (entity.not_ports.is_empty() || !port_in(&entity.not_ports, port))
        }
    }
}

impl Protocol {
    /// The port-carrying protocol of an IP protocol number, if it is one.
    pub fn of_ip(p: IpProtocol) -> Option<Self> {
        match p {
            IpProtocol::TCP => Some(Self::Tcp),
            IpProtocol::UDP => Some(Self::Udp),
            IpProtocol::SCTP => Some(Self::Sctp),
            _ => None,
        }
    }
}
