//! What NetworkPolicy needs from the API server: every NetworkPolicy,
//! Namespace and Pod, each turned into the engine's trimmed facts as it
//! arrives (no object is kept). The watches run only while policy can be
//! enforced here ([`Node::policy_refusal`]); switching
//! `disable_network_policy` on stops them and removes the table, live.

use super::{Cluster, Notice};
use crate::daemon::Node;
use crate::policy::calico::model::CalicoPolicy;
use crate::policy::model::{namespace_from_k8s, Labels, ObjectKey, PodInfo, Policy};
use crate::policy::Enforcer;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::Api;
use serde::de::DeserializeOwned;
use std::borrow::Cow;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use terway_config::Config;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Starts and stops the watches as the configuration allows, until aborted.
pub async fn supervise(node: Arc<Node>, cluster: Arc<Cluster>, mut config: watch::Receiver<Arc<Config>>) {
    let syncer = AbortOnDrop(tokio::spawn(node.policy.clone().sync_loop()));
    let mut running: Option<Vec<AbortOnDrop>> = None;
    let mut first = true;
    loop {
        // the config as this receiver sees it: the node may not have applied it yet
        let current = config.borrow_and_update().clone();
        match (node.policy_refusal_with(&current), running.is_some()) {
            (None, false) => {
                tracing::info!("NetworkPolicy on: watching NetworkPolicies, namespaces and pods");
                node.policy.activate();
                running = Some(start(&node, &cluster));
            }
            (Some(why), true) => {
                tracing::info!(reason = %why, "NetworkPolicy off: watches stopped, table removed");
                running = None;
                if let Err(e) = node.policy.deactivate().await {
                    tracing::warn!(error = %e, "could not remove the NetworkPolicy table");
                }
            }
            (Some(why), false) if first => {
                tracing::info!(reason = %why, "NetworkPolicy is not enforced on this node");
                // a table left by an earlier run with policy on must not keep
                // isolating pods (there is none to look for without a datapath)
                if node.datapath.is_none() {
                } else if let Err(e) = node.policy.deactivate().await {
                    tracing::debug!(error = %e, "no NetworkPolicy table to remove");
                }
            }
            _ => {}
        }
        first = false;
        if config.changed().await.is_err() {
            break;
        }
    }
    drop(syncer);
}

#[derive(Debug)]
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Which watches have listed once; all of them make the engine ready.
#[derive(Debug)]
struct Listed {
    done: AtomicU8,
    all: u8,
}

impl Listed {
    fn mark(&self, bit: u8, node: &Node) {
        if self.done.fetch_or(bit, Ordering::SeqCst) | bit == self.all {
            node.policy.set_ready();
        }
    }
}

fn start(node: &Arc<Node>, cluster: &Arc<Cluster>) -> Vec<AbortOnDrop> {
    let listed = Arc::new(Listed {
        done: AtomicU8::new(0),
        all: 0b11_1111,
    });
    vec![
        spawn_watch::<NetworkPolicy>(node, cluster, &listed, 1),
        spawn_watch::<Namespace>(node, cluster, &listed, 1 << 1),
        spawn_watch::<Pod>(node, cluster, &listed, 1 << 2),
        spawn_watch::<ServiceAccount>(node, cluster, &listed, 1 << 3),
        spawn_watch::<CalicoNetworkPolicy>(node, cluster, &listed, 1 << 4),
        spawn_watch::<CalicoGlobalNetworkPolicy>(node, cluster, &listed, 1 << 5),
    ]
}

fn spawn_watch<W: Watched>(node: &Arc<Node>, cluster: &Arc<Cluster>, listed: &Arc<Listed>, bit: u8) -> AbortOnDrop {
    AbortOnDrop(tokio::spawn(watch::<W>(
        node.clone(),
        cluster.clone(),
        listed.clone(),
        bit,
    )))
}

fn key_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Option<ObjectKey> {
    Some(ObjectKey::new(meta.namespace.as_deref()?, meta.name.as_deref()?))
}

/// A kind the engine learns from: how an object becomes a fact, and how the
/// engine takes a whole listing, a change and a removal.
trait Watched:
    kube::Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static
{
    const KIND: &'static str;
    /// The kind's API may be absent (a CRD not installed): listed as empty
    /// meanwhile, and watched for when it appears.
    const OPTIONAL: bool = false;
    type Key: Send;
    type Fact: Send;
    /// `None`: the object gives no fact (a finished pod, an unnamed object).
    fn fact(&self, cluster: &Cluster) -> Option<(Self::Key, Self::Fact)>;
    fn key(&self) -> Option<Self::Key>;
    fn replace(engine: &mut Enforcer, all: Vec<(Self::Key, Self::Fact)>);
    fn put(engine: &mut Enforcer, key: Self::Key, fact: Option<Self::Fact>);
}

