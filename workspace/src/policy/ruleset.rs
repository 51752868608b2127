//! The nftables rules policy wants, kept up to date piece by piece, and the
//! script that brings the kernel's table from what it holds to that.
//!
//! Layout of `table inet terway` (only this table is ever touched):
//! - `chain forward` (hook forward): replies of allowed connections pass
//!   (conntrack); a packet from a pod's host-side interface jumps to the
//!   pod's egress chain through the verdict map `egress_pods`, a packet to
//!   one jumps to its ingress chain through `ingress_pods`. Traffic between
//!   a pod and its own node uses the input and output hooks and is never
//!   policed (kubelet probes).
//! - `chain in_<ifname>` / `eg_<ifname>`: one per isolated pod and direction,
//!   the rules of every policy selecting the pod; an allowed egress packet
//!   returns (on to the destination's ingress check), an allowed ingress
//!   packet is accepted, anything else is dropped and counted in the pod's
//!   named counter `drop_<ifname>` (metrics: drops per pod).
//! - `set p…`: the addresses of the pods a peer selector matches, one set per
//!   distinct selector and family; a pod joining a selector is one element.
//!   `set n…`: address . protocol . port of pods with a named port.

use super::calico::model::{Action, CalicoPolicy, CalicoRule, IpProtocol, PortSpec};
use super::calico::{EndpointMatch, Ordered};
use super::evaluate::peer_matches;
use super::model::{block_ranges, ClusterState, Direction, ObjectKey, Peer, PodInfo, PortMatch, Protocol, Rule};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::net::IpAddr;

pub const TABLE: &str = "inet terway";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    fn of(ip: IpAddr) -> Self {
        if ip.is_ipv4() {
            Self::V4
        } else {
            Self::V6
        }
    }
    fn matches(self, ip: &IpAddr) -> bool {
        Self::of(*ip) == self
    }
    fn keyword(self) -> &'static str {
        match self {
            Self::V4 => "ip",
            Self::V6 => "ip6",
        }
    }
    fn addr_type(self) -> &'static str {
        match self {
            Self::V4 => "ipv4_addr",
            Self::V6 => "ipv6_addr",
        }
    }
}

/// What a named set holds.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SetSource {
    /// Addresses of the pods a pod peer matches.
    Peer(Peer, Family),
    /// address . protocol . port of the pods that have the named port, among
    /// the pods at the peer's addresses (`None`: every pod).
    NamedPort(Option<Peer>, Protocol, String, Family),
    /// Addresses of the pods a Calico entity rule's selectors name.
    Calico(EndpointMatch, Family),
    /// address . protocol . port of the pods a Calico entity names (`None`:
    /// every pod) that have the named port.
    CalicoNamedPort(Option<EndpointMatch>, Protocol, String, Family),
}

impl SetSource {
    pub fn name(&self) -> String {
        use sha1::{Digest, Sha1};
        let digest = Sha1::digest(format!("{self:?}").as_bytes());
        let hex: String = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
        let (kind, family) = match self {
            Self::Peer(_, f) => ('p', f),
            Self::NamedPort(_, _, _, f) => ('n', f),
            Self::Calico(_, f) => ('c', f),
            Self::CalicoNamedPort(_, _, _, f) => ('m', f),
        };
        format!("{kind}{hex}_{}", if *family == Family::V4 { 4 } else { 6 })
    }

    fn declaration(&self) -> String {
        match self {
            Self::Peer(_, f) | Self::Calico(_, f) => format!("type {}", f.addr_type()),
            Self::NamedPort(_, _, _, f) | Self::CalicoNamedPort(_, _, _, f) => {
                format!("type {} . inet_proto . inet_service", f.addr_type())
            }
        }
    }

    /// The elements a pod brings to this set.
    pub fn contribution(&self, state: &ClusterState, key: &ObjectKey, pod: &PodInfo) -> Vec<String> {
        match self {
            Self::Peer(peer, family) => addresses_if(pod, *family, state.pod_in_peer(peer, &key.namespace, pod)),
            Self::NamedPort(scope, protocol, name, family) => {
                named_port_elements(pod, *protocol, name, *family, |ip| match scope {
                    None => true,
                    Some(peer @ Peer::Pods { .. }) => state.pod_in_peer(peer, &key.namespace, pod),
                    Some(peer) => peer_matches(state, peer, ip),
                })
            }
            Self::Calico(which, family) => addresses_if(pod, *family, which.matches_pod(state, key, pod)),
            Self::CalicoNamedPort(which, protocol, name, family) => {
                named_port_elements(pod, *protocol, name, *family, |_| {
                    !pod.host_network && which.as_ref().is_none_or(|w| w.matches_pod(state, key, pod))
                })
            }
        }
    }
}

