//! The CNI side of the `terway` plugin: reading the runtime's environment
//! and network configuration, and writing results and errors in the form
//! each CNI version expects. Pure functions, shared by the binary and tests.

use crate::protocol::{self, Attachment, PodNetworkReply, PodRequest, Request};
use serde::Deserialize;
use serde_json::{json, Value};
use std::path::PathBuf;

/// CNI versions whose results this plugin writes.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// CNI error codes (CNI spec, "Error codes").
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNSUPPORTED_FIELD: u32 = 2;
    pub const UNKNOWN_CONTAINER: u32 = 3;
    pub const INVALID_ENVIRONMENT: u32 = 4;
    pub const IO_FAILURE: u32 = 5;
    pub const DECODING_FAILURE: u32 = 6;
    pub const INVALID_NETWORK_CONFIG: u32 = 7;
    pub const TRY_AGAIN_LATER: u32 = 11;
    pub const PLUGIN_NOT_AVAILABLE: u32 = 50;
}

/// An error as CNI reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl std::fmt::Display for CniError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CNI error {}: {}", self.code, self.msg)
    }
}

impl std::error::Error for CniError {}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>) -> Self {
        Self {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    /// The error object written to stdout.
    pub fn to_json(&self, cni_version: &str) -> String {
        json!({"cniVersion": cni_version, "code": self.code, "msg": self.msg, "details": self.details}).to_string()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
    Gc,
    Status,
}

/// The part of the network configuration the plugin reads.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    pub cni_version: String,
    pub name: String,
    #[serde(rename = "type")]
    pub plugin_type: String,
    /// The daemon's socket (written by the conflist renderer).
    #[serde(default)]
    pub socket: Option<PathBuf>,
    #[serde(default)]
    pub runtime_config: RuntimeConfig,
    /// Destinations an exclusive-ENI pod reaches through the host (upstream's key).
    #[serde(default, rename = "host_stack_cidrs")]
    pub host_stack_cidrs: Vec<String>,
    /// CNI 1.1 GC: the attachments still in use.
    #[serde(default, rename = "cni.dev/valid-attachments")]
    pub valid_attachments: Vec<ValidAttachment>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeConfig {
    #[serde(default)]
    pub bandwidth: Option<BandwidthEntry>,
}

/// `runtimeConfig.bandwidth` (the `bandwidth` capability): bits per second.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BandwidthEntry {
    #[serde(default)]
    pub ingress_rate: u64,
    #[serde(default)]
    pub ingress_burst: u64,
    #[serde(default)]
    pub egress_rate: u64,
    #[serde(default)]
    pub egress_burst: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ValidAttachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

/// One plugin run, fully checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    pub command: Command,
    /// The version results and errors are written in.
    pub cni_version: String,
    pub socket: Option<PathBuf>,
    /// What to send to the daemon (`None` for VERSION).
    pub request: Option<Request>,
}

/// The `VERSION` answer.
pub fn version_output() -> String {
    json!({"cniVersion": "1.1.0", "supportedVersions": SUPPORTED_VERSIONS}).to_string()
}

/// The version to write an error in when the input is too broken to tell.
pub const FALLBACK_VERSION: &str = "1.0.0";

/// Reads the runtime's environment (`env`) and stdin into an invocation.
/// Every failure carries the code the CNI spec assigns and names the culprit.
pub fn parse(env: &dyn Fn(&str) -> Option<String>, stdin: &[u8]) -> Result<Invocation, CniError> {
    let command = match env("CNI_COMMAND").as_deref() {
        None | Some("") => return Err(CniError::new(code::INVALID_ENVIRONMENT, "CNI_COMMAND is not set")),
        Some("ADD") => Command::Add,
        Some("DEL") => Command::Del,
        Some("CHECK") => Command::Check,
        Some("VERSION") => Command::Version,
        Some("GC") => Command::Gc,
        Some("STATUS") => Command::Status,
        Some(other) => {
            return Err(CniError::new(
                code::INVALID_ENVIRONMENT,
                format!("CNI_COMMAND {other:?} is not one of ADD, DEL, CHECK, VERSION, GC, STATUS"),
            ))
        }
    };
    if command == Command::Version {
        return Ok(Invocation {
            command,
            cni_version: "1.1.0".into(),
            socket: None,
            request: None,
        });
    }
    let raw: Value = serde_json::from_slice(stdin).map_err(|e| {
        CniError::new(
            code::DECODING_FAILURE,
            format!("the network configuration on stdin is not JSON: {e}"),
        )
    })?;
    let version = raw
        .get("cniVersion")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    if version.is_empty() {
        return Err(CniError::new(
            code::INVALID_NETWORK_CONFIG,
            "the network configuration has no cniVersion",
        ));
    }
    if !SUPPORTED_VERSIONS.contains(&version.as_str()) {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!(
                "cniVersion {version:?} is not supported; supported: {}",
                SUPPORTED_VERSIONS.join(", ")
            ),
        ));
    }
    let conf: NetConf = serde_json::from_value(raw).map_err(|e| {
        CniError::new(
            code::INVALID_NETWORK_CONFIG,
            format!("invalid network configuration: {e}"),
        )
    })?;
    let at_least = |min: &str| version_at_least(&version, min);
    match command {
        Command::Check if !at_least("0.4.0") => {
            return Err(CniError::new(
                code::INCOMPATIBLE_VERSION,
                format!("CHECK needs cniVersion 0.4.0 or later, not {version}"),
            ));
        }
        Command::Gc | Command::Status if !at_least("1.1.0") => {
            return Err(CniError::new(
                code::INCOMPATIBLE_VERSION,
                format!("GC and STATUS need cniVersion 1.1.0, not {version}"),
            ));
        }
        _ => {}
    }
    let request = match command {
        Command::Status => Request::Status,
        Command::Gc => {
            let mut valid = Vec::new();
            for a in &conf.valid_attachments {
                protocol::check_container_id(&a.container_id)
                    .map_err(|e| CniError::new(code::INVALID_NETWORK_CONFIG, e.0))?;
                protocol::check_ifname(&a.ifname).map_err(|e| CniError::new(code::INVALID_NETWORK_CONFIG, e.0))?;
                valid.push(Attachment {
                    container_id: a.container_id.clone(),
                    ifname: a.ifname.clone(),
                });
            }
            Request::Gc { valid }
        }
        // DEL must succeed when there is nothing it could name (the spec:
        // tolerate missing resources); the runtime only cleans up
        Command::Del
            if env("CNI_CONTAINERID").is_none_or(|v| v.is_empty())
                || env("CNI_IFNAME").is_none_or(|v| v.is_empty()) =>
        {
            return Ok(Invocation {
                command,
                cni_version: version,
                socket: conf.socket.clone(),
                request: None,
            });
        }
        Command::Add | Command::Del | Command::Check => {
            let pod = pod_request(env, command, &conf, &version)?;
            match command {
                Command::Add => Request::Add(pod),
                Command::Del => Request::Del(pod),
                _ => Request::Check(pod),
            }
        }
        Command::Version => unreachable!("answered above"),
    };
    Ok(Invocation {
        command,
        cni_version: version,
        socket: conf.socket.clone(),
        request: Some(request),
    })
}