impl Watched for NetworkPolicy {
    const KIND: &'static str = "NetworkPolicy";
    type Key = ObjectKey;
    type Fact = Policy;
    /// The policy, with a Warning Event for each field that cannot be enforced as written.
    fn fact(&self, cluster: &Cluster) -> Option<(ObjectKey, Policy)> {
        let policy = Policy::from_k8s(self)?;
        for problem in &policy.problems {
            tracing::warn!(policy = %policy.key, problem = %problem, "NetworkPolicy field cannot be enforced as written");
            cluster.notify(Notice::PolicyEvent {
                kind: "NetworkPolicy",
                api_version: "networking.k8s.io/v1",
                namespace: policy.key.namespace.clone(),
                name: policy.key.name.clone(),
                uid: self.metadata.uid.clone().unwrap_or_default(),
                reason: "PolicyNotEnforced",
                message: problem.clone(),
            });
        }
        Some((policy.key.clone(), policy))
    }
    fn key(&self) -> Option<ObjectKey> {
        key_of(&self.metadata)
    }
    fn replace(engine: &mut Enforcer, all: Vec<(ObjectKey, Policy)>) {
        engine.replace_policies(all.into_iter().collect());
    }
    fn put(engine: &mut Enforcer, key: ObjectKey, fact: Option<Policy>) {
        engine.set_policy(key, fact);
    }
}

impl Watched for Namespace {
    const KIND: &'static str = "Namespace";
    type Key = String;
    type Fact = Labels;
    fn fact(&self, _: &Cluster) -> Option<(String, Labels)> {
        namespace_from_k8s(self)
    }
    fn key(&self) -> Option<String> {
        self.metadata.name.clone()
    }
    fn replace(engine: &mut Enforcer, all: Vec<(String, Labels)>) {
        engine.replace_namespaces(all.into_iter().collect());
    }
    fn put(engine: &mut Enforcer, key: String, fact: Option<Labels>) {
        engine.set_namespace(&key, fact);
    }
}

impl Watched for Pod {
    const KIND: &'static str = "Pod";
    type Key = ObjectKey;
    type Fact = PodInfo;
    /// `None` for a finished pod: its address may go to another pod.
    fn fact(&self, _: &Cluster) -> Option<(ObjectKey, PodInfo)> {
        PodInfo::from_k8s(self)
    }
    fn key(&self) -> Option<ObjectKey> {
        key_of(&self.metadata)
    }
    fn replace(engine: &mut Enforcer, all: Vec<(ObjectKey, PodInfo)>) {
        engine.replace_pods(all.into_iter().collect());
    }
    fn put(engine: &mut Enforcer, key: ObjectKey, fact: Option<PodInfo>) {
        match fact {
            Some(info) => engine.upsert_pod(key, info),
            None => engine.remove_pod(&key),
        }
    }
}

/// Lists and watches every object of one kind cluster-wide, into the engine.
async fn watch<W: Watched>(node: Arc<Node>, cluster: Arc<Cluster>, listed: Arc<Listed>, bit: u8) {
    let api = Api::<W>::all(cluster.client());
    let mut stream = watcher::watcher(api, watcher::Config::default())
        .backoff(super::ApiBackoff::default())
        .boxed();
    let mut listing = Vec::new();
    let mut absent = false;
    while let Some(event) = stream.next().await {
        match event {
            Ok(Event::Init) => listing.clear(),
            Ok(Event::InitApply(object)) => listing.extend(object.fact(&cluster)),
            Ok(Event::InitDone) => {
                absent = false;
                let all = std::mem::take(&mut listing);
                tracing::info!(kind = W::KIND, objects = all.len(), "listed for NetworkPolicy");
                node.policy.update(|e| W::replace(e, all));
                listed.mark(bit, &node);
            }
            Ok(Event::Apply(object)) => match object.fact(&cluster) {
                Some((key, fact)) => node.policy.update(|e| W::put(e, key, Some(fact))),
                None => {
                    if let Some(key) = object.key() {
                        node.policy.update(|e| W::put(e, key, None));
                    }
                }
            },
            Ok(Event::Delete(object)) => {
                if let Some(key) = object.key() {
                    node.policy.update(|e| W::put(e, key, None));
                }
            }
            Err(watcher::Error::InitialListFailed(kube::Error::Api(status))) if W::OPTIONAL && status.code == 404 => {
                if !absent {
                    absent = true;
                    tracing::info!(
                        kind = W::KIND,
                        "not served by this cluster (its CRD is not installed); none enforced until it appears"
                    );
                    node.policy.update(|e| W::replace(e, Vec::new()));
                    listed.mark(bit, &node);
                }
            }
            Err(e) => tracing::warn!(kind = W::KIND, error = %e, "watch for NetworkPolicy failed; retrying"),
        }
    }
}