/// A pod's addresses in `family` when it belongs in a set.
fn addresses_if(pod: &PodInfo, family: Family, member: bool) -> Vec<String> {
    if !member {
        return Vec::new();
    }
    pod.ips
        .iter()
        .filter(|ip| family.matches(ip))
        .map(ToString::to_string)
        .collect()
}

/// `address . protocol . port` of a pod that has the named port, for each of
/// its addresses in `family` that `keep` accepts.
fn named_port_elements(
    pod: &PodInfo,
    protocol: Protocol,
    name: &str,
    family: Family,
    keep: impl Fn(IpAddr) -> bool,
) -> Vec<String> {
    let Some(port) = pod.resolve(name, protocol) else {
        return Vec::new();
    };
    pod.ips
        .iter()
        .filter(|ip| family.matches(ip) && keep(**ip))
        .map(|ip| format!("{ip} . {} . {port}", protocol.nft()))
        .collect()
}

/// A named set and who brought which element.
#[derive(Debug, Clone, Default)]
pub struct SetContent {
    members: HashMap<ObjectKey, Vec<String>>,
    counts: BTreeMap<String, u32>,
}

impl SetContent {
    /// Records what `key` brings now; returns whether the elements changed.
    fn put(&mut self, key: &ObjectKey, elements: Vec<String>) -> bool {
        let old = if elements.is_empty() {
            self.members.remove(key).unwrap_or_default()
        } else {
            self.members.insert(key.clone(), elements.clone()).unwrap_or_default()
        };
        if old == elements {
            return false;
        }
        let mut changed = false;
        for e in old {
            if let Some(c) = self.counts.get_mut(&e) {
                *c -= 1;
                if *c == 0 {
                    self.counts.remove(&e);
                    changed = true;
                }
            }
        }
        for e in elements {
            let c = self.counts.entry(e).or_insert(0);
            *c += 1;
            changed |= *c == 1;
        }
        changed
    }

    pub fn elements(&self) -> impl Iterator<Item = &String> {
        self.counts.keys()
    }

    pub fn len(&self) -> usize {
        self.counts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }
}

/// A pod this node wired, whose host-side interface policy hooks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalPod {
    pub ifname: String,
    pub ips: Vec<IpAddr>,
}

/// The rules wanted, as data.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Chains {
    /// chain name → rules
    pub chains: BTreeMap<String, Vec<String>>,
    /// ifname → chain, per direction
    pub ingress: BTreeMap<String, String>,
    pub egress: BTreeMap<String, String>,
    /// The sets the chains use.
    pub sets: BTreeSet<SetSource>,
}

impl Chains {
    pub fn rule_count(&self) -> usize {
        self.chains.values().map(Vec::len).sum()
    }

    /// The drop counters: one per isolated pod, kept by name so that a chain
    /// rewritten after a policy change does not reset its pod's count.
    pub fn counters(&self) -> BTreeSet<String> {
        self.ingress
            .keys()
            .chain(self.egress.keys())
            .map(|i| drop_counter(i))
            .collect()
    }
}

/// The named counter of a pod's dropped packets.
pub fn drop_counter(ifname: &str) -> String {
    format!("drop_{ifname}")
}

/// The chains of every local pod that a policy isolates.
pub fn chains(state: &ClusterState, locals: &BTreeMap<ObjectKey, LocalPod>) -> Chains {
    let mut out = Chains::default();
    for (key, local) in locals {
        let Some(pod) = state.pods.get(key) else { continue };
        for direction in [Direction::Ingress, Direction::Egress] {
            let ordered = state.ordered_policies(key, pod, direction);
            if ordered.is_empty() {
                continue;
            }
            let mut rules = Vec::new();
            for policy in &ordered {
                match policy {
                    Ordered::Kubernetes(p) => {
                        for (i, rule) in p.rules(direction).unwrap_or_default().iter().enumerate() {
                            let comment = format!("{} {direction}[{i}]", p.key);
                            compile_rule(direction, rule, pod, &comment, &mut rules, &mut out.sets);
                        }
                    }
                    Ordered::Calico(p) => {
                        for (i, rule) in p.rules(direction).unwrap_or_default().iter().enumerate() {
                            let at = CalicoAt {
                                state,
                                policy: p,
                                direction,
                                key,
                                pod,
                                ifname: &local.ifname,
                                comment: format!("{} {direction}[{i}]", policy.id()),
                            };
                            compile_calico_rule(&at, rule, &mut rules, &mut out.sets);
                        }
                    }
                }
            }
            rules.push(format!(
                "counter name \"{}\" drop comment \"isolated for {direction}\"",
                drop_counter(&local.ifname)
            ));
            let (prefix, map) = match direction {
                Direction::Ingress => ("in_", &mut out.ingress),
                Direction::Egress => ("eg_", &mut out.egress),
            };
            let chain = format!("{prefix}{}", local.ifname);
            map.insert(local.ifname.clone(), chain.clone());
            out.chains.insert(chain, rules);
        }
    }
    out
}