fn pod_request(
    env: &dyn Fn(&str) -> Option<String>,
    command: Command,
    conf: &NetConf,
    version: &str,
) -> Result<PodRequest, CniError> {
    let invalid_env = |msg: String| CniError::new(code::INVALID_ENVIRONMENT, msg);
    let required = |name: &str| {
        env(name)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| invalid_env(format!("{name} is not set")))
    };
    let container_id = required("CNI_CONTAINERID")?;
    protocol::check_container_id(&container_id).map_err(|e| invalid_env(format!("CNI_CONTAINERID: {}", e.0)))?;
    let ifname = required("CNI_IFNAME")?;
    protocol::check_ifname(&ifname).map_err(|e| invalid_env(format!("CNI_IFNAME: {}", e.0)))?;
    // DEL may come after the namespace is gone
    let netns = if command == Command::Del {
        env("CNI_NETNS").unwrap_or_default()
    } else {
        required("CNI_NETNS")?
    };
    if !netns.is_empty() && !netns.starts_with('/') {
        return Err(invalid_env(format!("CNI_NETNS {netns:?} is not an absolute path")));
    }
    let args = parse_cni_args(&env("CNI_ARGS").unwrap_or_default()).map_err(invalid_env)?;
    let arg = |key: &str| args.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
    // kubelet sends both K8S_* keys; a runtime without Kubernetes (podman,
    // ctr, nerdctl) sends none or only a name of its own choosing
    let (pod_namespace, pod_name, runtime_name) = match arg("K8S_POD_NAMESPACE").filter(|v| !v.is_empty()) {
        Some(ns) => {
            let name = arg("K8S_POD_NAME")
                .ok_or_else(|| invalid_env("CNI_ARGS has K8S_POD_NAMESPACE but no K8S_POD_NAME".into()))?;
            protocol::check_k8s_name("K8S_POD_NAMESPACE", &ns)
                .map_err(|e| invalid_env(format!("CNI_ARGS: {}", e.0)))?;
            protocol::check_k8s_name("K8S_POD_NAME", &name).map_err(|e| invalid_env(format!("CNI_ARGS: {}", e.0)))?;
            (ns, name, String::new())
        }
        None => {
            // at most 1024 bytes (terwayd's bound), cut on a character boundary
            let mut given = String::new();
            for c in arg("K8S_POD_NAME")
                .unwrap_or_default()
                .chars()
                .filter(|c| !c.is_control())
            {
                if given.len() + c.len_utf8() > 1024 {
                    break;
                }
                given.push(c);
            }
            (
                protocol::RUNTIME_NAMESPACE.to_owned(),
                PodRequest::runtime_pod_name(&container_id, &ifname),
                given,
            )
        }
    };
    let bandwidth = conf.runtime_config.bandwidth.clone().unwrap_or_default();
    for cidr in &conf.host_stack_cidrs {
        protocol::check_cidr(cidr)
            .map_err(|e| CniError::new(code::INVALID_NETWORK_CONFIG, format!("host_stack_cidrs: {}", e.0)))?;
    }
    Ok(PodRequest {
        container_id: container_id.clone(),
        netns,
        ifname,
        pod_namespace,
        pod_name,
        infra_container_id: arg("K8S_POD_INFRA_CONTAINER_ID").unwrap_or(container_id),
        ingress_bps: (bandwidth.ingress_rate > 0).then_some(bandwidth.ingress_rate),
        egress_bps: (bandwidth.egress_rate > 0).then_some(bandwidth.egress_rate),
        cni_version: version.to_owned(),
        runtime_name,
        host_stack_cidrs: conf.host_stack_cidrs.clone(),
    })
}

