//! Calico's `NetworkPolicy` and `GlobalNetworkPolicy` (the
//! `projectcalico.org/v3` spec; `crd.projectcalico.org/v1` stores the same
//! spec), parsed once into what the engine enforces. A field the engine
//! cannot enforce is a problem naming it; a policy with a problem is not
//! applied at all (never half-applied) and gets a Warning Event.

use super::selector::Selector;
use crate::policy::model::{Labels, ObjectKey};
use ipnet::IpNet;
use serde_json::Value;

/// The order Calico gives Kubernetes NetworkPolicies (`knp.default.*`).
pub const KUBERNETES_ORDER: f64 = 1000.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub enum Action {
    Allow,
    Deny,
    Log,
    Pass,
}

/// An IP protocol by number (`TCP` 6, `UDP` 17, `ICMP` 1, `ICMPv6` 58, `SCTP` 132, `UDPLite` 136).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IpProtocol(pub u8);

impl IpProtocol {
    pub const ICMP: Self = Self(1);
    pub const TCP: Self = Self(6);
    pub const UDP: Self = Self(17);
    pub const ICMPV6: Self = Self(58);
    pub const SCTP: Self = Self(132);
    pub const UDPLITE: Self = Self(136);

    fn parse(v: &Value) -> Option<Self> {
        match v {
            Value::Number(n) => n.as_u64().and_then(|n| u8::try_from(n).ok()).map(Self),
            Value::String(s) => match s.to_ascii_uppercase().as_str() {
                "TCP" => Some(Self::TCP),
                "UDP" => Some(Self::UDP),
                "ICMP" => Some(Self::ICMP),
                "ICMPV6" => Some(Self::ICMPV6),
                "SCTP" => Some(Self::SCTP),
                "UDPLITE" => Some(Self::UDPLITE),
                n => n.parse().ok().map(Self),
            },
            _ => None,
        }
    }

    /// Protocols with ports.
    pub fn has_ports(self) -> bool {
        matches!(self, Self::TCP | Self::UDP | Self::SCTP | Self::UDPLITE)
    }
}

/// `icmp: {type, code}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Icmp {
    pub kind: u8,
    pub code: Option<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PortSpec {
    Range(u16, u16),
    Named(String),
}

/// `serviceAccounts: {names, selector}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceAccountMatch {
    pub names: Vec<String>,
    pub selector: Option<Selector>,
}

/// A rule's `source` or `destination`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EntityRule {
    pub nets: Vec<IpNet>,
    pub not_nets: Vec<IpNet>,
    pub selector: Option<Selector>,
    pub not_selector: Option<Selector>,
    pub namespace_selector: Option<Selector>,
    pub ports: Vec<PortSpec>,
    pub not_ports: Vec<PortSpec>,
    pub service_accounts: Option<ServiceAccountMatch>,
}