/// Where a Calico rule is compiled: for which pod, in which policy and direction.
struct CalicoAt<'a> {
    state: &'a ClusterState,
    policy: &'a CalicoPolicy,
    direction: Direction,
    key: &'a ObjectKey,
    pod: &'a PodInfo,
    ifname: &'a str,
    comment: String,
}

/// One Calico rule as nftables rules (one per address family it can
/// match), appended to `out`. The pod's own side of the rule (the
/// destination for ingress, the source for egress) is decided here, against
/// the pod; the remote side becomes matches on the packet.
fn compile_calico_rule(at: &CalicoAt<'_>, rule: &CalicoRule, out: &mut Vec<String>, sets: &mut BTreeSet<SetSource>) {
    let ns = at.policy.namespace.as_deref();
    let (local, remote, raddr, laddr_ports, raddr_ports) = match at.direction {
        Direction::Ingress => (&rule.destination, &rule.source, "saddr", "dport", "sport"),
        Direction::Egress => (&rule.source, &rule.destination, "daddr", "sport", "dport"),
    };
    if local.selects_endpoints() && !EndpointMatch::of(local, ns, false).matches_pod(at.state, at.key, at.pod) {
        return;
    }
    if local.not_selector.is_some() && EndpointMatch::of(local, ns, true).matches_pod(at.state, at.key, at.pod) {
        return;
    }
    let verdict = match (rule.action, at.direction) {
        (Action::Allow | Action::Pass, Direction::Ingress) => "accept".to_owned(),
        (Action::Allow | Action::Pass, Direction::Egress) => "return".to_owned(),
        (Action::Deny, _) => format!("counter name \"{}\" drop", drop_counter(at.ifname)),
        (Action::Log, _) => format!("log prefix \"terway {}: \"", at.comment.replace('"', "")),
    };
    let protocol_name = rule.protocol.and_then(Protocol::of_ip);
    for family in [Family::V4, Family::V6] {
        match (rule.ip_version, rule.protocol) {
            (Some(4), _) | (_, Some(IpProtocol::ICMP)) if family == Family::V6 => continue,
            (Some(6), _) | (_, Some(IpProtocol::ICMPV6)) if family == Family::V4 => continue,
            _ => {}
        }
        let kw = family.keyword();
        let in_family = |nets: &[ipnet::IpNet]| -> Vec<String> {
            nets.iter()
                .filter(|n| Family::of(n.addr()) == family)
                .map(ToString::to_string)
                .collect()
        };
        // the pod's own address against the local side's nets
        let own: Vec<IpAddr> = at.pod.ips.iter().copied().filter(|ip| family.matches(ip)).collect();
        if own.is_empty()
            || (!local.nets.is_empty() && !own.iter().any(|ip| local.nets.iter().any(|n| n.contains(ip))))
            || own.iter().any(|ip| local.not_nets.iter().any(|n| n.contains(ip)))
        {
            continue;
        }
        let mut parts: Vec<String> = Vec::new();
        if !remote.nets.is_empty() {
            let list = in_family(&remote.nets);
            if list.is_empty() {
                continue; // only nets of the other family
            }
            parts.push(format!("{kw} {raddr} {{ {} }}", list.join(", ")));
        }
        let not_nets = in_family(&remote.not_nets);
        if !not_nets.is_empty() {
            parts.push(format!("{kw} {raddr} != {{ {} }}", not_nets.join(", ")));
        }
        if remote.selects_endpoints() {
            let set = SetSource::Calico(EndpointMatch::of(remote, ns, false), family);
            parts.push(format!("{kw} {raddr} @{}", set.name()));
            sets.insert(set);
        }
        if remote.not_selector.is_some() {
            let set = SetSource::Calico(EndpointMatch::of(remote, ns, true), family);
            parts.push(format!("{kw} {raddr} != @{}", set.name()));
            sets.insert(set);
        }
        if let Some(p) = rule.protocol {
            parts.push(format!("meta l4proto {}", p.0));
        }
        if let Some(p) = rule.not_protocol {
            parts.push(format!("meta l4proto != {}", p.0));
        }
        let icmp = if family == Family::V4 { "icmp" } else { "icmpv6" };
        if let Some(m) = rule.icmp {
            parts.push(format!("{icmp} type {}", m.kind));
            if let Some(code) = m.code {
                parts.push(format!("{icmp} code {code}"));
            }
        }
        if let Some(m) = rule.not_icmp {
            parts.push(match m.code {
                None => format!("{icmp} type != {}", m.kind),
                Some(code) => format!("{icmp} type . {icmp} code != {{ {} . {code} }}", m.kind),
            });
        }
        // ports: the local side's resolve on the pod; the remote side's
        // named destination ports are a set over the pods that have them
        let numbered = |specs: &[PortSpec], on: Option<&PodInfo>| -> Vec<String> {
            specs
                .iter()
                .filter_map(|s| match s {
                    PortSpec::Range(a, b) if a == b => Some(a.to_string()),
                    PortSpec::Range(a, b) => Some(format!("{a}-{b}")),
                    PortSpec::Named(name) => protocol_name
                        .and_then(|p| on.and_then(|pod| pod.resolve(name, p)))
                        .map(|p| p.to_string()),
                })
                .collect()
        };
        let mut port_parts = Vec::new();
        for (entity, dir, on) in [(local, laddr_ports, Some(at.pod)), (remote, raddr_ports, None)] {
            if !entity.ports.is_empty() {
                let list = numbered(&entity.ports, on);
                let named_remote = on.is_none() && entity.ports.iter().any(|p| matches!(p, PortSpec::Named(_)));
                if list.is_empty() && !named_remote {
                    port_parts.push(None); // no port of this rule can match
                } else if !list.is_empty() {
                    port_parts.push(Some(format!("th {dir} {{ {} }}", list.join(", "))));
                }
            }
            let not = numbered(&entity.not_ports, on);
            if !not.is_empty() {
                port_parts.push(Some(format!("th {dir} != {{ {} }}", not.join(", "))));
            }
        }
        if port_parts.contains(&None) {
            continue;
        }
        parts.extend(port_parts.into_iter().flatten());
        let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
        // named remote destination ports: one more rule per name, through a set
        let named: Vec<&String> = remote
            .ports
            .iter()
            .filter_map(|p| match p {
                PortSpec::Named(n) if at.direction == Direction::Egress => Some(n),
                _ => None,
            })
            .collect();
        let has_numbered_remote = remote.ports.iter().any(|p| matches!(p, PortSpec::Range(..)));
        if named.is_empty() || has_numbered_remote {
            out.push(join_rule(&refs, &verdict, &at.comment));
        }
        if let Some(proto) = protocol_name {
            for name in named {
                let scope = remote.selects_endpoints().then(|| EndpointMatch::of(remote, ns, false));
                let set = SetSource::CalicoNamedPort(scope, proto, name.clone(), family);
                // the numbered remote ports, if any, are in `parts`: a named port rule stands alone
                let base: Vec<&str> = refs.iter().copied().filter(|p| !p.starts_with("th dport {")).collect();
                let m = format!("{kw} daddr . meta l4proto . th dport @{}", set.name());
                let mut all = base;
                all.push(&m);
                out.push(join_rule(&all, &verdict, &at.comment));
                sets.insert(set);
            }
        }
    }
}

