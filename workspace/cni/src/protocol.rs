//! What the `terway` plugin and terwayd say to each other over the unix
//! socket: one JSON request per connection, one JSON reply.
//!
//! The daemon decodes with [`decode_request`], which checks every field, so
//! nothing half-formed reaches the IPAM or the datapath.

use serde::{Deserialize, Serialize};
use std::path::Path;

/// Most bytes a request may have; a CNI request is a few hundred.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "UPPERCASE")]
pub enum Request {
    Add(PodRequest),
    Del(PodRequest),
    Check(PodRequest),
    /// CNI 1.1 GC: every attachment not listed may be released.
    Gc {
        valid: Vec<Attachment>,
    },
    /// CNI 1.1 STATUS: can the daemon serve ADD now?
    Status,
    /// `terway-cli`: what the node service holds (not a CNI command).
    Inspect {
        what: Inspect,
    },
    /// `terway-cli policy explain`: would a connection pass NetworkPolicy?
    /// Endpoints are `namespace/pod` or an address.
    Explain {
        from: String,
        to: String,
        port: u16,
        protocol: String,
    },
}

/// What `terway-cli` asks a live terwayd for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Inspect {
    /// Config in force, pool, ENIs, vSwitches set aside, last reconcile.
    Status,
    Pods,
    Enis,
}

impl Request {
    /// The CNI command, as metrics label it.
    pub fn command(&self) -> &'static str {
        match self {
            Request::Add(_) => "ADD",
            Request::Del(_) => "DEL",
            Request::Check(_) => "CHECK",
            Request::Gc { .. } => "GC",
            Request::Status => "STATUS",
            Request::Inspect { .. } => "INSPECT",
            Request::Explain { .. } => "EXPLAIN",
        }
    }
}

/// One container's attachment, as CNI identifies it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    pub container_id: String,
    pub ifname: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodRequest {
    pub container_id: String,
    /// Empty on a DEL whose namespace is already gone.
    pub netns: String,
    pub ifname: String,
    pub pod_namespace: String,
    pub pod_name: String,
    #[serde(default)]
    pub infra_container_id: String,
    /// `runtimeConfig.bandwidth`, bits per second.
    #[serde(default)]
    pub ingress_bps: Option<u64>,
    #[serde(default)]
    pub egress_bps: Option<u64>,
    /// The cniVersion the result must be rendered in.
    pub cni_version: String,
    /// Outside Kubernetes: the name the runtime gave (podman's container
    /// name in `K8S_POD_NAME`), for logs and `terway-cli pods`; any text.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub runtime_name: String,
    /// The network configuration's `host_stack_cidrs`: destinations a pod
    /// with its own ENI reaches through the host (NodeLocal DNSCache's
    /// `169.254.20.10/32`, say).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub host_stack_cidrs: Vec<String>,
}

/// The namespace of attachments made without Kubernetes (no
/// `K8S_POD_NAMESPACE`): never a Kubernetes namespace, which cannot hold
/// `_`. Such an attachment is keyed as the CNI spec keys it, by container
/// id and interface: its name is `<container id>_<ifname>`.
pub const RUNTIME_NAMESPACE: &str = "_runtime";

impl PodRequest {
    /// An attachment made by a runtime without Kubernetes.
    pub fn is_kubernetes(&self) -> bool {
        self.pod_namespace != RUNTIME_NAMESPACE
    }

    /// The pod name of an attachment made without Kubernetes.
    pub fn runtime_pod_name(container_id: &str, ifname: &str) -> String {
        format!("{container_id}_{ifname}")
    }
    /// A request for interface `eth0` at cniVersion 1.0.0, the sandbox being the infra container.
    pub fn new(pod_namespace: &str, pod_name: &str, container_id: &str, netns: &str) -> Self {
        Self {
            container_id: container_id.into(),
            netns: netns.into(),
            ifname: "eth0".into(),
            pod_namespace: pod_namespace.into(),
            pod_name: pod_name.into(),
            infra_container_id: container_id.into(),
            ingress_bps: None,
            egress_bps: None,
            cni_version: "1.0.0".into(),
            runtime_name: String::new(),
            host_stack_cidrs: Vec::new(),
        }
    }
}

