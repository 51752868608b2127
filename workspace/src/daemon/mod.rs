//! terwayd's node service: start-up, shared state, and the tasks it runs
//! (the CNI socket service and the reconciler).

pub mod cni_service;
pub mod datapath_agent;
pub mod inspect;
pub mod ipam;
pub mod masquerade;
pub mod measurements;
pub(crate) mod pod_network;
pub mod reconciler;
pub mod upstream;
pub mod vswitch;

use anyhow::Context;
use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicU64};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use terway_cloud::api::DescribeNetworkInterfaces;
use terway_cloud::credentials::CredentialFiles;
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

/// One metadata request's bound, and attempts per read: the metadata
/// service answers in milliseconds when it answers at all.
const METADATA_TIMEOUT: Duration = Duration::from_secs(2);
const METADATA_ATTEMPTS: u32 = 2;
/// How long a start with recorded facts gives the metadata service to
/// confirm the instance before serving without it.
const QUICK_IDENTITY: Duration = Duration::from_millis(50);
/// The bound on one background confirmation of the node's facts.
const CONFIRM_BUDGET: Duration = Duration::from_secs(20);

/// Start-up work that runs after terwayd serves, shown by `/readyz` until done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    Metadata,
    Cloud,
}

impl std::fmt::Display for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Pending::Metadata => {
                "the instance identity recorded in the ledger is not yet confirmed by the metadata service"
            }
            Pending::Cloud => {
                "the instance type's ENI quotas recorded in the ledger are not yet confirmed by the cloud"
            }
        })
    }
}

/// The node's facts as the last start recorded them.
struct RecordedFacts {
    identity: InstanceIdentity,
    ip: Ipv4Addr,
    limits: (u32, u32),
    security_groups: Vec<String>,
}

impl RecordedFacts {
    /// All of them, or `None` when any is missing (a first start).
    fn read(ledger: &Ledger) -> anyhow::Result<Option<Self>> {
        let (Some(identity), Some(ip), Some(limits), Some(security_groups)) = (
            ledger.node_fact::<InstanceIdentity>("identity")?,
            ledger.node_fact::<Ipv4Addr>("ip")?,
            ledger.node_fact::<(u32, u32)>("limits")?,
            ledger.node_fact::<Vec<String>>("security_groups")?,
        ) else {
            return Ok(None);
        };
        Ok(Some(Self {
            identity,
            ip,
            limits,
            security_groups,
        }))
    }
}

/// The ledger was recorded by another instance than the metadata service names.
fn not_this_instance(ledger: &Ledger, recorded: &InstanceIdentity, now: &InstanceIdentity) -> anyhow::Error {
    anyhow::anyhow!(
        "the metadata service says this is instance {}, the ledger {} was recorded by {}",
        now.instance_id,
        ledger.path().display(),
        recorded.instance_id
    )
}

/// The instance's identity and primary address from the metadata service.
async fn read_metadata(metadata: &MetadataClient) -> anyhow::Result<(InstanceIdentity, Ipv4Addr)> {
    let identity = metadata.identity().await?;
    let ip = metadata.get("private-ipv4").await?;
    let ip = ip
        .trim()
        .parse()
        .map_err(|_| anyhow::anyhow!("metadata private-ipv4 {ip:?} is not an IPv4 address"))?;
    Ok((identity, ip))
}

