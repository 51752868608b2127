//! The evaluator: would a connection pass, and which policy and rule decided.
//! `terway-cli policy explain` prints it; the rule generator ([`super::nft`])
//! is built on the same predicates ([`peer_matches`], [`port_matches`]), and
//! the tests check the two agree packet by packet.

use super::calico::model::Action;
use super::calico::{rule_matches, Ordered, Packet};
use super::model::{block_contains, ClusterState, Direction, ObjectKey, Peer, PodInfo, PortMatch, Protocol, Rule};
use serde::Serialize;
use std::net::IpAddr;

/// One side of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// A pod with its own address.
    Pod(ObjectKey, IpAddr),
    /// A node's address (hostNetwork pods live here); `node` when known.
    Host(Option<String>, IpAddr),
    /// Anything else.
    External(IpAddr),
}

impl Endpoint {
    pub fn ip(&self) -> IpAddr {
        match self {
            Self::Pod(_, ip) | Self::Host(_, ip) | Self::External(ip) => *ip,
        }
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Pod(k, ip) => write!(f, "pod {k} ({ip})"),
            Self::Host(Some(n), ip) => write!(f, "node {n} ({ip})"),
            Self::Host(None, ip) => write!(f, "node address {ip}"),
            Self::External(ip) => write!(f, "{ip} (outside the cluster's pods)"),
        }
    }
}

impl ClusterState {
    /// What an address is: a pod's, a node's, or neither.
    pub fn endpoint_at(&self, ip: IpAddr) -> Endpoint {
        let mut host = None;
        for (k, p) in self.pods_at(ip) {
            if !p.host_network {
                return Endpoint::Pod(k.clone(), ip);
            }
            host = Some(Some(p.node.clone()));
        }
        if host.is_none() {
            host = self
                .pods
                .values()
                .find(|p| p.host_ip == Some(ip))
                .map(|p| Some(p.node.clone()));
        }
        match host {
            Some(node) => Endpoint::Host(node, ip),
            None => Endpoint::External(ip),
        }
    }

    /// A pod by key, as an endpoint at its first address of `family_of` (or its first).
    pub fn endpoint_of_pod(&self, key: &ObjectKey, family_of: Option<IpAddr>) -> Option<Endpoint> {
        let pod = self.pods.get(key)?;
        let ip = pod
            .ips
            .iter()
            .find(|ip| family_of.is_none_or(|f| f.is_ipv4() == ip.is_ipv4()))
            .or(pod.ips.first())?;
        Some(if pod.host_network {
            Endpoint::Host(Some(pod.node.clone()), *ip)
        } else {
            Endpoint::Pod(key.clone(), *ip)
        })
    }

    fn node_of<'a>(&'a self, e: &'a Endpoint) -> Option<&'a str> {
        match e {
            Endpoint::Pod(k, _) => self.pods.get(k).map(|p| p.node.as_str()),
            Endpoint::Host(n, _) => n.as_deref(),
            Endpoint::External(_) => None,
        }
    }
}

/// Does the remote address of a connection match a rule's peer?
pub fn peer_matches(state: &ClusterState, peer: &Peer, ip: IpAddr) -> bool {
    match peer {
        Peer::Block { cidr, except } => block_contains(cidr, except, ip),
        Peer::Pods { .. } => state.pods_at(ip).any(|(k, p)| state.pod_in_peer(peer, &k.namespace, p)),
        Peer::Nothing => false,
    }
}

/// Does a destination port match one of a rule's ports? Named ports resolve
/// on the destination: `dst` is the pod (or pods, for a node address) at the
/// destination address.
pub fn port_matches(
    state: &ClusterState,
    ports: &PortMatch,
    dst_ip: IpAddr,
    dst_pod: Option<&PodInfo>,
    protocol: Protocol,
    port: u16,
) -> bool {
    match ports {
        PortMatch::All(p) => *p == protocol,
        PortMatch::Range(p, from, to) => *p == protocol && (*from..=*to).contains(&port),
        PortMatch::Named(p, name) => {
            *p == protocol
                && match dst_pod {
                    Some(pod) => pod.resolve(name, protocol) == Some(port),
                    None => state
                        .pods_at(dst_ip)
                        .any(|(_, pod)| pod.resolve(name, protocol) == Some(port)),
                }
        }
        PortMatch::Nothing => false,
    }
}