/// A CIDR such as `169.254.20.10/32` or `fd00::/8`, its host bits clear.
pub fn check_cidr(text: &str) -> Result<(), ProtocolError> {
    let bad = || ProtocolError(format!("{text:?} is not a CIDR such as 169.254.20.10/32"));
    let (ip, prefix) = text.split_once('/').ok_or_else(bad)?;
    let prefix: u32 = prefix.parse().map_err(|_| bad())?;
    let ip: std::net::IpAddr = ip.parse().map_err(|_| bad())?;
    let (bits, width) = match ip {
        std::net::IpAddr::V4(v4) => (u128::from(u32::from(v4)), 32),
        std::net::IpAddr::V6(v6) => (u128::from(v6), 128),
    };
    if prefix > width {
        return Err(bad());
    }
    let host_bits = if prefix == width {
        0
    } else {
        bits & (u128::MAX >> (128 - width + prefix))
    };
    if host_bits != 0 {
        return Err(ProtocolError(format!("{text:?} has host bits set")));
    }
    Ok(())
}

/// The daemon's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Reply {
    /// ADD: the pod's addresses; DEL/CHECK/GC/STATUS: nothing more.
    Ok {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        network: Option<PodNetworkReply>,
    },
    Error {
        /// A CNI error code (spec: 3 unknown container, 11 try again later, …).
        code: u32,
        msg: String,
        #[serde(default)]
        details: String,
    },
    /// The answer to [`Request::Inspect`].
    Inspect { body: serde_json::Value },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodNetworkReply {
    /// `192.168.1.5/32`
    pub ipv4: String,
    pub ipv4_gateway: String,
    #[serde(default)]
    pub ipv6: Option<String>,
    #[serde(default)]
    pub ipv6_gateway: Option<String>,
    /// MAC of the pod's interface.
    pub mac: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolError(pub String);

impl std::fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "bad request: {}", self.0)
    }
}

impl std::error::Error for ProtocolError {}

/// The bytes a request travels as.
pub fn encode_request(r: &Request) -> Vec<u8> {
    // plain data: serialisation cannot fail
    serde_json::to_vec(r).unwrap_or_default()
}

/// Decodes and checks a request: sizes, names and paths.
pub fn decode_request(bytes: &[u8]) -> Result<Request, ProtocolError> {
    if bytes.len() > MAX_REQUEST_BYTES {
        return Err(ProtocolError(format!(
            "{} bytes is more than the {MAX_REQUEST_BYTES} a request may have",
            bytes.len()
        )));
    }
    let request: Request = serde_json::from_slice(bytes).map_err(|e| ProtocolError(format!("not a request: {e}")))?;
    match &request {
        Request::Add(p) | Request::Check(p) => {
            check_pod(p)?;
            if p.netns.is_empty() {
                return Err(ProtocolError("netns is empty".into()));
            }
        }
        Request::Del(p) => check_pod(p)?,
        Request::Gc { valid } => {
            for a in valid {
                check_container_id(&a.container_id)?;
                check_ifname(&a.ifname)?;
            }
        }
        Request::Status | Request::Inspect { .. } | Request::Explain { .. } => {}
    }
    Ok(request)
}

fn check_pod(p: &PodRequest) -> Result<(), ProtocolError> {
    check_container_id(&p.container_id)?;
    check_ifname(&p.ifname)?;
    if !p.netns.is_empty() && !Path::new(&p.netns).is_absolute() {
        return Err(ProtocolError(format!("netns {:?} is not an absolute path", p.netns)));
    }
    if p.is_kubernetes() {
        for (what, v) in [("pod namespace", &p.pod_namespace), ("pod name", &p.pod_name)] {
            check_k8s_name(what, v)?;
        }
    } else if p.pod_name != PodRequest::runtime_pod_name(&p.container_id, &p.ifname) {
        return Err(ProtocolError(format!(
            "an attachment in {RUNTIME_NAMESPACE} is named <container id>_<ifname>, not {:?}",
            p.pod_name
        )));
    }
    if p.runtime_name.len() > 1024 || p.runtime_name.chars().any(char::is_control) {
        return Err(ProtocolError(
            "the runtime's name is over 1024 characters or holds control characters".into(),
        ));
    }
    if !crate::plugin::SUPPORTED_VERSIONS.contains(&p.cni_version.as_str()) {
        return Err(ProtocolError(format!(
            "cniVersion {:?} is not supported",
            p.cni_version
        )));
    }
    Ok(())
}