impl Watched for ServiceAccount {
    const KIND: &'static str = "ServiceAccount";
    type Key = ObjectKey;
    type Fact = Labels;
    fn fact(&self, _: &Cluster) -> Option<(ObjectKey, Labels)> {
        Some((
            key_of(&self.metadata)?,
            self.metadata.labels.clone().unwrap_or_default(),
        ))
    }
    fn key(&self) -> Option<ObjectKey> {
        key_of(&self.metadata)
    }
    fn replace(engine: &mut Enforcer, all: Vec<(ObjectKey, Labels)>) {
        engine.replace_service_accounts(all.into_iter().collect());
    }
    fn put(engine: &mut Enforcer, key: ObjectKey, fact: Option<Labels>) {
        engine.set_service_account(key, fact);
    }
}

/// Calico's policy kinds as its Kubernetes datastore keeps them
/// (`crd.projectcalico.org/v1`, the `projectcalico.org/v3` spec inside).
macro_rules! calico_kind {
    ($name:ident, $kind:literal, $plural:literal, $scope:ty) => {
        #[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
        pub struct $name {
            pub metadata: ObjectMeta,
            #[serde(default)]
            pub spec: serde_json::Value,
        }

        impl kube::Resource for $name {
            type DynamicType = ();
            type Scope = $scope;
            fn kind(_: &()) -> Cow<'_, str> {
                $kind.into()
            }
            fn group(_: &()) -> Cow<'_, str> {
                "crd.projectcalico.org".into()
            }
            fn version(_: &()) -> Cow<'_, str> {
                "v1".into()
            }
            fn plural(_: &()) -> Cow<'_, str> {
                $plural.into()
            }
            fn meta(&self) -> &ObjectMeta {
                &self.metadata
            }
            fn meta_mut(&mut self) -> &mut ObjectMeta {
                &mut self.metadata
            }
        }

        impl Watched for $name {
            const KIND: &'static str = concat!("crd.projectcalico.org/v1 ", $kind);
            const OPTIONAL: bool = true;
            type Key = ObjectKey;
            type Fact = CalicoPolicy;
            fn fact(&self, cluster: &Cluster) -> Option<(ObjectKey, CalicoPolicy)> {
                let object = serde_json::json!({"kind": $kind, "metadata": &self.metadata, "spec": &self.spec});
                let policy = CalicoPolicy::from_object(&object).ok()?;
                calico_problems(cluster, &policy, self.metadata.uid.as_deref(), $kind);
                Some((policy.key(), policy))
            }
            fn key(&self) -> Option<ObjectKey> {
                let ns = self.metadata.namespace.as_deref().unwrap_or("");
                Some(ObjectKey::new(ns, self.metadata.name.as_deref()?))
            }
            fn replace(engine: &mut Enforcer, all: Vec<(ObjectKey, CalicoPolicy)>) {
                // a listing replaces its own kind only: global policies live under namespace ""
                let global = $kind == "GlobalNetworkPolicy";
                let mut policies = engine.state.calico.clone();
                policies.retain(|k, _| k.namespace.is_empty() != global);
                policies.extend(all);
                engine.replace_calico(policies);
            }
            fn put(engine: &mut Enforcer, key: ObjectKey, fact: Option<CalicoPolicy>) {
                engine.set_calico(key, fact);
            }
        }
    };
}

calico_kind!(
    CalicoNetworkPolicy,
    "NetworkPolicy",
    "networkpolicies",
    kube::core::NamespaceResourceScope
);
calico_kind!(
    CalicoGlobalNetworkPolicy,
    "GlobalNetworkPolicy",
    "globalnetworkpolicies",
    kube::core::ClusterResourceScope
);

/// A Calico policy with a field the engine cannot enforce is not applied: a
/// Warning Event names each such field.
fn calico_problems(cluster: &Cluster, policy: &CalicoPolicy, uid: Option<&str>, kind: &'static str) {
    for problem in &policy.problems {
        tracing::warn!(policy = %policy.id(), problem = %problem, "Calico policy not applied");
        cluster.notify(Notice::PolicyEvent {
            kind,
            api_version: "crd.projectcalico.org/v1",
            namespace: policy.namespace.clone().unwrap_or_default(),
            name: policy.name.clone(),
            uid: uid.unwrap_or_default().to_owned(),
            reason: "PolicyNotEnforced",
            message: format!("not applied (a Calico policy is applied whole or not at all): {problem}"),
        });
    }
}