/// Which rule of which policy, and what it did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuleRef {
    pub policy: String,
    /// Index into the policy's `ingress` or `egress` list.
    pub rule: usize,
    /// `Allow` (every Kubernetes rule), `Deny` or `Pass` (Calico).
    pub action: Action,
}

/// The verdict of one direction (the destination's ingress, or the source's egress).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SideVerdict {
    pub allowed: bool,
    /// Some policy selects the pod for this direction.
    pub isolated: bool,
    /// The policies isolating the pod in this direction.
    pub policies: Vec<String>,
    /// The rule that allowed the connection (policies in Calico's order,
    /// rules in order), or the Calico rule that denied it.
    pub allowed_by: Option<RuleRef>,
    pub denied_by: Option<RuleRef>,
    /// Calico `Log` rules the packet matched on the way.
    pub logged_by: Vec<RuleRef>,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verdict {
    pub allowed: bool,
    pub from: String,
    pub to: String,
    pub protocol: Protocol,
    pub port: u16,
    pub ingress: SideVerdict,
    pub egress: SideVerdict,
}

fn open(reason: impl Into<String>) -> SideVerdict {
    SideVerdict {
        allowed: true,
        isolated: false,
        policies: Vec::new(),
        allowed_by: None,
        denied_by: None,
        logged_by: Vec::new(),
        reason: reason.into(),
    }
}

/// Would a new connection from `from` to `to` on `protocol`/`port` pass?
pub fn explain(state: &ClusterState, from: &Endpoint, to: &Endpoint, protocol: Protocol, port: u16) -> Verdict {
    let same_node = |pod_side: &Endpoint, host_side: &Endpoint| {
        matches!(pod_side, Endpoint::Pod(..))
            && matches!(host_side, Endpoint::Host(..))
            && state.node_of(pod_side).is_some()
            && state.node_of(pod_side) == state.node_of(host_side)
    };
    let (mut ingress, mut egress) = if matches!((from, to), (Endpoint::Pod(a, _), Endpoint::Pod(b, _)) if a == b) {
        let why = "traffic from a pod to itself never leaves it";
        (open(why), open(why))
    } else if same_node(to, from) || same_node(from, to) {
        let why = "traffic between a pod and its own node always passes";
        (open(why), open(why))
    } else {
        (
            side(state, Direction::Ingress, to, from, to, protocol, port),
            side(state, Direction::Egress, from, to, to, protocol, port),
        )
    };
    if !ingress.isolated && ingress.reason.is_empty() {
        ingress.reason = format!("no policy isolates {to} for ingress");
    }
    if !egress.isolated && egress.reason.is_empty() {
        egress.reason = format!("no policy isolates {from} for egress");
    }
    Verdict {
        allowed: ingress.allowed && egress.allowed,
        from: from.to_string(),
        to: to.to_string(),
        protocol,
        port,
        ingress,
        egress,
    }
}

