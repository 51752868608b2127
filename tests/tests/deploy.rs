//! The manifests in deploy/ are Kubernetes objects (every field known to
//! the API types: a typo would be dropped by the decoder and caught by the
//! round trip), they agree with what terwayd does (flags, mounts, probes,
//! RBAC), the ConfigMap's eni_conf is valid, the conflist is what terwayd
//! writes, and the systemd unit passes `systemd-analyze verify`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

fn deploy(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy").join(file)
}

/// Every YAML document of a file, as JSON values.
fn documents(file: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(deploy(file)).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("{file}: not YAML: {e}")))
        .filter(|v| !v.is_null())
        .collect()
}

/// Decodes as the API type and checks nothing was lost on the way back.
fn typed<T: DeserializeOwned + Serialize>(file: &str, doc: &Value) -> T {
    let object: T = serde_json::from_value(doc.clone()).unwrap_or_else(|e| {
        panic!(
            "{file}: {} is not a valid {}: {e}",
            doc["metadata"]["name"], doc["kind"]
        )
    });
    let back = serde_json::to_value(&object).unwrap();
    if let Some(path) = difference(doc, &back, String::new()) {
        panic!(
            "{file}: {} {}: {path} is not a field the API knows (or has the wrong type)",
            doc["kind"], doc["metadata"]["name"]
        );
    }
    object
}

/// The first path where the manifest and its decoded-and-encoded form differ.
fn difference(written: &Value, decoded: &Value, path: String) -> Option<String> {
    match (written, decoded) {
        (Value::Object(a), Value::Object(b)) => a.iter().find_map(|(k, v)| match b.get(k) {
            None => Some(format!("{path}.{k}")),
            Some(w) => difference(v, w, format!("{path}.{k}")),
        }),
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => a
            .iter()
            .zip(b)
            .enumerate()
            .find_map(|(i, (v, w))| difference(v, w, format!("{path}[{i}]"))),
        (a, b) if a == b => None,
        _ => Some(path),
    }
}

fn find<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

#[test]
fn every_manifest_is_a_kubernetes_object() {
    let mut kinds = BTreeSet::new();
    for file in ["daemonset.yaml", "rbac.yaml", "configmap.yaml"] {
        for doc in documents(file) {
            let kind = doc["kind"].as_str().unwrap().to_owned();
            match kind.as_str() {
                "DaemonSet" => drop(typed::<DaemonSet>(file, &doc)),
                "ServiceAccount" => drop(typed::<ServiceAccount>(file, &doc)),
                "ClusterRole" => drop(typed::<ClusterRole>(file, &doc)),
                "ClusterRoleBinding" => drop(typed::<ClusterRoleBinding>(file, &doc)),
                "Role" => drop(typed::<Role>(file, &doc)),
                "RoleBinding" => drop(typed::<RoleBinding>(file, &doc)),
                "ConfigMap" => drop(typed::<ConfigMap>(file, &doc)),
                other => panic!("{file}: unexpected kind {other}"),
            }
            kinds.insert(kind);
        }
    }
    assert_eq!(kinds.len(), 7, "{kinds:?}");
}