pub(crate) fn check_container_id(id: &str) -> Result<(), ProtocolError> {
    let ok = !id.is_empty() && id.len() <= 256 && id.chars().all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c));
    if ok {
        Ok(())
    } else {
        Err(ProtocolError(format!(
            "container id {id:?} must be 1-256 characters of letters, digits, _ - ."
        )))
    }
}

pub(crate) fn check_ifname(name: &str) -> Result<(), ProtocolError> {
    let ok = !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && !name.contains(['/', ':'])
        && !name.chars().any(char::is_whitespace);
    if ok {
        Ok(())
    } else {
        Err(ProtocolError(format!(
            "interface name {name:?} is not a valid Linux interface name (1-15 characters, no '/', ':' or spaces)"
        )))
    }
}

/// Kubernetes object names: DNS-1123 subdomains (at most 253 characters).
pub(crate) fn check_k8s_name(what: &str, v: &str) -> Result<(), ProtocolError> {
    let ok = !v.is_empty()
        && v.len() <= 253
        && v.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && v.starts_with(|c: char| c.is_ascii_alphanumeric())
        && v.ends_with(|c: char| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(ProtocolError(format!("{what} {v:?} is not a valid Kubernetes name")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add() -> PodRequest {
        PodRequest {
            container_id: "abc123".into(),
            netns: "/var/run/netns/cni-1".into(),
            ifname: "eth0".into(),
            pod_namespace: "default".into(),
            pod_name: "nginx-0".into(),
            infra_container_id: "abc123".into(),
            ingress_bps: None,
            egress_bps: Some(1_000_000),
            cni_version: "1.0.0".into(),
            runtime_name: String::new(),
            host_stack_cidrs: vec!["169.254.20.10/32".into()],
        }
    }

    #[test]
    fn cidrs() {
        for ok in ["169.254.20.10/32", "10.0.0.0/8", "0.0.0.0/0", "fd00::/8", "::1/128"] {
            assert!(check_cidr(ok).is_ok(), "{ok}");
        }
        for bad in [
            "169.254.20.10",
            "10.0.0.1/8",
            "10.0.0.0/33",
            "banana/8",
            "fd00::1/8",
            "/32",
        ] {
            assert!(check_cidr(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn round_trip() {
        let r = Request::Add(add());
        let bytes = serde_json::to_vec(&r).unwrap();
        assert_eq!(decode_request(&bytes).unwrap(), r);
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.contains("\"command\":\"ADD\""), "{text}");
        assert_eq!(decode_request(br#"{"command":"STATUS"}"#).unwrap(), Request::Status);
    }

    #[test]
    fn refuses_half_formed_requests() {
        let bad = |f: &dyn Fn(&mut PodRequest)| {
            let mut p = add();
            f(&mut p);
            decode_request(&serde_json::to_vec(&Request::Add(p)).unwrap())
                .unwrap_err()
                .to_string()
        };
        assert!(bad(&|p| p.container_id.clear()).contains("container id"));
        assert!(bad(&|p| p.ifname = "a-very-long-ifname".into()).contains("interface name"));
        assert!(bad(&|p| p.ifname = "../x".into()).contains("interface name"));
        assert!(bad(&|p| p.netns = "relative".into()).contains("absolute"));
        assert!(bad(&|p| p.netns.clear()).contains("netns is empty"));
        assert!(bad(&|p| p.pod_name = "Nginx_0".into()).contains("pod name"));
        assert!(bad(&|p| p.cni_version = "0.1.0".into()).contains("cniVersion"));
        // a DEL may come without a namespace
        let mut p = add();
        p.netns.clear();
        assert!(decode_request(&serde_json::to_vec(&Request::Del(p)).unwrap()).is_ok());
        assert!(decode_request(b"{\"command\":\"ADD\"}").is_err());
        assert!(decode_request(b"garbage").is_err());
        assert!(decode_request(&vec![b' '; MAX_REQUEST_BYTES + 1])
            .unwrap_err()
            .to_string()
            .contains("more than"));
    }
}