impl EntityRule {
    /// The rule names endpoints (pods), not only addresses and ports.
    pub fn selects_endpoints(&self) -> bool {
        self.selector.is_some() || self.namespace_selector.is_some() || self.service_accounts.is_some()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CalicoRule {
    pub action: Action,
    /// `ipVersion`: 4 or 6.
    pub ip_version: Option<u8>,
    pub protocol: Option<IpProtocol>,
    pub not_protocol: Option<IpProtocol>,
    pub icmp: Option<Icmp>,
    pub not_icmp: Option<Icmp>,
    pub source: EntityRule,
    pub destination: EntityRule,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CalicoPolicy {
    /// `None` for a GlobalNetworkPolicy.
    pub namespace: Option<String>,
    pub name: String,
    /// `None`: after every ordered policy (Calico's "infinite").
    pub order: Option<f64>,
    pub selector: Selector,
    /// GlobalNetworkPolicy only: the namespaces whose pods it applies to.
    pub namespace_selector: Option<Selector>,
    pub service_account_selector: Option<Selector>,
    /// `None`: the policy does not apply in that direction (`types`).
    pub ingress: Option<Vec<CalicoRule>>,
    pub egress: Option<Vec<CalicoRule>>,
    /// Fields that cannot be enforced: the policy is not applied.
    pub problems: Vec<String>,
}

impl CalicoPolicy {
    /// `GlobalNetworkPolicy name` or `NetworkPolicy ns/name`, as explain prints it.
    pub fn id(&self) -> String {
        match &self.namespace {
            None => format!("GlobalNetworkPolicy {}", self.name),
            Some(ns) => format!("NetworkPolicy {ns}/{}", self.name),
        }
    }

    /// The engine's key: global policies under the empty namespace.
    pub fn key(&self) -> ObjectKey {
        ObjectKey::new(self.namespace.as_deref().unwrap_or(""), &self.name)
    }

    /// From an object of kind `NetworkPolicy` or `GlobalNetworkPolicy` in either
    /// Calico API group. `Err` when it has no name (nothing to report against).
    pub fn from_object(object: &Value) -> Result<Self, String> {
        let kind = object["kind"].as_str().unwrap_or_default();
        let global = match kind {
            "GlobalNetworkPolicy" => true,
            "NetworkPolicy" => false,
            other => {
                return Err(format!(
                    "kind {other:?} is not a Calico NetworkPolicy or GlobalNetworkPolicy"
                ))
            }
        };
        let name = object["metadata"]["name"]
            .as_str()
            .ok_or("a Calico policy without metadata.name")?
            .to_owned();
        let namespace = if global {
            None
        } else {
            Some(object["metadata"]["namespace"].as_str().unwrap_or("default").to_owned())
        };
        Ok(Self::from_spec(namespace, name, &object["spec"]))
    }

    pub fn from_spec(namespace: Option<String>, name: String, spec: &Value) -> Self {
        let mut p = Problems::default();
        let known = [
            "order",
            "tier",
            "selector",
            "namespaceSelector",
            "serviceAccountSelector",
            "types",
            "ingress",
            "egress",
            "doNotTrack",
            "preDNAT",
            "applyOnForward",
            "performanceHints",
        ];
        p.unknown_fields(spec, "spec", &known);
        match spec["tier"].as_str() {
            None | Some("default") => {}
            Some(t) => p.push(format!("spec.tier {t:?}: only the default tier is enforced")),
        }
        for flag in ["doNotTrack", "preDNAT"] {
            if spec[flag].as_bool() == Some(true) {
                p.push(format!("spec.{flag}: host-endpoint policy is not enforced"));
            }
        }
        if spec["applyOnForward"].as_bool() == Some(true) && namespace.is_none() {
            // applyOnForward concerns host endpoints; on pods forwarded traffic is policed anyway
            p.push("spec.applyOnForward: host-endpoint policy is not enforced".into());
        }
        let order = match &spec["order"] {
            Value::Null => None,
            v => match v.as_f64() {
                Some(o) => Some(o),
                None => {
                    p.push(format!("spec.order {v}: not a number"));
                    None
                }
            },
        };
        let selector = p.selector(&spec["selector"], "spec.selector").unwrap_or(Selector::All);
        let namespace_selector = p.selector(&spec["namespaceSelector"], "spec.namespaceSelector");
        if namespace_selector.is_some() && namespace.is_some() {
            p.push("spec.namespaceSelector: only a GlobalNetworkPolicy selects namespaces".into());
        }
        let service_account_selector = p.selector(&spec["serviceAccountSelector"], "spec.serviceAccountSelector");
        let ingress_rules = p.rules(&spec["ingress"], "spec.ingress");
        let egress_rules = p.rules(&spec["egress"], "spec.egress");
        // types: given, or Ingress unless there are egress rules only (Calico's defaults)
        let (mut ingress_on, mut egress_on) = (false, false);
        match spec["types"].as_array() {
            Some(types) => {
                for (i, t) in types.iter().enumerate() {
                    match t.as_str() {
                        Some("Ingress") => ingress_on = true,
                        Some("Egress") => egress_on = true,
                        _ => p.push(format!("spec.types[{i}] {t}: not Ingress or Egress")),
                    }
                }
            }
            None => {
                egress_on = !egress_rules.is_empty();
                ingress_on = !ingress_rules.is_empty() || !egress_on;
            }
        }
        // ports by name resolve on a pod: the policy's own pod, or the
        // destination pods of an egress rule; never on a remote source
        let named = |ports: &[PortSpec]| ports.iter().any(|x| matches!(x, PortSpec::Named(_)));
        for (i, r) in ingress_rules.iter().enumerate() {
            if named(&r.source.ports) || named(&r.source.not_ports) {
                p.push(format!(
                    "spec.ingress[{i}].source.ports: a named source port of a remote pod is not enforced"
                ));
            }
        }
        for (i, r) in egress_rules.iter().enumerate() {
            if named(&r.destination.not_ports) {
                p.push(format!(
                    "spec.egress[{i}].destination.notPorts: a named port of a remote pod is not enforced"
                ));
            }
        }
        if !ingress_on && !ingress_rules.is_empty() {
            p.push("spec.ingress: rules given but types does not include Ingress".into());
        }
        if !egress_on && !egress_rules.is_empty() {
            p.push("spec.egress: rules given but types does not include Egress".into());
        }
        Self {
            namespace,
            name,
            order,
            selector,
            namespace_selector,
            service_account_selector,
            ingress: ingress_on.then_some(ingress_rules),
            egress: egress_on.then_some(egress_rules),
            problems: p.0,
        }
    }

    /// Does the policy apply to a pod in `ns` with these labels (its Calico
    /// labels included, see [`endpoint_labels`]) and service account labels?
    pub fn applies_to(
        &self,
        ns: &str,
        pod_labels: &Labels,
        ns_labels: Option<&Labels>,
        sa_labels: Option<&Labels>,
    ) -> bool {
        if let Some(own) = &self.namespace {
            if own != ns {
                return false;
            }
        }
        if let Some(sel) = &self.namespace_selector {
            if !ns_labels.is_some_and(|l| sel.matches(l)) {
                return false;
            }
        }
        if let Some(sel) = &self.service_account_selector {
            if !sel.matches(sa_labels.unwrap_or(&Labels::new())) {
                return false;
            }
        }
        self.selector.matches(pod_labels)
    }
}

/// A pod's labels as Calico's selectors see them: its own, plus
/// `projectcalico.org/namespace`, `projectcalico.org/orchestrator` and
/// `projectcalico.org/serviceaccount`.
pub fn endpoint_labels(ns: &str, labels: &Labels, service_account: &str) -> Labels {
    let mut out = labels.clone();
    out.insert("projectcalico.org/namespace".into(), ns.into());
    out.insert("projectcalico.org/orchestrator".into(), "k8s".into());
    out.insert("projectcalico.org/serviceaccount".into(), service_account.into());
    out
}

/// A namespace's labels as a Calico namespaceSelector sees them (with `projectcalico.org/name`).
pub fn namespace_labels(ns: &str, labels: &Labels) -> Labels {
    let mut out = labels.clone();
    out.insert("projectcalico.org/name".into(), ns.into());
    out
}

#[derive(Default)]
struct Problems(Vec<String>);

impl Problems {
    fn push(&mut self, p: String) {
        self.0.push(p);
    }

    fn unknown_fields(&mut self, v: &Value, at: &str, known: &[&str]) {
        for key in v.as_object().into_iter().flat_map(|o| o.keys()) {
            if !known.contains(&key.as_str()) {
                self.push(format!("{at}.{key}: not supported"));
            }
        }
    }

    fn selector(&mut self, v: &Value, at: &str) -> Option<Selector> {
        match v {
            Value::Null => None,
            Value::String(s) => match Selector::parse(s) {
                Ok(sel) => Some(sel),
                Err(e) => {
                    self.push(format!("{at}: {e}"));
                    None
                }
            },
            other => {
                self.push(format!("{at} {other}: not a string"));
                None
            }
        }
    }

    fn rules(&mut self, v: &Value, at: &str) -> Vec<CalicoRule> {
        v.as_array()
            .into_iter()
            .flatten()
            .enumerate()
            .filter_map(|(i, r)| self.rule(r, &format!("{at}[{i}]")))
            .collect()
    }

    fn rule(&mut self, v: &Value, at: &str) -> Option<CalicoRule> {
        let known = [
            "action",
            "ipVersion",
            "protocol",
            "notProtocol",
            "icmp",
            "notICMP",
            "source",
            "destination",
            "http",
            "metadata",
        ];
        self.unknown_fields(v, at, &known);
        if !v["http"].is_null() {
            self.push(format!(
                "{at}.http: HTTP match (application layer policy) is not enforced"
            ));
        }
        let action = match v["action"].as_str() {
            Some("Allow") => Action::Allow,
            Some("Deny") => Action::Deny,
            Some("Log") => Action::Log,
            Some("Pass") => Action::Pass,
            _ => {
                self.push(format!("{at}.action {}: not Allow, Deny, Log or Pass", v["action"]));
                return None;
            }
        };
        let ip_version = match &v["ipVersion"] {
            Value::Null => None,
            x => match x.as_u64() {
                Some(4) => Some(4),
                Some(6) => Some(6),
                _ => {
                    self.push(format!("{at}.ipVersion {x}: not 4 or 6"));
                    None
                }
            },
        };
        let protocol = self.protocol(&v["protocol"], &format!("{at}.protocol"));
        let not_protocol = self.protocol(&v["notProtocol"], &format!("{at}.notProtocol"));
        let icmp = self.icmp(&v["icmp"], &format!("{at}.icmp"));
        let not_icmp = self.icmp(&v["notICMP"], &format!("{at}.notICMP"));
        if (icmp.is_some() || not_icmp.is_some()) && !matches!(protocol, Some(IpProtocol::ICMP | IpProtocol::ICMPV6)) {
            self.push(format!("{at}.icmp: needs protocol ICMP or ICMPv6"));
        }
        let source = self.entity(&v["source"], &format!("{at}.source"));
        let destination = self.entity(&v["destination"], &format!("{at}.destination"));
        for (e, side) in [(&source, "source"), (&destination, "destination")] {
            if (!e.ports.is_empty() || !e.not_ports.is_empty()) && !protocol.is_some_and(IpProtocol::has_ports) {
                self.push(format!("{at}.{side}.ports: needs protocol TCP, UDP, SCTP or UDPLite"));
            }
        }
        Some(CalicoRule {
            action,
            ip_version,
            protocol,
            not_protocol,
            icmp,
            not_icmp,
            source,
            destination,
        })
    }

    fn protocol(&mut self, v: &Value, at: &str) -> Option<IpProtocol> {
        if v.is_null() {
            return None;
        }
        let p = IpProtocol::parse(v);
        if p.is_none() {
            self.push(format!("{at} {v}: not a protocol name or number 1-255"));
        }
        p
    }

    fn icmp(&mut self, v: &Value, at: &str) -> Option<Icmp> {
        if v.is_null() {
            return None;
        }
        self.unknown_fields(v, at, &["type", "code"]);
        let byte = |x: &Value| x.as_u64().and_then(|n| u8::try_from(n).ok());
        let Some(kind) = byte(&v["type"]) else {
            self.push(format!("{at}.type {}: not a number 0-254", v["type"]));
            return None;
        };
        let code = match &v["code"] {
            Value::Null => None,
            c => match byte(c) {
                Some(c) => Some(c),
                None => {
                    self.push(format!("{at}.code {c}: not a number 0-255"));
                    return None;
                }
            },
        };
        Some(Icmp { kind, code })
    }

    fn entity(&mut self, v: &Value, at: &str) -> EntityRule {
        let known = [
            "nets",
            "notNets",
            "selector",
            "notSelector",
            "namespaceSelector",
            "ports",
            "notPorts",
            "serviceAccounts",
            "services",
        ];
        self.unknown_fields(v, at, &known);
        if !v["services"].is_null() {
            self.push(format!("{at}.services: Service match is not enforced"));
        }
        let nets = |p: &mut Self, key: &str| -> Vec<IpNet> {
            let mut out = Vec::new();
            for (i, n) in v[key].as_array().into_iter().flatten().enumerate() {
                let text = n.as_str().unwrap_or_default();
                // a bare address is a /32 or /128
                match text
                    .parse::<IpNet>()
                    .or_else(|_| text.parse::<std::net::IpAddr>().map(IpNet::from))
                {
                    Ok(net) => out.push(net.trunc()),
                    Err(_) => p.push(format!("{at}.{key}[{i}] {n}: not a CIDR")),
                }
            }
            out
        };
        let ports = |p: &mut Self, key: &str| -> Vec<PortSpec> {
            let mut out = Vec::new();
            for (i, x) in v[key].as_array().into_iter().flatten().enumerate() {
                match port_spec(x) {
                    Some(spec) => out.push(spec),
                    None => p.push(format!(
                        "{at}.{key}[{i}] {x}: not a port, a range \"first:last\" or a port name"
                    )),
                }
            }
            out
        };
        let service_accounts = match &v["serviceAccounts"] {
            Value::Null => None,
            sa => {
                self.unknown_fields(sa, &format!("{at}.serviceAccounts"), &["names", "selector"]);
                Some(ServiceAccountMatch {
                    names: sa["names"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|n| n.as_str().map(str::to_owned))
                        .collect(),
                    selector: self.selector(&sa["selector"], &format!("{at}.serviceAccounts.selector")),
                })
            }
        };
        EntityRule {
            nets: nets(self, "nets"),
            not_nets: nets(self, "notNets"),
            selector: self.selector(&v["selector"], &format!("{at}.selector")),
            not_selector: self.selector(&v["notSelector"], &format!("{at}.notSelector")),
            namespace_selector: self.selector(&v["namespaceSelector"], &format!("{at}.namespaceSelector")),
            ports: ports(self, "ports"),
            not_ports: ports(self, "notPorts"),
            service_accounts,
        }
    }
}

/// `80`, `"80"`, `"1000:2000"`, or a port name.
fn port_spec(v: &Value) -> Option<PortSpec> {
    let port = |s: &str| s.parse::<u16>().ok();
    match v {
        Value::Number(n) => {
            let p = u16::try_from(n.as_u64()?).ok()?;
            Some(PortSpec::Range(p, p))
        }
        Value::String(s) => {
            if let Some((a, b)) = s.split_once(':') {
                let (a, b) = (port(a)?, port(b)?);
                (a <= b).then_some(PortSpec::Range(a, b))
            } else if let Some(p) = port(s) {
                Some(PortSpec::Range(p, p))
            } else {
                let named = !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
                named.then(|| PortSpec::Named(s.clone()))
            }
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn types_default_as_calico_documents() {
        let p = |spec| CalicoPolicy::from_spec(Some("ns".into()), "p".into(), &spec);
        let only_ingress = p(json!({"ingress": [{"action": "Allow"}]}));
        assert!(only_ingress.ingress.is_some() && only_ingress.egress.is_none());
        let none = p(json!({}));
        assert!(none.ingress.is_some() && none.egress.is_none(), "no rules: Ingress");
        let only_egress = p(json!({"egress": [{"action": "Allow"}]}));
        assert!(only_egress.ingress.is_none() && only_egress.egress.is_some());
        let both = p(json!({"ingress": [], "egress": [{"action": "Deny"}]}));
        assert!(
            both.ingress.is_none() && both.egress.is_some(),
            "empty ingress list is no ingress rules"
        );
        let typed = p(json!({"types": ["Ingress", "Egress"]}));
        assert!(typed.ingress.is_some() && typed.egress.is_some());
        assert!(typed.problems.is_empty(), "{:?}", typed.problems);
    }

    #[test]
    fn rule_fields_parse_and_unenforceable_ones_are_named() {
        let p = CalicoPolicy::from_spec(
            None,
            "g".into(),
            &json!({"order": 10, "selector": "role == 'db'", "ingress": [
                {"action": "Allow", "protocol": "TCP", "source": {"nets": ["10.0.0.0/8", "192.168.1.1"], "notSelector": "has(x)"},
                 "destination": {"ports": [5432, "6000:6100", "metrics"]}},
                {"action": "Deny", "protocol": 1, "icmp": {"type": 8, "code": 0}},
                {"action": "Log", "notProtocol": "UDP"}]}),
        );
        assert!(p.problems.is_empty(), "{:?}", p.problems);
        let rules = p.ingress.as_ref().unwrap();
        assert_eq!(
            rules[0].destination.ports,
            vec![
                PortSpec::Range(5432, 5432),
                PortSpec::Range(6000, 6100),
                PortSpec::Named("metrics".into())
            ]
        );
        assert_eq!(rules[0].source.nets[1].to_string(), "192.168.1.1/32");
        assert_eq!(rules[1].icmp, Some(Icmp { kind: 8, code: Some(0) }));
        assert_eq!(rules[2].not_protocol, Some(IpProtocol::UDP));

        let bad = CalicoPolicy::from_spec(
            Some("ns".into()),
            "b".into(),
            &json!({"selector": "app ==", "doNotTrack": true, "ingress": [
                {"action": "Allow", "http": {"methods": ["GET"]}},
                {"action": "Allow", "destination": {"ports": [80]}},
                {"action": "Shout"}]}),
        );
        let text = bad.problems.join("\n");
        for needle in [
            "spec.selector: selector \"app ==\"",
            "spec.doNotTrack",
            "spec.ingress[0].http",
            "spec.ingress[1].destination.ports: needs protocol",
            "spec.ingress[2].action",
        ] {
            assert!(text.contains(needle), "{needle} in\n{text}");
        }
    }
}