/// One policy rule as nftables rules, appended to `out`.
fn compile_rule(
    direction: Direction,
    rule: &Rule,
    subject: &PodInfo,
    comment: &str,
    out: &mut Vec<String>,
    sets: &mut BTreeSet<SetSource>,
) {
    let (remote, verdict) = match direction {
        Direction::Ingress => ("saddr", "accept"),
        Direction::Egress => ("daddr", "return"),
    };
    // ports: numbered ones go in the rule; named ones resolve on the
    // destination (the subject itself for ingress, a set for egress)
    let mut numbered: BTreeMap<Protocol, Vec<(u16, u16)>> = BTreeMap::new();
    let mut named: Vec<(Protocol, &str)> = Vec::new();
    let ports_given = rule.ports.is_some();
    for p in rule.ports.iter().flatten() {
        match p {
            PortMatch::All(proto) => numbered.entry(*proto).or_default().push((0, u16::MAX)),
            PortMatch::Range(proto, a, b) => numbered.entry(*proto).or_default().push((*a, *b)),
            PortMatch::Named(proto, name) => match direction {
                Direction::Ingress => {
                    if let Some(n) = subject.resolve(name, *proto) {
                        numbered.entry(*proto).or_default().push((n, n));
                    }
                }
                Direction::Egress => named.push((*proto, name)),
            },
            PortMatch::Nothing => {}
        }
    }
    let port_expr = if ports_given {
        if numbered.is_empty() {
            None
        } else {
            Some(port_expression(&numbered))
        }
    } else {
        Some(String::new())
    };
    // the remote side, per peer: every address, a selector's set, or ipBlock ranges
    let groups: Vec<(Option<&Peer>, Vec<String>)> = match &rule.peers {
        None => vec![(None, Vec::new())],
        Some(peers) => peers
            .iter()
            .filter_map(|peer| match peer {
                Peer::Pods { .. } => Some((
                    Some(peer),
                    [Family::V4, Family::V6]
                        .into_iter()
                        .map(|f| {
                            let set = SetSource::Peer(peer.clone(), f);
                            let m = format!("{} {remote} @{}", f.keyword(), set.name());
                            sets.insert(set);
                            m
                        })
                        .collect(),
                )),
                Peer::Block { cidr, except } => {
                    let list: Vec<String> = block_ranges(cidr, except)
                        .iter()
                        .map(|(a, b)| format!("{a}-{b}"))
                        .collect();
                    let f = Family::of(cidr.addr());
                    (!list.is_empty()).then(|| {
                        (
                            Some(peer),
                            vec![format!("{} {remote} {{ {} }}", f.keyword(), list.join(", "))],
                        )
                    })
                }
                Peer::Nothing => None,
            })
            .collect(),
    };
    for (peer, matchers) in groups {
        if let Some(ports) = &port_expr {
            if peer.is_none() {
                out.push(join_rule(&[ports], verdict, comment));
            }
            for m in &matchers {
                out.push(join_rule(&[m, ports], verdict, comment));
            }
        }
        // named egress ports resolve on the destination: a set of address .
        // protocol . port over the pods the peer matches (or every pod)
        for (proto, name) in &named {
            let families: Vec<Family> = match peer {
                Some(Peer::Block { cidr, .. }) => vec![Family::of(cidr.addr())],
                _ => vec![Family::V4, Family::V6],
            };
            for f in families {
                let set = SetSource::NamedPort(peer.cloned(), *proto, (*name).to_owned(), f);
                let m = format!("{} daddr . meta l4proto . th dport @{}", f.keyword(), set.name());
                out.push(join_rule(&[&m], verdict, comment));
                sets.insert(set);
            }
        }
    }
}