#[test]
fn the_daemonset_matches_what_terwayd_needs() {
    let docs = documents("daemonset.yaml");
    let ds: DaemonSet = typed("daemonset.yaml", find(&docs, "DaemonSet")[0]);
    let pod = ds.spec.template.spec.unwrap();
    assert_eq!(pod.host_network, Some(true));
    let c = &pod.containers[0];
    let sc = c.security_context.as_ref().unwrap();
    assert_eq!(sc.privileged, Some(false), "no blanket privilege");
    let caps: BTreeSet<&str> = sc
        .capabilities
        .as_ref()
        .unwrap()
        .add
        .as_ref()
        .unwrap()
        .iter()
        .map(String::as_str)
        .collect();
    assert_eq!(caps, BTreeSet::from(["NET_ADMIN", "SYS_ADMIN"]));

    // mounts: config, ledger, CNI bin and conf, /var/run (socket and netns), host sysctls
    let mounts: BTreeSet<&str> = c
        .volume_mounts
        .as_ref()
        .unwrap()
        .iter()
        .map(|m| m.mount_path.as_str())
        .collect();
    for path in [
        "/etc/eni",
        "/var/lib/terway",
        "/host/opt/cni/bin",
        "/host/etc/cni/net.d",
        "/var/run",
        "/host/proc/sys",
    ] {
        assert!(mounts.contains(path), "no mount at {path}");
    }
    let defaults = terway_config::Config::defaults();
    assert!(defaults.ledger_path.starts_with("/var/lib/terway"));
    assert!(defaults.socket_path.starts_with("/var/run"));

    // every flag given is one terwayd run takes
    let command = c.command.as_ref().unwrap();
    let help = Command::new(terway_tests::binary("terwayd"))
        .args(["run", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    for arg in command.iter().filter(|a| a.starts_with("--")) {
        let flag = arg.split('=').next().unwrap();
        assert!(help.contains(flag), "terwayd run has no {flag}");
    }
    assert!(command.contains(&"--config=/etc/eni/eni_conf".to_owned()));

    // NODE_NAME from the downward API, as cluster mode requires
    let env = c.env.as_ref().unwrap();
    let node_name = env.iter().find(|e| e.name == "NODE_NAME").unwrap();
    let field = node_name.value_from.as_ref().unwrap().field_ref.as_ref().unwrap();
    assert_eq!(field.field_path, "spec.nodeName");
    assert!(env
        .iter()
        .any(|e| e.name == "TERWAY_PROC_SYS" && e.value.as_deref() == Some("/host/proc/sys")));

    // probes on the metrics address's port
    let port = defaults.metrics_address.port();
    for (probe, path) in [(&c.readiness_probe, "/readyz"), (&c.liveness_probe, "/healthz")] {
        let get = probe.as_ref().unwrap().http_get.as_ref().unwrap();
        assert_eq!(get.path.as_deref(), Some(path));
        assert_eq!(
            get.port,
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(i32::from(port))
        );
        assert_eq!(get.host.as_deref(), Some("127.0.0.1"));
    }

    // the service account exists in rbac.yaml
    let rbac = documents("rbac.yaml");
    let account: ServiceAccount = typed("rbac.yaml", find(&rbac, "ServiceAccount")[0]);
    assert_eq!(pod.service_account_name, account.metadata.name);
}

#[test]
fn rbac_grants_exactly_what_terwayd_uses() {
    let rbac = documents("rbac.yaml");
    let mut granted = BTreeSet::new();
    for (kind, namespaced) in [("ClusterRole", false), ("Role", true)] {
        for doc in find(&rbac, kind) {
            for rule in doc["rules"].as_array().unwrap() {
                for group in rule["apiGroups"].as_array().unwrap() {
                    for resource in rule["resources"].as_array().unwrap() {
                        for verb in rule["verbs"].as_array().unwrap() {
                            assert_ne!(verb, "*", "no wildcard verbs");
                            assert_ne!(resource, "*", "no wildcard resources");
                            granted.insert((
                                group.as_str().unwrap().to_owned(),
                                resource.as_str().unwrap().to_owned(),
                                verb.as_str().unwrap().to_owned(),
                                namespaced,
                            ));
                        }
                    }
                }
            }
        }
    }
    let used: BTreeSet<(String, String, String, bool)> = terway_node::cluster::API_ACCESS
        .iter()
        .flat_map(|(group, resource, verbs, namespaced)| {
            verbs.iter().map(move |v| {
                (
                    (*group).to_owned(),
                    (*resource).to_owned(),
                    (*v).to_owned(),
                    *namespaced,
                )
            })
        })
        .collect();
    assert_eq!(granted, used);
    // the bindings name the roles and the account
    for binding in find(&rbac, "ClusterRoleBinding")
        .into_iter()
        .chain(find(&rbac, "RoleBinding"))
    {
        assert_eq!(binding["subjects"][0]["name"], "terway-rs");
        let role = binding["roleRef"]["name"].as_str().unwrap();
        assert!(rbac
            .iter()
            .any(|d| d["metadata"]["name"] == role && d["kind"] == binding["roleRef"]["kind"]));
    }
}

#[test]
fn the_configmap_holds_a_valid_eni_conf() {
    let docs = documents("configmap.yaml");
    let cm: ConfigMap = typed("configmap.yaml", &docs[0]);
    assert_eq!(cm.metadata.name.as_deref(), Some(terway_node::cluster::ENI_CONFIG_MAP));
    let text = &cm.data.unwrap()[terway_node::cluster::ENI_CONFIG_KEY];
    let loaded = terway_config::Config::parse(text, None).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(loaded.config.max_pool_size, 25);
    assert_eq!(loaded.config.min_pool_size, 10);
    assert_eq!(loaded.config.vswitches_in_zone("cn-shanghai-f"), ["vsw-AAA", "vsw-BBB"]);
}

#[test]
fn the_conflist_is_what_terwayd_installs() {
    let shipped = std::fs::read_to_string(deploy("10-terway.conflist")).unwrap();
    let defaults = terway_config::Config::defaults();
    let rendered = terway_config::conflist::render(&terway_config::conflist::ConflistOptions {
        mtu: defaults.mtu,
        socket_path: &defaults.socket_path,
        chained: &[terway_config::conflist::ChainedPlugin::Portmap],
    });
    assert_eq!(shipped, rendered);
    let ds = std::fs::read_to_string(deploy("daemonset.yaml")).unwrap();
    assert!(
        ds.contains("--chain=portmap"),
        "the DaemonSet installs this very conflist"
    );
}

#[test]
fn the_systemd_unit_verifies() {
    let Ok(found) = Command::new("systemd-analyze").arg("--version").output() else {
        println!("SKIPPED: systemd-analyze is not installed");
        return;
    };
    assert!(found.status.success());
    let unit = std::fs::read_to_string(deploy("terwayd.service")).unwrap();
    assert!(unit.contains("--standalone"), "the unit runs without a cluster");
    // the binaries as built here stand in for /usr/local/bin
    let unit = unit
        .replace(
            "/usr/local/bin/terwayd",
            terway_tests::binary("terwayd").to_str().unwrap(),
        )
        .replace(
            "/usr/local/bin/terway ",
            &format!("{} ", terway_tests::binary("terway").display()),
        );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("terwayd.service");
    std::fs::write(&path, unit).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !stderr.contains("terwayd.service"),
        "systemd-analyze verify: {stderr}"
    );
}

#[test]
fn the_calico_crds_serve_what_terwayd_watches() {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::Resource;
    use terway_node::cluster::policy_watch::{CalicoGlobalNetworkPolicy, CalicoNetworkPolicy};
    let docs = documents("calico-crds.yaml");
    let crds: Vec<CustomResourceDefinition> = docs.iter().map(|d| typed("calico-crds.yaml", d)).collect();
    let served = |kind: &str, plural: &str, scope: &str| {
        crds.iter().any(|c| {
            c.spec.group == "crd.projectcalico.org"
                && c.spec.names.kind == kind
                && c.spec.names.plural == plural
                && c.spec.scope == scope
                && c.spec.versions.iter().any(|v| v.name == "v1" && v.served)
        })
    };
    assert!(served(
        &CalicoNetworkPolicy::kind(&()),
        &CalicoNetworkPolicy::plural(&()),
        "Namespaced"
    ));
    assert!(served(
        &CalicoGlobalNetworkPolicy::kind(&()),
        &CalicoGlobalNetworkPolicy::plural(&()),
        "Cluster"
    ));
    assert_eq!(CalicoNetworkPolicy::api_version(&()), "crd.projectcalico.org/v1");
}
