//! What policy needs of the cluster, trimmed from the Kubernetes objects:
//! namespaces (labels), pods (labels, addresses, node, named ports) and
//! NetworkPolicies parsed once into [`Policy`]. The watches, the offline
//! YAML loader and the tests all build these from the same conversions.

use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1 as netv1;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

pub type Labels = BTreeMap<String, String>;

/// `namespace/name` of a pod or a policy.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    pub fn new(namespace: &str, name: &str) -> Self {
        Self {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        }
    }

    /// `ns/name`.
    pub fn parse(s: &str) -> Option<Self> {
        let (ns, name) = s.split_once('/')?;
        (!ns.is_empty() && !name.is_empty() && !name.contains('/')).then(|| Self::new(ns, name))
    }
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
    /// Only in Calico rules and explain queries (the port is the ICMP type).
    Icmp,
}

impl Protocol {
    /// As Kubernetes spells it (`TCP`); `None` for anything else.
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_uppercase().as_str() {
            "TCP" => Some(Self::Tcp),
            "UDP" => Some(Self::Udp),
            "SCTP" => Some(Self::Sctp),
            _ => None,
        }
    }

    /// As nftables spells it.
    pub fn nft(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
            Self::Sctp => "sctp",
            Self::Icmp => "icmp",
        }
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Tcp => "TCP",
            Self::Udp => "UDP",
            Self::Sctp => "SCTP",
            Self::Icmp => "ICMP",
        })
    }
}

/// A named container port (`ports[].name`), what named policy ports resolve to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NamedPort {
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
}

/// A pod, as policy sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodInfo {
    pub labels: Labels,
    /// `status.podIPs` (a hostNetwork pod's are its node's).
    pub ips: Vec<IpAddr>,
    pub node: String,
    pub host_network: bool,
    /// `status.hostIP`: the node's address.
    pub host_ip: Option<IpAddr>,
    pub ports: Vec<NamedPort>,
    /// `spec.serviceAccountName` (Calico's serviceAccount matches).
    pub service_account: String,
}

impl PodInfo {
    /// `None` for a pod that has finished (its address may belong to another pod soon).
    pub fn from_k8s(pod: &Pod) -> Option<(ObjectKey, Self)> {
        let key = ObjectKey::new(pod.metadata.namespace.as_deref()?, pod.metadata.name.as_deref()?);
        let status = pod.status.as_ref();
        if matches!(status.and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed")) {
            return None;
        }
        let mut ips: Vec<IpAddr> = status
            .and_then(|s| s.pod_ips.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|p| p.ip.parse().ok())
            .collect();
        if ips.is_empty() {
            ips.extend(
                status
                    .and_then(|s| s.pod_ip.as_deref())
                    .and_then(|ip| ip.parse::<IpAddr>().ok()),
            );
        }
        let spec = pod.spec.as_ref();
        let ports = spec
            .into_iter()
            .flat_map(|s| s.containers.iter())
            .flat_map(|c| c.ports.iter().flatten())
            .filter_map(|p| {
                Some(NamedPort {
                    name: p.name.clone()?,
                    protocol: Protocol::parse(p.protocol.as_deref().unwrap_or("TCP"))?,
                    port: u16::try_from(p.container_port).ok()?,
                })
            })
            .collect();
        Some((
            key,
            Self {
                labels: pod.metadata.labels.clone().unwrap_or_default(),
                ips,
                node: spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
                host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
                host_ip: status.and_then(|s| s.host_ip.as_deref()).and_then(|ip| ip.parse().ok()),
                ports,
                service_account: spec
                    .and_then(|s| s.service_account_name.clone())
                    .unwrap_or_else(|| "default".into()),
            },
        ))
    }

    /// The port a named port resolves to on this pod.
    pub fn resolve(&self, name: &str, protocol: Protocol) -> Option<u16> {
        self.ports
            .iter()
            .find(|p| p.name == name && p.protocol == protocol)
            .map(|p| p.port)
    }
}

pub fn namespace_from_k8s(ns: &Namespace) -> Option<(String, Labels)> {
    let name = ns.metadata.name.clone()?;
    let mut labels = ns.metadata.labels.clone().unwrap_or_default();
    // the API server sets this label on every namespace (1.21+); selectors rely on it
    labels
        .entry("kubernetes.io/metadata.name".into())
        .or_insert_with(|| name.clone());
    Some((name, labels))
}

/// A label selector, validated.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Selector {
    pub match_labels: Labels,
    pub expressions: Vec<Requirement>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Requirement {
    In(String, BTreeSet<String>),
    NotIn(String, BTreeSet<String>),
    Exists(String),
    DoesNotExist(String),
    /// An operator the API does not define: matches nothing (fail closed).
    Invalid(String),
}

