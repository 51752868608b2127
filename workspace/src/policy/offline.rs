//! Cluster facts from Kubernetes YAML files (`terway-cli policy explain
//! --offline`): multi-document files of Namespace, Pod, ServiceAccount and
//! NetworkPolicy objects, and Calico's NetworkPolicy and GlobalNetworkPolicy
//! (`projectcalico.org/v3` as calicoctl takes them, or the stored
//! `crd.projectcalico.org/v1` form); `kind: List` too. Pods' addresses come
//! from `status.podIP(s)`.

use super::calico::model::CalicoPolicy;
use super::model::{namespace_from_k8s, ClusterState, ObjectKey, PodInfo, Policy};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde::Deserialize;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum OfflineError {
    #[error("{file}: {source}")]
    Read { file: String, source: std::io::Error },
    #[error("{file}: document {doc}: {message}")]
    Parse { file: String, doc: usize, message: String },
}

/// Adds the objects of one YAML text to `state`; returns notes for the
/// caller to print: kinds skipped, Calico policies left out for a problem.
pub fn load_str(state: &mut ClusterState, file: &str, text: &str) -> Result<Vec<String>, OfflineError> {
    let mut skipped = Vec::new();
    for (doc, de) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value = serde_yaml::Value::deserialize(de).map_err(|e| OfflineError::Parse {
            file: file.into(),
            doc: doc + 1,
            message: e.to_string(),
        })?;
        let json = serde_json::to_value(&value).map_err(|e| OfflineError::Parse {
            file: file.into(),
            doc: doc + 1,
            message: e.to_string(),
        })?;
        add_object(state, json, file, doc + 1, &mut skipped)?;
    }
    Ok(skipped)
}

fn add_object(
    state: &mut ClusterState,
    json: serde_json::Value,
    file: &str,
    doc: usize,
    skipped: &mut Vec<String>,
) -> Result<(), OfflineError> {
    let parse_err = |e: serde_json::Error| OfflineError::Parse {
        file: file.into(),
        doc,
        message: e.to_string(),
    };
    let kind = json["kind"].as_str().unwrap_or_default().to_owned();
    match kind.as_str() {
        "" if json.is_null() => {}
        "List"
        | "PodList"
        | "NamespaceList"
        | "NetworkPolicyList"
        | "GlobalNetworkPolicyList"
        | "ServiceAccountList" => {
            for item in json["items"].as_array().cloned().unwrap_or_default() {
                let mut item = item;
                if item["kind"].is_null() {
                    item["kind"] = kind.trim_end_matches("List").into();
                }
                add_object(state, item, file, doc, skipped)?;
            }
        }
        "Namespace" => {
            let ns: Namespace = serde_json::from_value(json).map_err(parse_err)?;
            if let Some((name, labels)) = namespace_from_k8s(&ns) {
                state.namespaces.insert(name, labels);
            }
        }
        "Pod" => {
            let mut pod: Pod = serde_json::from_value(json).map_err(parse_err)?;
            if pod.metadata.namespace.is_none() {
                pod.metadata.namespace = Some("default".into());
            }
            let ns = pod.metadata.namespace.clone().unwrap_or_default();
            state
                .namespaces
                .entry(ns.clone())
                .or_insert_with(|| [("kubernetes.io/metadata.name".to_owned(), ns)].into());
            if let Some((key, info)) = PodInfo::from_k8s(&pod) {
                state.pods.insert(key, info);
            }
        }
        "NetworkPolicy" | "GlobalNetworkPolicy"
            if kind == "GlobalNetworkPolicy"
                || json["apiVersion"].as_str().is_some_and(|v| {
                    v.starts_with("projectcalico.org/") || v.starts_with("crd.projectcalico.org/")
                }) =>
        {
            let policy = CalicoPolicy::from_object(&json).map_err(|message| OfflineError::Parse {
                file: file.into(),
                doc,
                message,
            })?;
            if !policy.problems.is_empty() {
                skipped.push(format!(
                    "{} is left out (Calico policies are applied whole or not at all): {}",
                    policy.id(),
                    policy.problems.join("; ")
                ));
            }
            state.calico.insert(policy.key(), policy);
        }
        "ServiceAccount" => {
            let name = json["metadata"]["name"].as_str().unwrap_or_default();
            let ns = json["metadata"]["namespace"].as_str().unwrap_or("default");
            let labels = serde_json::from_value(json["metadata"]["labels"].clone()).unwrap_or_default();
            state.service_accounts.insert(ObjectKey::new(ns, name), labels);
        }
        "NetworkPolicy" => {
            let mut np: NetworkPolicy = serde_json::from_value(json).map_err(parse_err)?;
            if np.metadata.namespace.is_none() {
                np.metadata.namespace = Some("default".into());
            }
            if let Some(p) = Policy::from_k8s(&np) {
                state.policies.insert(p.key.clone(), p);
            }
        }
        other => skipped.push(format!(
            "skipped {other} {} (only Namespace, Pod, ServiceAccount, NetworkPolicy and Calico's policies are read)",
            json["metadata"]["name"].as_str().unwrap_or("(unnamed)")
        )),
    }
    Ok(())
}

pub fn load_files(paths: &[impl AsRef<Path>]) -> Result<(ClusterState, Vec<String>), OfflineError> {
    let mut state = ClusterState::default();
    let mut skipped = Vec::new();
    for path in paths {
        let path = path.as_ref();
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| OfflineError::Read {
            file: file.clone(),
            source,
        })?;
        skipped.extend(load_str(&mut state, &file, &text)?);
    }
    Ok((state, skipped))
}