fn join_rule(parts: &[&str], verdict: &str, comment: &str) -> String {
    let mut s = String::new();
    for p in parts.iter().filter(|p| !p.is_empty()) {
        s.push_str(p);
        s.push(' ');
    }
    let _ = write!(s, "{verdict} comment \"{comment}\"");
    s
}

/// `meta l4proto . th dport { tcp . 80, udp . 1000-2000 }`, ranges merged
/// per protocol; one item is matched without an anonymous set (each such set
/// is one more object nft fetches before every later transaction).
fn port_expression(ports: &BTreeMap<Protocol, Vec<(u16, u16)>>) -> String {
    let mut items = Vec::new();
    let mut single = None;
    for (proto, ranges) in ports {
        let mut ranges = ranges.clone();
        ranges.sort_unstable();
        let mut merged: Vec<(u16, u16)> = Vec::new();
        for (a, b) in ranges {
            match merged.last_mut() {
                Some(last) if u32::from(a) <= u32::from(last.1) + 1 => last.1 = last.1.max(b),
                _ => merged.push((a, b)),
            }
        }
        for (a, b) in merged {
            let range = if a == b { a.to_string() } else { format!("{a}-{b}") };
            items.push(format!("{} . {range}", proto.nft()));
            single = Some(format!("meta l4proto {} th dport {range}", proto.nft()));
        }
    }
    match (items.len(), single) {
        (1, Some(one)) => one,
        _ => format!("meta l4proto . th dport {{ {} }}", items.join(", ")),
    }
}