impl Selector {
    fn from_k8s(s: &LabelSelector, field: &str, problems: &mut Vec<String>) -> Self {
        let expressions = s
            .match_expressions
            .iter()
            .flatten()
            .enumerate()
            .map(|(i, e)| {
                let values: BTreeSet<String> = e.values.iter().flatten().cloned().collect();
                match e.operator.as_str() {
                    "In" => Requirement::In(e.key.clone(), values),
                    "NotIn" => Requirement::NotIn(e.key.clone(), values),
                    "Exists" => Requirement::Exists(e.key.clone()),
                    "DoesNotExist" => Requirement::DoesNotExist(e.key.clone()),
                    other => {
                        problems.push(format!(
                            "{field}.matchExpressions[{i}].operator {other:?} is not In, NotIn, Exists or DoesNotExist; the selector matches nothing"
                        ));
                        Requirement::Invalid(other.to_owned())
                    }
                }
            })
            .collect();
        Self {
            match_labels: s.match_labels.clone().unwrap_or_default(),
            expressions,
        }
    }

    pub fn matches(&self, labels: &Labels) -> bool {
        self.match_labels.iter().all(|(k, v)| labels.get(k) == Some(v))
            && self.expressions.iter().all(|r| match r {
                Requirement::In(k, vs) => labels.get(k).is_some_and(|v| vs.contains(v)),
                Requirement::NotIn(k, vs) => labels.get(k).is_none_or(|v| !vs.contains(v)),
                Requirement::Exists(k) => labels.contains_key(k),
                Requirement::DoesNotExist(k) => !labels.contains_key(k),
                Requirement::Invalid(_) => false,
            })
    }
}

impl std::fmt::Display for Selector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts: Vec<String> = self.match_labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        for r in &self.expressions {
            parts.push(match r {
                Requirement::In(k, vs) => format!("{k} in ({})", vs.iter().cloned().collect::<Vec<_>>().join(",")),
                Requirement::NotIn(k, vs) => {
                    format!("{k} notin ({})", vs.iter().cloned().collect::<Vec<_>>().join(","))
                }
                Requirement::Exists(k) => k.clone(),
                Requirement::DoesNotExist(k) => format!("!{k}"),
                Requirement::Invalid(op) => format!("<invalid operator {op}>"),
            });
        }
        if parts.is_empty() {
            f.write_str("{}")
        } else {
            f.write_str(&parts.join(","))
        }
    }
}

/// Which namespaces a pod peer looks in.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NamespaceScope {
    /// The policy's own namespace (a peer with only a podSelector).
    Own(String),
    /// Namespaces matching the selector.
    Selected(Selector),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Peer {
    Pods {
        namespaces: NamespaceScope,
        pods: Selector,
    },
    /// `ipBlock`: the CIDR minus the excepts, as inclusive ranges of one family.
    Block {
        cidr: IpNet,
        except: Vec<IpNet>,
    },
    /// A peer the policy could not express (no selector and no ipBlock, a bad CIDR): matches nothing.
    Nothing,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PortMatch {
    /// Every port of the protocol.
    All(Protocol),
    /// `port` to `endPort` inclusive.
    Range(Protocol, u16, u16),
    /// A container port name, resolved on the destination pod.
    Named(Protocol, String),
    /// Could not be expressed: matches nothing.
    Nothing,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// `None`: every peer (the field is absent or empty).
    pub peers: Option<Vec<Peer>>,
    /// `None`: every port and protocol.
    pub ports: Option<Vec<PortMatch>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Ingress,
    Egress,
}

impl std::fmt::Display for Direction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Ingress => "ingress",
            Self::Egress => "egress",
        })
    }
}

/// A NetworkPolicy, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub key: ObjectKey,
    pub pod_selector: Selector,
    /// `Some` when the policy isolates its pods for ingress (policyTypes).
    pub ingress: Option<Vec<Rule>>,
    pub egress: Option<Vec<Rule>>,
    /// What could not be enforced as written, naming the field (a Warning Event).
    pub problems: Vec<String>,
}

impl Policy {
    pub fn rules(&self, direction: Direction) -> Option<&[Rule]> {
        match direction {
            Direction::Ingress => self.ingress.as_deref(),
            Direction::Egress => self.egress.as_deref(),
        }
    }