/// The instance type's ENI quotas, and the security groups new ENIs get
/// (configured, or the primary ENI's).
async fn read_capacity(
    cloud: &CloudClient,
    config: &Config,
    identity: &InstanceIdentity,
) -> anyhow::Result<((u32, u32), Vec<String>)> {
    let itype = cloud.instance_type(&identity.instance_type).await?;
    let mut limits = (itype.eni_quantity, itype.eni_private_ip_address_quantity);
    if config.ip_stack == terway_config::IpStack::Dual {
        // every pod takes one address of each family from one ENI
        if itype.eni_ipv6_address_quantity == 0 {
            anyhow::bail!(
                "ip_stack is \"dual\" but instance type {} takes no IPv6 address on an ENI (EniIpv6AddressQuantity 0)",
                identity.instance_type
            );
        }
        limits.1 = limits.1.min(itype.eni_ipv6_address_quantity);
    }
    if !config.security_groups.is_empty() {
        return Ok((limits, config.security_groups.clone()));
    }
    let primary = cloud
        .call(&DescribeNetworkInterfaces {
            region_id: identity.region_id.clone(),
            instance_id: Some(identity.instance_id.clone()),
            kind: Some("Primary".into()),
            ..Default::default()
        })
        .await?;
    let groups = primary
        .network_interface_sets
        .items
        .first()
        .map(|e| e.security_group_ids.items.clone())
        .unwrap_or_default();
    Ok((limits, groups))
}

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
    /// Upstream Terway's pod records, read once at start to take its pods
    /// over ([`upstream::RES_RELATION_DB`] on a node; `None`: not read).
    pub upstream_db: Option<PathBuf>,
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
            upstream_db: None,
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
    /// The security groups found at the first start: the configured ones,
    /// or the primary ENI's when none were configured.
    pub(crate) security_groups: Vec<String>,
    pub ledger: Arc<Ledger>,
    /// Start-up work still under way in the background (shown by `/readyz`).
    pending: Mutex<Vec<Pending>>,
    /// Set when the node must stop (the ledger belongs to another instance).
    fatal: tokio::sync::watch::Sender<Option<String>>,
    pub cloud: CloudClient,
    pub(crate) metadata: Arc<MetadataClient>,
    /// The Service CIDR the cluster's kubeadm-config names, when the
    /// configuration sets none (see [`Node::service_cidr`]).
    pub(crate) cluster_service_cidr: std::sync::OnceLock<ipnet::Ipv4Net>,
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
    /// Exclusive-ENI pods' host-path traffic masqueraded (with the datapath only).
    pub masquerade: Option<masquerade::Masquerade>,
    /// Addresses pods wired before terwayd use, found at start and not yet
    /// in the ledger: held when the reconciler adopts them.
    pub(crate) upstream_pods: Mutex<std::collections::BTreeMap<std::net::IpAddr, upstream::Holder>>,
    /// ENIs upstream gave whole to pods still running (ENI id → pod): not
    /// adopted, but their slots counted.
    pub(crate) upstream_whole_enis: Mutex<std::collections::BTreeMap<String, String>>,
    pod_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Node {
    /// Opens the ledger, then takes the instance's identity and capacity
    /// from what the last start recorded there, so DEL, CHECK and ADD from
    /// confirmed idle addresses are served at once, whatever the metadata
    /// service and the cloud do; they are asked again in the background
    /// ([`Node::confirm_facts`]). Only a node with nothing recorded waits
    /// for them (it has no address to serve anyway).
    pub async fn start(config: Arc<Config>, options: NodeOptions) -> anyhow::Result<Arc<Self>> {
        let metadata = Arc::new(
            MetadataClient::new(&config.endpoints.metadata, METADATA_TIMEOUT)?.with_attempts(METADATA_ATTEMPTS),
        );
        let ledger_path = options
            .ledger_path
            .clone()
            .unwrap_or_else(|| config.ledger_path.clone());
        if let Some(parent) = ledger_path.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        let ledger = Arc::new(Ledger::open_with(&ledger_path, &OpenOptions::default())?);
        for problem in ledger.check() {
            tracing::error!(%problem, "ledger inconsistency (terway-ledger repair moves it aside)");
        }
        let recorded = RecordedFacts::read(&ledger)?;
        let credentials = |identity: &InstanceIdentity| -> anyhow::Result<CloudClient> {
            let provider = Arc::new(CredentialProvider::chain(
                config.access_key.as_deref(),
                config.access_secret.as_ref(),
                &CredentialFiles::on_this_node(config.credential_path.clone()),
                metadata.clone(),
            ));
            Ok(CloudClient::new(
                ClientOptions::from_config(&config, &identity.region_id),
                provider,
            )?)
        };
        let (identity, node_ip, cloud, (enis, ipv4_per_eni), security_groups, pending) = match recorded {
            Some(r) => {
                let cloud = credentials(&r.identity)?;
                // the rest of the identity and the primary address are confirmed in the background
                let pending = vec![Pending::Metadata, Pending::Cloud];
                // a metadata service that answers at once settles whose ledger this
                // is before anything is served (a disk cloned from another instance)
                let quick = MetadataClient::new(&config.endpoints.metadata, QUICK_IDENTITY)?.with_attempts(1);
                if let Ok(Ok(instance_id)) = tokio::time::timeout(QUICK_IDENTITY, quick.instance_id()).await {
                    if instance_id != r.identity.instance_id {
                        let now = InstanceIdentity {
                            instance_id,
                            ..r.identity.clone()
                        };
                        return Err(not_this_instance(&ledger, &r.identity, &now));
                    }
                    ledger.claim_instance(&instance_id)?;
                }
                (r.identity, r.ip, cloud, r.limits, r.security_groups, pending)
            }
            None => {
                let (identity, ip) = read_metadata(&metadata)
                    .await
                    .context("reading the instance identity from the metadata service (and none is recorded from an earlier start)")?;
                ledger.claim_instance(&identity.instance_id)?;
                ledger.set_node_fact("identity", &identity)?;
                ledger.set_node_fact("ip", &ip)?;
                let cloud = credentials(&identity)?;
                let (limits, groups) = read_capacity(&cloud, &config, &identity)
                    .await
                    .context("reading the instance type's ENI quotas (and none are recorded from an earlier start)")?;
                ledger.set_node_fact("limits", &limits)?;
                ledger.set_node_fact("security_groups", &groups)?;
                (identity, ip, cloud, limits, groups, Vec::new())
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
        let masquerade = options
            .datapath
            .as_ref()
            .map(|_| masquerade::Masquerade::new(nft.clone()));
        let policy = Arc::new(crate::policy::PolicyAgent::new(crate::policy::Enforcer::new(nft)));
        let node = Arc::new(Self {
            config: std::sync::RwLock::new(config),
            identity,
            node_ip,
            limits,
            security_groups,
            ledger,
            cloud,
            pending: Mutex::new(pending),
            fatal: tokio::sync::watch::channel(None).0,
            metadata,
            cluster_service_cidr: std::sync::OnceLock::new(),
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
            masquerade,
            upstream_pods: Mutex::default(),
            upstream_whole_enis: Mutex::default(),
            pod_locks: Mutex::new(HashMap::new()),
        });
        // before anything is served: addresses pods on the host hold stay theirs
        upstream::scan(&node).await;
        // the pods this node wired before a restart: policy knows them before any watch answers
        for record in node.ledger.snapshot().pods.values() {
            if upstream::is_placeholder(record) {
                continue; // not ours to police: wired before terwayd
            }
            if let Some((key, local, unpoliced)) = pod_network::policy_local(&node, record) {
                node.policy.update(|e| e.add_local(key, local, None, unpoliced));
            }
        }
        Ok(node)
    }

    /// Confirms in the background what [`Node::start`] took from the ledger:
    /// the identity with the metadata service, the quotas with the cloud,
    /// each bounded and retried with backoff until it lands. A ledger that
    /// belongs to another instance stops the node ([`Node::fatal`]).
    pub async fn confirm_facts(self: Arc<Self>) {
        let mut retry = backoff::ExponentialBackoff {
            initial_interval: Duration::from_millis(500),
            current_interval: Duration::from_millis(500),
            max_interval: Duration::from_secs(30),
            max_elapsed_time: None,
            ..Default::default()
        };
        loop {
            let pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner).clone();
            if pending.is_empty() {
                return;
            }
            let mut failed = None;
            if pending.contains(&Pending::Metadata) {
                match tokio::time::timeout(CONFIRM_BUDGET, read_metadata(&self.metadata)).await {
                    Ok(Ok((identity, ip))) => {
                        if let Err(e) = self.accept_metadata(&identity, ip) {
                            let why = format!("{e:#}");
                            tracing::error!(error = %why, "stopping: the ledger is not this instance's");
                            self.fatal.send_replace(Some(why));
                            return;
                        }
                    }
                    Ok(Err(e)) => failed = Some(format!("metadata service: {e:#}")),
                    Err(_) => failed = Some(format!("metadata service: no answer within {CONFIRM_BUDGET:?}")),
                }
            }
            if pending.contains(&Pending::Cloud) {
                let config = self.config();
                match tokio::time::timeout(CONFIRM_BUDGET, read_capacity(&self.cloud, &config, &self.identity)).await {
                    Ok(Ok((limits, groups))) => self.accept_capacity(limits, &groups),
                    Ok(Err(e)) => failed = Some(format!("cloud: {e:#}")),
                    Err(_) => failed = Some(format!("cloud: no answer within {CONFIRM_BUDGET:?}")),
                }
            }
            if let Some(why) = failed {
                tracing::warn!(error = %why, "serving from the facts recorded in the ledger; confirming them again later");
            }
            use backoff::backoff::Backoff;
            tokio::time::sleep(retry.next_backoff().unwrap_or(Duration::from_secs(30))).await;
        }
    }

    fn accept_metadata(&self, identity: &InstanceIdentity, ip: Ipv4Addr) -> anyhow::Result<()> {
        if identity.instance_id != self.identity.instance_id {
            return Err(not_this_instance(&self.ledger, &self.identity, identity));
        }
        self.ledger.claim_instance(&identity.instance_id)?;
        self.ledger.set_node_fact("identity", identity)?;
        self.ledger.set_node_fact("ip", &ip)?;
        if ip != self.node_ip {
            tracing::warn!(recorded = %self.node_ip, now = %ip, "the node's primary address changed; restart terwayd to use it");
        }
        self.done(Pending::Metadata);
        Ok(())
    }

    fn accept_capacity(&self, limits: (u32, u32), groups: &[String]) {
        let recorded = (self.limits.enis, self.limits.ipv4_per_eni);
        if limits != recorded {
            tracing::warn!(?recorded, now = ?limits, "the instance type's ENI quotas changed; restart terwayd to use them");
        }
        let stored = self
            .ledger
            .set_node_fact("limits", &limits)
            .and_then(|()| self.ledger.set_node_fact("security_groups", &groups));
        if let Err(e) = stored {
            tracing::warn!(error = %e, "recording the node's quotas");
            return;
        }
        self.done(Pending::Cloud);
    }

    fn done(&self, what: Pending) {
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|p| *p != what);
        let confirmed = match what {
            Pending::Metadata => "instance identity",
            Pending::Cloud => "ENI quotas",
        };
        tracing::info!(confirmed, "the node's recorded facts were confirmed");
    }

    /// Start-up work still under way (empty once the node's facts are confirmed).
    pub fn pending(&self) -> Vec<String> {
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    /// Resolves with the reason once the node must stop.
    pub async fn fatal(&self) -> String {
        let mut rx = self.fatal.subscribe();
        loop {
            if let Some(why) = rx.borrow_and_update().clone() {
                return why;
            }
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
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

    /// The security groups a new ENI gets: those configured now (a reload
    /// applies to the next ENI), else those found at the first start.
    pub(crate) fn eni_security_groups(&self) -> Vec<String> {
        let config = self.config();
        if config.security_groups.is_empty() {
            self.security_groups.clone()
        } else {
            config.security_groups.clone()
        }
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

    /// The datapath, unless the node runs IPAM only.
    pub fn datapath(&self) -> Option<&Arc<Datapath>> {
        self.datapath.as_ref()
    }

    /// Puts the masquerade of exclusive-ENI pods in force (see
    /// [`masquerade`]); a failure is logged and the datapath agent's next
    /// round tries again. `always`: even when nothing changed.
    pub fn sync_masquerade(&self, always: bool) {
        if let Some(m) = &self.masquerade {
            if let Err(error) = m.sync(self, always) {
                tracing::warn!(%error, table = masquerade::TABLE, "exclusive-ENI pods' masquerade not in force: their Service traffic to other nodes fails");
            }
        }
    }

    /// `ip_stack: "dual"`: shared pods get an IPv6 address too.
    pub fn dual_stack(&self) -> bool {
        self.config().ip_stack == terway_config::IpStack::Dual
    }

    /// The IPv4 Service CIDR pods reach through the host: `service_cidr`
    /// from the configuration, else `networking.serviceSubnet` of the
    /// cluster's kube-system/kubeadm-config (as upstream reads it).
    pub fn service_cidr(&self) -> Option<ipnet::Ipv4Net> {
        self.config()
            .service_cidr
            .ipv4
            .or_else(|| self.cluster_service_cidr.get().copied())
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