/// The sets wanted, kept up to date pod by pod.
#[derive(Debug, Default)]
pub struct Sets {
    pub content: BTreeMap<String, (SetSource, SetContent)>,
    /// Sets whose elements changed since the last [`Sets::take_dirty`].
    dirty: BTreeSet<String>,
}

impl Sets {
    /// Makes the sets exactly `wanted`: new ones filled from every pod, unused ones dropped.
    pub fn retain(&mut self, state: &ClusterState, wanted: &BTreeSet<SetSource>) {
        let names: BTreeSet<String> = wanted.iter().map(SetSource::name).collect();
        self.content.retain(|name, _| names.contains(name));
        for source in wanted {
            let name = source.name();
            if self.content.contains_key(&name) {
                continue;
            }
            let mut content = SetContent::default();
            for (key, pod) in &state.pods {
                content.put(key, source.contribution(state, key, pod));
            }
            self.content.insert(name, (source.clone(), content));
        }
    }

    /// Re-reads one pod into every set (after it changed, or its namespace did).
    pub fn update_pod(&mut self, state: &ClusterState, key: &ObjectKey) {
        let pod = state.pods.get(key);
        for (name, (source, content)) in &mut self.content {
            let elements = pod.map(|p| source.contribution(state, key, p)).unwrap_or_default();
            if content.put(key, elements) {
                self.dirty.insert(name.clone());
            }
        }
    }

    /// Refills every set (after a relist).
    pub fn rebuild(&mut self, state: &ClusterState) {
        let wanted: BTreeSet<SetSource> = self.content.values().map(|(s, _)| s.clone()).collect();
        self.content.clear();
        self.retain(state, &wanted);
    }

    pub fn mark_dirty(&mut self, name: &str) {
        self.dirty.insert(name.to_owned());
    }

    pub fn take_dirty(&mut self) -> BTreeSet<String> {
        std::mem::take(&mut self.dirty)
    }

    pub fn element_count(&self) -> usize {
        self.content.values().map(|(_, c)| c.len()).sum()
    }
}

/// What the kernel's table holds (as last written by us).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    pub sets: BTreeMap<String, (String, BTreeSet<String>)>,
    pub chains: Chains,
}

impl Applied {
    pub fn from_desired(chains: &Chains, sets: &Sets) -> Self {
        Self {
            sets: sets
                .content
                .iter()
                .map(|(name, (source, content))| {
                    (
                        name.clone(),
                        (source.declaration(), content.elements().cloned().collect()),
                    )
                })
                .collect(),
            chains: chains.clone(),
        }
    }
}

/// Sets by name with their elements.
pub type SetMembers = Vec<(String, BTreeSet<String>)>;

/// The script for a sync in which only set members changed (a pod came,
/// went or was relabelled), and the sets as they will be once it is applied.
/// Costs what changed, not the size of the table. `None` when a dirty set is
/// not in the table: the caller writes the general delta.
pub fn element_delta(have: &Applied, sets: &Sets, dirty: &BTreeSet<String>) -> Option<(String, SetMembers)> {
    let mut s = String::new();
    let mut after = Vec::new();
    for name in dirty {
        let Some((_, content)) = sets.content.get(name) else {
            continue; // the set went with the chains that used it
        };
        let (_, old) = have.sets.get(name)?;
        let new: BTreeSet<String> = content.elements().cloned().collect();
        write_element_changes(&mut s, name, old, &new);
        after.push((name.clone(), new));
    }
    Some((s, after))
}

fn write_element_changes(s: &mut String, set: &str, old: &BTreeSet<String>, new: &BTreeSet<String>) {
    let join = |list: Vec<&String>| list.into_iter().cloned().collect::<Vec<_>>().join(", ");
    let gone: Vec<&String> = old.difference(new).collect();
    let added: Vec<&String> = new.difference(old).collect();
    if !gone.is_empty() {
        let _ = writeln!(s, "delete element {TABLE} {set} {{ {} }}", join(gone));
    }
    if !added.is_empty() {
        let _ = writeln!(s, "add element {TABLE} {set} {{ {} }}", join(added));
    }
}