/// `CNI_ARGS`: `KEY=VALUE` pairs separated by `;`.
pub fn parse_cni_args(s: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for pair in s.split(';').filter(|p| !p.is_empty()) {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| format!("CNI_ARGS entry {pair:?} is not KEY=VALUE"))?;
        if k.is_empty() {
            return Err(format!("CNI_ARGS entry {pair:?} has an empty key"));
        }
        out.push((k.to_owned(), v.to_owned()));
    }
    Ok(out)
}

/// Compares dotted versions numerically.
pub fn version_at_least(version: &str, min: &str) -> bool {
    let parse = |v: &str| v.split('.').map(|p| p.parse::<u32>().unwrap_or(0)).collect::<Vec<_>>();
    parse(version) >= parse(min)
}

/// The ADD result in the shape of `cni_version`: 1.x lists IPs without a
/// `version` field; 0.3.x and 0.4.0 carry `"version": "4"` / `"6"`.
pub fn render_result(cni_version: &str, reply: &PodNetworkReply, ifname: &str, netns: &str) -> String {
    let legacy = !version_at_least(cni_version, "1.0.0");
    let mut ips = Vec::new();
    let mut routes = Vec::new();
    let mut push = |address: &str, gateway: &str, v: &str, default_dst: &str| {
        let mut ip = json!({"address": address, "gateway": gateway, "interface": 0});
        if legacy {
            ip["version"] = json!(v);
        }
        ips.push(ip);
        routes.push(json!({"dst": default_dst, "gw": gateway}));
    };
    push(&reply.ipv4, &reply.ipv4_gateway, "4", "0.0.0.0/0");
    if let (Some(v6), Some(gw6)) = (&reply.ipv6, &reply.ipv6_gateway) {
        push(v6, gw6, "6", "::/0");
    }
    json!({
        "cniVersion": cni_version,
        "interfaces": [{"name": ifname, "mac": reply.mac, "sandbox": netns}],
        "ips": ips,
        "routes": routes,
        "dns": {},
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const CONF: &str = r#"{"cniVersion":"1.0.0","name":"terway","type":"terway","socket":"/run/t.sock",
        "runtimeConfig":{"bandwidth":{"ingressRate":1000000,"egressRate":2000000}}}"#;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        move |k: &str| map.get(k).cloned()
    }

    fn full_env(command: &str) -> Vec<(&'static str, String)> {
        vec![
            ("CNI_COMMAND", command.to_owned()),
            ("CNI_CONTAINERID", "c0ffee".to_owned()),
            ("CNI_NETNS", "/var/run/netns/cni-1".to_owned()),
            ("CNI_IFNAME", "eth0".to_owned()),
            (
                "CNI_ARGS",
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID=c0ffee"
                    .to_owned(),
            ),
        ]
    }

    fn run(pairs: Vec<(&'static str, String)>, stdin: &str) -> Result<Invocation, CniError> {
        let refs: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (*k, v.as_str())).collect();
        parse(&env(&refs), stdin.as_bytes())
    }

    #[test]
    fn add_reads_everything() {
        let inv = run(full_env("ADD"), CONF).unwrap();
        assert_eq!(inv.command, Command::Add);
        assert_eq!(inv.socket.as_deref(), Some(std::path::Path::new("/run/t.sock")));
        let Some(Request::Add(p)) = inv.request else { panic!() };
        assert_eq!((p.pod_namespace.as_str(), p.pod_name.as_str()), ("default", "web-0"));
        assert_eq!((p.ingress_bps, p.egress_bps), (Some(1_000_000), Some(2_000_000)));
        assert_eq!(p.infra_container_id, "c0ffee");
    }

    #[test]
    fn without_kubernetes_the_attachment_is_keyed_by_container_and_interface() {
        // podman: only its own container name, not a Kubernetes name
        let mut pairs = full_env("ADD");
        pairs[4].1 = "IgnoreUnknown=1;K8S_POD_NAME=Charming_Galileo".into();
        let Some(Request::Add(p)) = run(pairs, CONF).unwrap().request else {
            panic!()
        };
        assert_eq!(p.pod_namespace, protocol::RUNTIME_NAMESPACE);
        assert_eq!(p.pod_name, "c0ffee_eth0");
        assert_eq!(p.runtime_name, "Charming_Galileo");
        assert!(!p.is_kubernetes());
        let bytes = serde_json::to_vec(&Request::Add(p.clone())).unwrap();
        assert_eq!(
            protocol::decode_request(&bytes).unwrap(),
            Request::Add(p),
            "terwayd accepts it"
        );
        // ctr: no CNI_ARGS at all
        let pairs: Vec<_> = full_env("ADD").into_iter().filter(|(k, _)| *k != "CNI_ARGS").collect();
        let Some(Request::Add(p)) = run(pairs, CONF).unwrap().request else {
            panic!()
        };
        assert_eq!(
            (p.pod_namespace.as_str(), p.pod_name.as_str()),
            ("_runtime", "c0ffee_eth0")
        );
        assert_eq!(p.runtime_name, "");
        // a long name in a multi-byte script is cut to what terwayd takes
        let mut pairs = full_env("ADD");
        pairs[4].1 = format!("K8S_POD_NAME={}", "é".repeat(700));
        let Some(request @ Request::Add(_)) = run(pairs, CONF).unwrap().request else {
            panic!()
        };
        protocol::decode_request(&serde_json::to_vec(&request).unwrap()).unwrap();
        // a Kubernetes namespace with a bad name is still refused
        let mut pairs = full_env("ADD");
        pairs[4].1 = "K8S_POD_NAMESPACE=Bad_NS;K8S_POD_NAME=web".into();
        assert!(run(pairs, CONF).unwrap_err().msg.contains("K8S_POD_NAMESPACE"));
    }

    #[test]
    fn del_never_fails_for_want_of_arguments() {
        // no container id, no interface: nothing to name, nothing to ask terwayd
        for missing in ["CNI_CONTAINERID", "CNI_IFNAME"] {
            let pairs: Vec<_> = full_env("DEL").into_iter().filter(|(k, _)| *k != missing).collect();
            let inv = run(pairs, CONF).unwrap();
            assert_eq!((inv.command, inv.request), (Command::Del, None), "{missing}");
        }
        // an empty CNI_NETNS and no CNI_ARGS (ctr's cleanup): keyed by container and interface
        let pairs: Vec<_> = full_env("DEL")
            .into_iter()
            .filter(|(k, _)| *k != "CNI_ARGS")
            .map(|(k, v)| if k == "CNI_NETNS" { (k, String::new()) } else { (k, v) })
            .collect();
        let Some(Request::Del(p)) = run(pairs, CONF).unwrap().request else {
            panic!()
        };
        assert_eq!(
            (p.container_id.as_str(), p.ifname.as_str(), p.netns.as_str()),
            ("c0ffee", "eth0", "")
        );
    }

    /// A fuzz run over CNI_ARGS (with and without the K8S_* keys, with
    /// junk): parsing never panics, and what it accepts terwayd decodes.
    #[test]
    fn fuzzed_cni_args_parse_or_fail_cleanly() {
        let pieces = [
            "IgnoreUnknown=1",
            "K8S_POD_NAMESPACE=default",
            "K8S_POD_NAMESPACE=",
            "K8S_POD_NAMESPACE=Bad_NS",
            "K8S_POD_NAME=web-0",
            "K8S_POD_NAME=Charming Galileo",
            "K8S_POD_NAME=",
            "K8S_POD_NAME=\u{7}bell",
            "K8S_POD_INFRA_CONTAINER_ID=c0ffee",
            "=x",
            "novalue",
            "",
            ";",
            "A=b=c",
            "K8S_POD_NAME=ünïcödé",
        ];
        // a small deterministic generator: every run covers the same 20,000 inputs
        let mut seed: u64 = 0x2026_1130;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let (mut accepted, mut runtime, mut refused) = (0, 0, 0);
        for _ in 0..20_000 {
            let n = next() % 6;
            let args: Vec<&str> = (0..n)
                .map(|_| pieces[(next() % pieces.len() as u64) as usize])
                .collect();
            let mut pairs = full_env(["ADD", "DEL", "CHECK"][(next() % 3) as usize]);
            pairs[4].1 = args.join(";");
            match run(pairs, CONF) {
                Ok(inv) => {
                    accepted += 1;
                    if let Some(Request::Add(p) | Request::Del(p) | Request::Check(p)) = &inv.request {
                        runtime += usize::from(!p.is_kubernetes());
                        let bytes = serde_json::to_vec(inv.request.as_ref().unwrap()).unwrap();
                        protocol::decode_request(&bytes).unwrap_or_else(|e| panic!("{args:?}: {e}"));
                    }
                }
                Err(e) => {
                    refused += 1;
                    assert_eq!(e.code, code::INVALID_ENVIRONMENT, "{args:?}: {e}");
                    assert!(e.msg.contains("CNI_ARGS"), "{args:?}: {e}");
                }
            }
        }
        assert!(
            accepted > 0 && runtime > 0 && refused > 0,
            "{accepted} {runtime} {refused}"
        );
    }

    #[test]
    fn errors_carry_the_spec_codes_and_name_the_culprit() {
        let e = run(vec![], CONF).unwrap_err();
        assert_eq!(e.code, code::INVALID_ENVIRONMENT);
        let e = run(vec![("CNI_COMMAND", "FROB".into())], CONF).unwrap_err();
        assert_eq!(e.code, code::INVALID_ENVIRONMENT);
        assert!(e.msg.contains("FROB"));
        let e = run(full_env("ADD"), "{not json").unwrap_err();
        assert_eq!(e.code, code::DECODING_FAILURE);
        let e = run(full_env("ADD"), r#"{"cniVersion":"0.2.0","name":"t","type":"terway"}"#).unwrap_err();
        assert_eq!(e.code, code::INCOMPATIBLE_VERSION);
        assert!(e.msg.contains("0.2.0"));
        let e = run(full_env("ADD"), r#"{"name":"t","type":"terway"}"#).unwrap_err();
        assert_eq!(e.code, code::INVALID_NETWORK_CONFIG);
        let bad_cidr = r#"{"cniVersion":"1.0.0","name":"t","type":"terway","host_stack_cidrs":["169.254.20.10"]}"#;
        let e = run(full_env("ADD"), bad_cidr).unwrap_err();
        assert_eq!(e.code, code::INVALID_NETWORK_CONFIG);
        assert!(
            e.msg.contains("host_stack_cidrs") && e.msg.contains("169.254.20.10"),
            "{}",
            e.msg
        );
        let good = r#"{"cniVersion":"1.0.0","name":"t","type":"terway","host_stack_cidrs":["169.254.20.10/32"]}"#;
        let inv = run(full_env("ADD"), good).unwrap_or_else(|e| panic!("{}", e.msg));
        let Some(Request::Add(p)) = inv.request else {
            panic!("not an ADD")
        };
        assert_eq!(p.host_stack_cidrs, ["169.254.20.10/32"]);
        let e = run(full_env("ADD"), r#"{"cniVersion":"1.0.0","type":"terway"}"#).unwrap_err();
        assert_eq!(e.code, code::INVALID_NETWORK_CONFIG, "name is required");
        let e = run(
            full_env("ADD"),
            r#"{"cniVersion":"1.0.0","name":"t","type":"terway","runtimeConfig":{"bandwidth":{"ingressRate":"fast"}}}"#,
        )
        .unwrap_err();
        assert_eq!(e.code, code::INVALID_NETWORK_CONFIG);
        for missing in ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"] {
            let pairs: Vec<_> = full_env("ADD").into_iter().filter(|(k, _)| *k != missing).collect();
            let e = run(pairs, CONF).unwrap_err();
            assert_eq!(e.code, code::INVALID_ENVIRONMENT, "{missing}");
            assert!(e.msg.contains(missing), "{e}");
        }
        let mut pairs = full_env("ADD");
        pairs[4].1 = "K8S_POD_NAMESPACE=default".into();
        assert!(run(pairs, CONF).unwrap_err().msg.contains("K8S_POD_NAME"));
        let mut pairs = full_env("ADD");
        pairs[2].1 = "relative/ns".into();
        assert!(run(pairs, CONF).unwrap_err().msg.contains("CNI_NETNS"));
        let mut pairs = full_env("CHECK");
        pairs[0].1 = "CHECK".into();
        let e = run(pairs, r#"{"cniVersion":"0.3.1","name":"t","type":"terway"}"#).unwrap_err();
        assert_eq!(e.code, code::INCOMPATIBLE_VERSION, "CHECK came with 0.4.0");
    }

    #[test]
    fn del_without_netns_is_fine() {
        let pairs: Vec<_> = full_env("DEL").into_iter().filter(|(k, _)| *k != "CNI_NETNS").collect();
        let inv = run(pairs, CONF).unwrap();
        let Some(Request::Del(p)) = inv.request else { panic!() };
        assert!(p.netns.is_empty());
    }

    #[test]
    fn version_gc_status() {
        let inv = run(vec![("CNI_COMMAND", "VERSION".into())], "").unwrap();
        assert_eq!(inv.command, Command::Version);
        let v: Value = serde_json::from_str(&version_output()).unwrap();
        assert_eq!(
            v["supportedVersions"].as_array().unwrap().len(),
            SUPPORTED_VERSIONS.len()
        );
        let gc = run(
            vec![("CNI_COMMAND", "GC".into())],
            r#"{"cniVersion":"1.1.0","name":"t","type":"terway","cni.dev/valid-attachments":[{"containerID":"abc","ifname":"eth0"}]}"#,
        )
        .unwrap();
        assert_eq!(
            gc.request,
            Some(Request::Gc {
                valid: vec![Attachment {
                    container_id: "abc".into(),
                    ifname: "eth0".into()
                }]
            })
        );
        assert_eq!(
            run(
                vec![("CNI_COMMAND", "STATUS".into())],
                r#"{"cniVersion":"1.1.0","name":"t","type":"terway"}"#
            )
            .unwrap()
            .request,
            Some(Request::Status)
        );
        assert_eq!(
            run(vec![("CNI_COMMAND", "GC".into())], CONF).unwrap_err().code,
            code::INCOMPATIBLE_VERSION
        );
    }

    #[test]
    fn results_per_version() {
        let reply = PodNetworkReply {
            ipv4: "192.168.1.5/32".into(),
            ipv4_gateway: "169.254.1.1".into(),
            ipv6: Some("fd00::5/128".into()),
            ipv6_gateway: Some("fe80::1".into()),
            mac: "aa:bb:cc:dd:ee:ff".into(),
        };
        let v1: Value = serde_json::from_str(&render_result("1.0.0", &reply, "eth0", "/var/run/netns/x")).unwrap();
        assert_eq!(v1["cniVersion"], "1.0.0");
        assert_eq!(v1["ips"][0]["address"], "192.168.1.5/32");
        assert!(v1["ips"][0].get("version").is_none(), "1.0.0 has no version field");
        assert_eq!(v1["interfaces"][0]["sandbox"], "/var/run/netns/x");
        for old in ["0.3.1", "0.4.0"] {
            let v: Value = serde_json::from_str(&render_result(old, &reply, "eth0", "/x")).unwrap();
            assert_eq!(v["ips"][0]["version"], "4");
            assert_eq!(v["ips"][1]["version"], "6");
            assert_eq!(v["routes"][1]["dst"], "::/0");
        }
    }

    #[test]
    fn cni_args() {
        assert_eq!(
            parse_cni_args("A=1;B=;C=x=y").unwrap(),
            vec![
                ("A".into(), "1".into()),
                ("B".into(), "".into()),
                ("C".into(), "x=y".into())
            ]
        );
        assert!(parse_cni_args("novalue").is_err());
        assert!(parse_cni_args("=v").is_err());
    }
}