    pub fn from_k8s(np: &netv1::NetworkPolicy) -> Option<Self> {
        let key = ObjectKey::new(np.metadata.namespace.as_deref()?, np.metadata.name.as_deref()?);
        let mut problems = Vec::new();
        let spec = np.spec.clone().unwrap_or_default();
        let pod_selector = Selector::from_k8s(
            &spec.pod_selector.unwrap_or_default(),
            "spec.podSelector",
            &mut problems,
        );
        let ingress_rules = spec.ingress.unwrap_or_default();
        let egress_rules = spec.egress.unwrap_or_default();
        // policyTypes default: Ingress always, Egress when there are egress rules
        let (mut isolates_ingress, mut isolates_egress) = (true, !egress_rules.is_empty());
        if let Some(types) = spec.policy_types.as_ref().filter(|t| !t.is_empty()) {
            isolates_ingress = types.iter().any(|t| t == "Ingress");
            isolates_egress = types.iter().any(|t| t == "Egress");
            for t in types.iter().filter(|t| *t != "Ingress" && *t != "Egress") {
                problems.push(format!(
                    "spec.policyTypes: {t:?} is neither Ingress nor Egress; ignored"
                ));
            }
        }
        let ns = key.namespace.clone();
        let ingress = isolates_ingress.then(|| {
            ingress_rules
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    let field = format!("spec.ingress[{i}]");
                    rule(
                        &ns,
                        r.from.as_deref(),
                        r.ports.as_deref(),
                        &field,
                        "from",
                        &mut problems,
                    )
                })
                .collect()
        });
        let egress = isolates_egress.then(|| {
            egress_rules
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    let field = format!("spec.egress[{i}]");
                    rule(&ns, r.to.as_deref(), r.ports.as_deref(), &field, "to", &mut problems)
                })
                .collect()
        });
        Some(Self {
            key,
            pod_selector,
            ingress,
            egress,
            problems,
        })
    }
}

fn rule(
    ns: &str,
    peers: Option<&[netv1::NetworkPolicyPeer]>,
    ports: Option<&[netv1::NetworkPolicyPort]>,
    field: &str,
    peer_field: &str,
    problems: &mut Vec<String>,
) -> Rule {
    let peers = peers.filter(|p| !p.is_empty()).map(|peers| {
        peers
            .iter()
            .enumerate()
            .map(|(i, p)| peer(ns, p, &format!("{field}.{peer_field}[{i}]"), problems))
            .collect()
    });
    let ports = ports.filter(|p| !p.is_empty()).map(|ports| {
        ports
            .iter()
            .enumerate()
            .map(|(i, p)| port(p, &format!("{field}.ports[{i}]"), problems))
            .collect()
    });
    Rule { peers, ports }
}

fn peer(ns: &str, p: &netv1::NetworkPolicyPeer, field: &str, problems: &mut Vec<String>) -> Peer {
    if let Some(block) = &p.ip_block {
        if p.pod_selector.is_some() || p.namespace_selector.is_some() {
            problems.push(format!(
                "{field}: ipBlock cannot be combined with a selector; the peer matches nothing"
            ));
            return Peer::Nothing;
        }
        let Ok(cidr) = block.cidr.parse::<IpNet>() else {
            problems.push(format!(
                "{field}.ipBlock.cidr {:?} is not a CIDR; the peer matches nothing",
                block.cidr
            ));
            return Peer::Nothing;
        };
        let mut except = Vec::new();
        for (j, e) in block.except.iter().flatten().enumerate() {
            match e.parse::<IpNet>() {
                Ok(net) if net.addr().is_ipv4() == cidr.addr().is_ipv4() => except.push(net.trunc()),
                _ => problems.push(format!(
                    "{field}.ipBlock.except[{j}] {e:?} is not a CIDR of the block's family; ignored"
                )),
            }
        }
        return Peer::Block {
            cidr: cidr.trunc(),
            except,
        };
    }
    let pods = p
        .pod_selector
        .as_ref()
        .map(|s| Selector::from_k8s(s, &format!("{field}.podSelector"), problems));
    let namespaces = p
        .namespace_selector
        .as_ref()
        .map(|s| Selector::from_k8s(s, &format!("{field}.namespaceSelector"), problems));
    match (pods, namespaces) {
        (None, None) => {
            problems.push(format!(
                "{field}: a peer needs podSelector, namespaceSelector or ipBlock; it matches nothing"
            ));
            Peer::Nothing
        }
        (pods, Some(namespaces)) => Peer::Pods {
            namespaces: NamespaceScope::Selected(namespaces),
            pods: pods.unwrap_or_default(),
        },
        (Some(pods), None) => Peer::Pods {
            namespaces: NamespaceScope::Own(ns.to_owned()),
            pods,
        },
    }
}