const FORWARD: &str = "chain forward {\n    type filter hook forward priority filter; policy accept;\n    ct state established,related accept\n    iifname vmap @egress_pods\n    oifname vmap @ingress_pods\n  }";

/// One transaction that replaces whatever the table holds with `want`
/// (`add` first so the `delete` never fails; atomic, so no packet sees an empty table).
pub fn full_script(want: &Applied) -> String {
    let mut s = format!("add table {TABLE}\ndelete table {TABLE}\ntable {TABLE} {{\n");
    for (name, (decl, elements)) in &want.sets {
        let _ = write!(s, "  set {name} {{ {decl};");
        if !elements.is_empty() {
            let _ = write!(
                s,
                " elements = {{ {} }}",
                elements.iter().cloned().collect::<Vec<_>>().join(", ")
            );
        }
        s.push_str(" }\n");
    }
    for name in want.chains.counters() {
        let _ = writeln!(s, "  counter {name} {{ packets 0 bytes 0 }}");
    }
    for (name, rules) in &want.chains.chains {
        let _ = writeln!(s, "  chain {name} {{");
        for r in rules {
            let _ = writeln!(s, "    {r}");
        }
        s.push_str("  }\n");
    }
    for (map, entries) in [
        ("ingress_pods", &want.chains.ingress),
        ("egress_pods", &want.chains.egress),
    ] {
        let _ = write!(s, "  map {map} {{ type ifname : verdict;");
        if !entries.is_empty() {
            let list: Vec<String> = entries.iter().map(|(i, c)| format!("\"{i}\" : jump {c}")).collect();
            let _ = write!(s, " elements = {{ {} }}", list.join(", "));
        }
        s.push_str(" }\n");
    }
    let _ = writeln!(s, "  {FORWARD}\n}}");
    s
}

/// One transaction from `have` to `want`; `dirty` names the sets whose
/// elements may differ. Empty when nothing changes.
pub fn delta_script(have: &Applied, want: &Applied, dirty: &BTreeSet<String>) -> String {
    let mut s = String::new();
    // new sets, and element changes
    for (name, (decl, els)) in &want.sets {
        match have.sets.get(name) {
            None => {
                let _ = writeln!(s, "add set {TABLE} {name} {{ {decl}; }}");
                write_element_changes(&mut s, name, &BTreeSet::new(), els);
            }
            Some((_, old)) if dirty.contains(name) => write_element_changes(&mut s, name, old, els),
            Some(_) => {}
        }
    }
    let (counters_had, counters_want) = (have.chains.counters(), want.chains.counters());
    for name in counters_want.difference(&counters_had) {
        let _ = writeln!(s, "add counter {TABLE} {name}");
    }
    // chains: new ones created, changed ones flushed and refilled
    for (name, rules) in &want.chains.chains {
        match have.chains.chains.get(name) {
            Some(old) if old == rules => continue,
            Some(_) => {
                let _ = writeln!(s, "flush chain {TABLE} {name}");
            }
            None => {
                let _ = writeln!(s, "add chain {TABLE} {name}");
            }
        }
        for r in rules {
            let _ = writeln!(s, "add rule {TABLE} {name} {r}");
        }
    }
    // dispatch: pods newly isolated, pods no longer isolated
    for (map, old, new) in [
        ("ingress_pods", &have.chains.ingress, &want.chains.ingress),
        ("egress_pods", &have.chains.egress, &want.chains.egress),
    ] {
        for (ifname, chain) in new {
            if old.get(ifname) != Some(chain) {
                if old.contains_key(ifname) {
                    let _ = writeln!(s, "delete element {TABLE} {map} {{ \"{ifname}\" }}");
                }
                let _ = writeln!(s, "add element {TABLE} {map} {{ \"{ifname}\" : jump {chain} }}");
            }
        }
        for ifname in old.keys().filter(|i| !new.contains_key(*i)) {
            let _ = writeln!(s, "delete element {TABLE} {map} {{ \"{ifname}\" }}");
        }
    }
    for name in have
        .chains
        .chains
        .keys()
        .filter(|c| !want.chains.chains.contains_key(*c))
    {
        let _ = writeln!(s, "delete chain {TABLE} {name}");
    }
    for name in have.sets.keys().filter(|n| !want.sets.contains_key(*n)) {
        let _ = writeln!(s, "delete set {TABLE} {name}");
    }
    for name in counters_had.difference(&counters_want) {
        let _ = writeln!(s, "delete counter {TABLE} {name}");
    }
    s
}
