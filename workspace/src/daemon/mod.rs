//! terwayd's node service: start-up, shared state, and the tasks it runs
//! (the CNI socket service and the reconciler).

pub mod cni_service;
pub mod datapath_agent;
pub mod inspect;
pub mod ipam;
pub mod measurements;
pub(crate) mod pod_network;
pub mod reconciler;
pub mod vswitch;

use anyhow::Context;
use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicU64};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use terway_cloud::api::DescribeNetworkInterfaces;
use terway_cloud::{ClientOptions, CloudClient, CredentialProvider, InstanceIdentity, MetadataClient};
use terway_config::capacity::InstanceLimits;
use terway_config::Config;
use terway_datapath::Datapath;
use terway_statestore::{Ledger, OpenOptions};
use tokio::sync::Notify;
use vswitch::VSwitchSelector;

/// Tag every ENI terway-rs creates carries (as upstream's controlplane does).
pub const CREATOR_TAG: (&str, &str) = ("creator", "terway");
/// Tag naming the instance an ENI was created for, so `eni gc` finds its own.
pub const NODE_TAG: &str = "terway.alibabacloud.com/node";
/// Tag of an ENI made to be given whole to one pod on a shared node, so it
/// is known for what it is after a crash between create and record.
pub const EXCLUSIVE_TAG: (&str, &str) = ("terway.alibabacloud.com/exclusive", "true");

/// What terwayd needs that does not come from the config file.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    /// The datapath's host namespace; `None` runs IPAM only (no pod networking).
    pub datapath: Option<Arc<Datapath>>,
    /// How long an ADD waits for an address before answering "try again later".
    pub add_deadline: Duration,
    /// Overrides `socket_path` of the config (tests, the demo).
    pub socket_path: Option<PathBuf>,
    /// Overrides `ledger_path` of the config.
    pub ledger_path: Option<PathBuf>,
    /// Overrides `metrics_address` of the config (port 0: any free port).
    pub metrics_address: Option<std::net::SocketAddr>,
    /// The Kubernetes cluster to integrate with; `None` is standalone mode.
    pub cluster: Option<crate::bridge::ClusterOptions>,
    /// Pod facts and notices from somewhere else than Kubernetes (tests);
    /// not together with `cluster`.
    pub bridge: Option<Arc<dyn crate::bridge::ClusterBridge>>,
    /// Copies the plugin and writes the conflist once terwayd serves.
    pub install_cni: Option<InstallCni>,
}

/// Where the CNI plugin and its conflist go once terwayd is ready, so
/// kubelet never schedules pods onto a node whose CNI cannot serve.
#[derive(Debug, Clone)]
pub struct InstallCni {
    /// The `terway` binary to copy.
    pub plugin: PathBuf,
    /// `/opt/cni/bin` on the host.
    pub bin_dir: PathBuf,
    /// `/etc/cni/net.d` on the host.
    pub conf_dir: PathBuf,
    pub chained: Vec<terway_config::conflist::ChainedPlugin>,
}

impl Default for NodeOptions {
    fn default() -> Self {
        Self {
            datapath: None,
            add_deadline: Duration::from_secs(60),
            socket_path: None,
            ledger_path: None,
            metrics_address: None,
            cluster: None,
            bridge: None,
            install_cni: None,
        }
    }
}