fn port(p: &netv1::NetworkPolicyPort, field: &str, problems: &mut Vec<String>) -> PortMatch {
    let proto_name = p.protocol.as_deref().unwrap_or("TCP");
    let Some(protocol) = Protocol::parse(proto_name) else {
        problems.push(format!(
            "{field}.protocol {proto_name:?} is not TCP, UDP or SCTP; the port matches nothing"
        ));
        return PortMatch::Nothing;
    };
    match (&p.port, p.end_port) {
        (None, None) => PortMatch::All(protocol),
        (None, Some(_)) => {
            problems.push(format!(
                "{field}.endPort needs a numeric port; the port matches nothing"
            ));
            PortMatch::Nothing
        }
        (Some(IntOrString::String(name)), None) => match name.parse::<u16>() {
            Ok(n) if n > 0 => PortMatch::Range(protocol, n, n),
            _ => PortMatch::Named(protocol, name.clone()),
        },
        (Some(IntOrString::String(name)), Some(_)) => {
            problems.push(format!(
                "{field}: endPort cannot be used with the named port {name:?}; the port matches nothing"
            ));
            PortMatch::Nothing
        }
        (Some(IntOrString::Int(n)), end) => {
            let end = end.unwrap_or(*n);
            match (u16::try_from(*n), u16::try_from(end)) {
                (Ok(from), Ok(to)) if from >= 1 && from <= to => PortMatch::Range(protocol, from, to),
                _ => {
                    problems.push(format!(
                        "{field}: port {n} to endPort {end} is not a range within 1-65535; the port matches nothing"
                    ));
                    PortMatch::Nothing
                }
            }
        }
    }
}

/// Everything policy knows of the cluster.
#[derive(Debug, Clone, Default)]
pub struct ClusterState {
    pub namespaces: HashMap<String, Labels>,
    pub pods: HashMap<ObjectKey, PodInfo>,
    pub policies: BTreeMap<ObjectKey, Policy>,
    /// Calico NetworkPolicies and GlobalNetworkPolicies (the latter under namespace "").
    pub calico: BTreeMap<ObjectKey, super::calico::model::CalicoPolicy>,
    /// Service account labels (Calico's `serviceAccountSelector`).
    pub service_accounts: HashMap<ObjectKey, Labels>,
}

impl ClusterState {
    pub fn namespace_labels(&self, ns: &str) -> Option<&Labels> {
        self.namespaces.get(ns)
    }

    /// Does `pod` (in `pod_ns`) match a pod peer of a policy?
    pub fn pod_in_peer(&self, peer: &Peer, pod_ns: &str, pod: &PodInfo) -> bool {
        match peer {
            Peer::Pods { namespaces, pods } => {
                let ns_ok = match namespaces {
                    NamespaceScope::Own(ns) => ns == pod_ns,
                    NamespaceScope::Selected(sel) => self.namespace_labels(pod_ns).is_some_and(|l| sel.matches(l)),
                };
                ns_ok && pods.matches(&pod.labels)
            }
            Peer::Block { .. } | Peer::Nothing => false,
        }
    }

    /// The pods holding an address (a hostNetwork pod holds its node's).
    pub fn pods_at(&self, ip: IpAddr) -> impl Iterator<Item = (&ObjectKey, &PodInfo)> {
        self.pods.iter().filter(move |(_, p)| p.ips.contains(&ip))
    }
}

/// Inclusive ranges an ipBlock covers: the CIDR minus its excepts, merged.
pub fn block_ranges(cidr: &IpNet, except: &[IpNet]) -> Vec<(IpAddr, IpAddr)> {
    let to_int = |ip: IpAddr| match ip {
        IpAddr::V4(v) => u128::from(u32::from(v)),
        IpAddr::V6(v) => u128::from(v),
    };
    let v4 = cidr.addr().is_ipv4();
    let from_int = |n: u128| {
        if v4 {
            IpAddr::V4(std::net::Ipv4Addr::from(u32::try_from(n).unwrap_or(u32::MAX)))
        } else {
            IpAddr::V6(std::net::Ipv6Addr::from(n))
        }
    };
    let mut ranges = vec![(to_int(cidr.network()), to_int(cidr.broadcast()))];
    for e in except {
        let (es, ee) = (to_int(e.network()), to_int(e.broadcast()));
        ranges = ranges
            .into_iter()
            .flat_map(|(s, t)| {
                let mut out = Vec::new();
                if ee < s || es > t {
                    out.push((s, t));
                } else {
                    if es > s {
                        out.push((s, es - 1));
                    }
                    if ee < t {
                        out.push((ee + 1, t));
                    }
                }
                out
            })
            .collect();
    }
    ranges.into_iter().map(|(s, t)| (from_int(s), from_int(t))).collect()
}

pub fn block_contains(cidr: &IpNet, except: &[IpNet], ip: IpAddr) -> bool {
    cidr.contains(&ip) && !except.iter().any(|e| e.contains(&ip))
}