/// One direction: `subject` is the pod whose policies apply, `remote` the other end.
fn side(
    state: &ClusterState,
    direction: Direction,
    subject: &Endpoint,
    remote: &Endpoint,
    dst: &Endpoint,
    protocol: Protocol,
    port: u16,
) -> SideVerdict {
    let Endpoint::Pod(key, _) = subject else {
        return open("");
    };
    let Some(pod) = state.pods.get(key) else {
        return open("");
    };
    let dst_pod = match dst {
        Endpoint::Pod(k, _) => state.pods.get(k),
        _ => None,
    };
    let packet = match direction {
        Direction::Ingress => Packet {
            src: remote.ip(),
            dst: subject.ip(),
            protocol,
            port,
        },
        Direction::Egress => Packet {
            src: subject.ip(),
            dst: remote.ip(),
            protocol,
            port,
        },
    };
    let ordered = state.ordered_policies(key, pod, direction);
    if ordered.is_empty() {
        return open("");
    }
    let policies: Vec<String> = ordered.iter().map(Ordered::id).collect();
    let mut logged_by = Vec::new();
    let mut decided = None;
    'policies: for policy in &ordered {
        match policy {
            Ordered::Kubernetes(p) => {
                let rules = p.rules(direction).unwrap_or_default();
                if let Some(i) = rules
                    .iter()
                    .position(|r| rule_allows(state, r, remote.ip(), dst.ip(), dst_pod, protocol, port))
                {
                    decided = Some(RuleRef {
                        policy: policy.id(),
                        rule: i,
                        action: Action::Allow,
                    });
                    break 'policies;
                }
            }
            Ordered::Calico(p) => {
                for (i, rule) in p.rules(direction).unwrap_or_default().iter().enumerate() {
                    if !rule_matches(state, p, rule, &packet) {
                        continue;
                    }
                    let r = RuleRef {
                        policy: policy.id(),
                        rule: i,
                        action: rule.action,
                    };
                    if rule.action == Action::Log {
                        logged_by.push(r);
                        continue;
                    }
                    decided = Some(r);
                    break 'policies;
                }
            }
        }
    }
    let (allowed, reason) = match &decided {
        Some(r) if r.action == Action::Pass => (
            true,
            format!(
                "{} {direction}[{}] passes (no later tier: the namespace profile allows)",
                r.policy, r.rule
            ),
        ),
        Some(r) if r.action == Action::Deny => (false, format!("denied by {} {direction}[{}]", r.policy, r.rule)),
        Some(r) => (true, format!("allowed by {} {direction}[{}]", r.policy, r.rule)),
        None => (
            false,
            format!(
                "{subject} is isolated for {direction} by {} and no rule allows this",
                policies.join(", ")
            ),
        ),
    };
    let (allowed_by, denied_by) = match decided {
        Some(r) if r.action == Action::Deny => (None, Some(r)),
        other => (other, None),
    };
    SideVerdict {
        allowed,
        isolated: true,
        policies,
        allowed_by,
        denied_by,
        logged_by,
        reason,
    }
}

pub fn rule_allows(
    state: &ClusterState,
    rule: &Rule,
    remote: IpAddr,
    dst_ip: IpAddr,
    dst_pod: Option<&PodInfo>,
    protocol: Protocol,
    port: u16,
) -> bool {
    let peer_ok = rule
        .peers
        .as_ref()
        .is_none_or(|peers| peers.iter().any(|p| peer_matches(state, p, remote)));
    let port_ok = rule.ports.as_ref().is_none_or(|ports| {
        ports
            .iter()
            .any(|p| port_matches(state, p, dst_ip, dst_pod, protocol, port))
    });
    peer_ok && port_ok
}

/// An endpoint as a user names it: `namespace/pod`, or an address.
pub fn resolve(state: &ClusterState, what: &str) -> Result<Endpoint, String> {
    if let Ok(ip) = what.parse::<IpAddr>() {
        return Ok(state.endpoint_at(ip));
    }
    let key = ObjectKey::parse(what).ok_or_else(|| format!("{what:?} is neither NAMESPACE/POD nor an IP address"))?;
    match state.pods.get(&key) {
        None => Err(format!("no pod {key} is known")),
        Some(p) if p.ips.is_empty() => Err(format!("pod {key} has no address yet (status.podIPs is empty)")),
        Some(_) => state
            .endpoint_of_pod(&key, None)
            .ok_or_else(|| format!("pod {key} has no address")),
    }
}

/// [`explain`] for endpoints and a protocol as a user writes them.
pub fn explain_query(state: &ClusterState, from: &str, to: &str, port: u16, protocol: &str) -> Result<Verdict, String> {
    let protocol = match Protocol::parse(protocol) {
        Some(p) => p,
        None if protocol.eq_ignore_ascii_case("ICMP") => Protocol::Icmp,
        None => {
            return Err(format!(
                "protocol {protocol:?} is not TCP, UDP, SCTP or ICMP (its port: the ICMP type)"
            ))
        }
    };
    let from = resolve(state, from)?;
    let mut to = resolve(state, to)?;
    // a dual-stack pod: compare within the source's family
    if let Endpoint::Pod(key, ip) = &to {
        if ip.is_ipv4() != from.ip().is_ipv4() {
            if let Some(e) = state.endpoint_of_pod(key, Some(from.ip())) {
                to = e;
            }
        }
    }
    Ok(explain(state, &from, &to, protocol, port))
}