/// The node service's shared state.
#[derive(Debug)]
pub struct Node {
    /// The configuration in force; replaced live by [`Node::set_config`].
    config: std::sync::RwLock<Arc<Config>>,
    pub identity: InstanceIdentity,
    pub node_ip: Ipv4Addr,
    pub limits: InstanceLimits,
    pub(crate) security_groups: Vec<String>,
    pub ledger: Arc<Ledger>,
    pub cloud: CloudClient,
    pub(crate) metadata: Arc<MetadataClient>,
    pub(crate) datapath: Option<Arc<Datapath>>,
    pub(crate) options: NodeOptions,
    pub(crate) vswitches: Mutex<VSwitchSelector>,
    /// ADD requests waiting for an address (or, on an exclusive-ENI node, an ENI).
    pub(crate) waiting: AtomicU32,
    /// ADD requests on a shared node waiting for a whole ENI (`k8s.aliyun.com/pod-eni`).
    pub(crate) waiting_eni: AtomicU32,
    /// Wakes the reconciler.
    pub(crate) wake: Notify,
    /// Wakes waiting ADDs when the pool changed.
    pub(crate) pool_changed: Notify,
    /// Why the pool last failed to grow (shown to waiting ADDs).
    pub(crate) last_error: Mutex<Option<String>>,
    pub(crate) reconcile_passes: AtomicU64,
    /// CNI requests being answered; SIGTERM waits for them.
    pub(crate) in_flight: std::sync::atomic::AtomicUsize,
    pub(crate) request_done: Notify,
    /// The CNI socket is bound and accepting (for `/readyz`).
    pub(crate) serving: std::sync::atomic::AtomicBool,
    pub metrics: measurements::NodeMetrics,
    /// The cluster bridge (Kubernetes, or the one given in the options);
    /// unset in standalone mode.
    pub(crate) bridge: std::sync::OnceLock<Arc<dyn crate::bridge::ClusterBridge>>,
    /// NetworkPolicy, enforced at this node's pods (on while a cluster is
    /// connected, a datapath wires pods and `disable_network_policy` is off).
    pub policy: Arc<crate::policy::PolicyAgent>,
    pod_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Node {
    /// Reads the instance's identity, opens the cloud client and the ledger.
    /// When the metadata service or the cloud cannot be reached, the facts
    /// recorded at the last start are used, so DEL and ADD from confirmed idle
    /// addresses keep working; the reconciler catches up when the cloud is back.
    pub async fn start(config: Arc<Config>, options: NodeOptions) -> anyhow::Result<Arc<Self>> {
        let metadata =
            Arc::new(MetadataClient::new(&config.endpoints.metadata, Duration::from_secs(3))?.with_attempts(2));
        let from_metadata = async {
            let identity = metadata.identity().await?;
            let ip: Ipv4Addr = metadata
                .get("private-ipv4")
                .await?
                .parse()
                .map_err(|_| anyhow::anyhow!("metadata private-ipv4 is not an IPv4 address"))?;
            anyhow::Ok((identity, ip))
        }
        .await;
        let ledger_path = options
            .ledger_path
            .clone()
            .unwrap_or_else(|| config.ledger_path.clone());
        if let Some(parent) = ledger_path.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        let instance_id = from_metadata.as_ref().ok().map(|(i, _)| i.instance_id.clone());
        let ledger = Arc::new(Ledger::open_with(
            &ledger_path,
            &OpenOptions {
                instance_id,
                ..OpenOptions::default()
            },
        )?);
        for problem in ledger.check() {
            tracing::error!(%problem, "ledger inconsistency (terway-ledger repair moves it aside)");
        }
        let (identity, node_ip) = match from_metadata {
            Ok(found) => {
                ledger.set_node_fact("identity", &found.0)?;
                ledger.set_node_fact("ip", &found.1)?;
                found
            }
            Err(e) => {
                let cached = ledger
                    .node_fact::<InstanceIdentity>("identity")?
                    .zip(ledger.node_fact::<Ipv4Addr>("ip")?);
                let Some(cached) = cached else {
                    return Err(e.context("reading the instance identity from the metadata service (and none is recorded from an earlier start)"));
                };
                tracing::warn!(error = %e, "metadata service unreachable; using the identity recorded at the last start");
                cached
            }
        };
        let credentials = Arc::new(CredentialProvider::resolve(
            config.access_key.as_deref(),
            config.access_secret.as_ref(),
            metadata.clone(),
        ));
        let cloud = CloudClient::new(ClientOptions::from_config(&config, &identity.region_id), credentials)?;
        let from_cloud = async {
            let itype = cloud.instance_type(&identity.instance_type).await?;
            let limits = (itype.eni_quantity, itype.eni_private_ip_address_quantity);
            let groups = if config.security_groups.is_empty() {
                let primary = cloud
                    .call(&DescribeNetworkInterfaces {
                        region_id: identity.region_id.clone(),
                        instance_id: Some(identity.instance_id.clone()),
                        kind: Some("Primary".into()),
                        ..Default::default()
                    })
                    .await?;
                primary
                    .network_interface_sets
                    .items
                    .first()
                    .map(|e| e.security_group_ids.items.clone())
                    .unwrap_or_default()
            } else {
                config.security_groups.clone()
            };
            anyhow::Ok((limits, groups))
        }
        .await;
        let ((enis, ipv4_per_eni), security_groups) = match from_cloud {
            Ok(found) => {
                ledger.set_node_fact("limits", &found.0)?;
                ledger.set_node_fact("security_groups", &found.1)?;
                found
            }
            Err(e) => {
                let cached = ledger
                    .node_fact::<(u32, u32)>("limits")?
                    .zip(ledger.node_fact::<Vec<String>>("security_groups")?);
                let Some(cached) = cached else {
                    return Err(e.context(
                        "reading the instance type's ENI quotas (and none are recorded from an earlier start)",
                    ));
                };
                tracing::warn!(error = %e, "cloud unreachable; using the capacity recorded at the last start");
                cached
            }
        };
        let limits = InstanceLimits { enis, ipv4_per_eni };
        tracing::info!(
            instance = %identity.instance_id, zone = %identity.zone_id, instance_type = %identity.instance_type,
            enis = limits.enis, ips_per_eni = limits.ipv4_per_eni, max_pods = config.max_pods(limits),
            "node identity and capacity"
        );
        let bridge = std::sync::OnceLock::new();
        if let Some(b) = &options.bridge {
            let _ = bridge.set(b.clone());
        }
        // nft runs in the datapath's host namespace (the simulated node's, in tests)
        let nft = crate::policy::nft::Nft::new(options.datapath.as_ref().map(|dp| dp.host().path()));
        let policy = Arc::new(crate::policy::PolicyAgent::new(crate::policy::Enforcer::new(nft)));
        let node = Arc::new(Self {
            config: std::sync::RwLock::new(config),
            identity,
            node_ip,
            limits,
            security_groups,
            ledger,
            cloud,
            metadata,
            datapath: options.datapath.clone(),
            options,
            vswitches: Mutex::new(VSwitchSelector::default()),
            waiting: AtomicU32::new(0),
            waiting_eni: AtomicU32::new(0),
            wake: Notify::new(),
            pool_changed: Notify::new(),
            last_error: Mutex::new(None),
            reconcile_passes: AtomicU64::new(0),
            in_flight: std::sync::atomic::AtomicUsize::new(0),
            request_done: Notify::new(),
            serving: std::sync::atomic::AtomicBool::new(false),
            metrics: measurements::NodeMetrics::default(),
            bridge,
            policy,
            pod_locks: Mutex::new(HashMap::new()),
        });
        // the pods this node wired before a restart: policy knows them before any watch answers
        for record in node.ledger.snapshot().pods.values() {
            if let Some((key, local, unpoliced)) = pod_network::policy_local(&node, record) {
                node.policy.update(|e| e.add_local(key, local, None, unpoliced));
            }
        }
        Ok(node)
    }

    /// Whether NetworkPolicy can be enforced here at all, and why not.
    pub fn policy_refusal(&self) -> Option<String> {
        self.policy_refusal_with(&self.config())
    }

    /// [`Node::policy_refusal`] under `config` (a reload not yet applied to the node).
    pub fn policy_refusal_with(&self, config: &Config) -> Option<String> {
        if config.disable_network_policy {
            return Some("disable_network_policy is set".into());
        }
        if self.datapath.is_none() {
            return Some("terwayd runs without a datapath (IPAM only): no pod interface to police".into());
        }
        if config.datapath_mode.is_exclusive() {
            return Some("exclusive ENI mode: pod traffic never crosses the host, so NetworkPolicy cannot be enforced (the seed offers it only with exclusive ENI off)".into());
        }
        None
    }

    /// Pods this node can serve now: on a shared node every ENI taken whole
    /// by one pod serves that pod instead of `ips_per_eni` shared ones.
    pub fn max_pods(&self) -> u32 {
        let config = self.config();
        let base = config.max_pods(self.limits);
        if config.datapath_mode.is_exclusive() {
            return base;
        }
        let whole = self.ledger.exclusive_enis() as u32;
        base.saturating_sub(whole.saturating_mul(self.limits.ipv4_per_eni.saturating_sub(1)))
    }

    /// Asks the reconciler for a pass now (it reads the cloud only if due).
    pub fn reconcile_soon(&self) {
        self.wake.notify_one();
    }

    /// The vSwitches new ENIs are made on: those configured for this zone, or
    /// (none listed) the instance's own, as upstream does.
    pub(crate) fn configured_vswitches(&self) -> Vec<String> {
        let config = self.config();
        let listed = config.vswitches_in_zone(&self.identity.zone_id);
        if listed.is_empty() {
            vec![self.identity.vswitch_id.clone()]
        } else {
            listed.to_vec()
        }
    }

    /// vSwitches set aside after running out, with the time each has left.
    pub fn vswitches_set_aside(&self) -> Vec<(String, Duration)> {
        self.vswitches
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .set_aside_now()
    }

    /// The configuration in force.
    pub fn config(&self) -> Arc<Config> {
        self.config.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Puts a reloaded configuration in force (its restart-only settings were
    /// already held at their running values by the watcher) and wakes the reconciler.
    pub fn set_config(&self, config: Arc<Config>) {
        *self.config.write().unwrap_or_else(PoisonError::into_inner) = config;
        self.wake.notify_one();
        self.pool_changed.notify_waiters();
    }

    /// Follows a config watcher until the task is aborted.
    pub async fn follow_config(self: Arc<Self>, mut updates: tokio::sync::watch::Receiver<Arc<Config>>) {
        while updates.changed().await.is_ok() {
            let next = updates.borrow_and_update().clone();
            tracing::info!("configuration reloaded");
            self.set_config(next);
        }
    }

    /// The lock serialising requests for one pod.
    pub(crate) fn pod_lock(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.pod_locks.lock().unwrap_or_else(PoisonError::into_inner);
        locks.retain(|_, l| Arc::strong_count(l) > 1);
        locks.entry(key.to_owned()).or_default().clone()
    }

    /// `vswitch` ran out (`why`: the cloud's error): skip it for the configured cooldown.
    pub(crate) fn set_vswitch_aside(&self, vswitch: &str, why: &str) {
        let cooldown = self.config().vswitch_cooldown;
        self.vswitches
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .set_aside(vswitch, cooldown);
        self.tell(crate::bridge::Notice::NodeEvent {
            warning: true,
            reason: "IpNotEnough",
            message: format!(
                "vSwitch {vswitch} has no free address; set aside for {}s, the next configured vSwitch is used: {why}",
                cooldown.as_secs()
            ),
        });
        if let Some(c) = self.bridge.get() {
            c.status_changed();
        }
    }

    /// Tells the cluster (Events, annotations); nothing in standalone mode.
    pub(crate) fn tell(&self, notice: crate::bridge::Notice) {
        if let Some(c) = self.bridge.get() {
            c.tell(notice);
        }
    }

    pub(crate) fn set_last_error(&self, e: Option<String>) {
        *self.last_error.lock().unwrap_or_else(PoisonError::into_inner) = e;
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    pub fn socket_path(&self) -> PathBuf {
        self.options
            .socket_path
            .clone()
            .unwrap_or_else(|| self.config().socket_path.clone())
    }
}
