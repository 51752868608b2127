//! The validated daemon configuration. Built only by [`crate::Config::from_value`],
//! so every value here has passed validation.

use crate::defaults::BackoffSpec;
use crate::secret::Secret;
use ipnet::{Ipv4Net, Ipv6Net};
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Config {
    pub version: Option<String>,
    pub access_key: Option<String>,
    pub access_secret: Option<Secret>,
    pub credential_path: Option<PathBuf>,
    pub region_id: Option<String>,
    pub service_cidr: ServiceCidr,
    /// Candidate vSwitches by zone; only the node's zone is used.
    pub vswitches: BTreeMap<String, Vec<String>>,
    pub vswitch_selection_policy: VSwitchSelectionPolicy,
    /// `security_group` and `security_groups` merged, deduplicated and sorted.
    pub security_groups: Vec<String>,
    pub resource_group_id: Option<String>,
    pub eni_tags: BTreeMap<String, String>,
    pub eni_tag_filter: BTreeMap<String, String>,
    /// Built-in entries plus the configured ones.
    pub eni_tag_block_list: Vec<TagPair>,
    pub max_pool_size: u32,
    pub min_pool_size: u32,
    pub min_eni: u32,
    /// 0 means "the instance's quota".
    pub max_eni: u32,
    pub eni_cap_ratio: f64,
    pub eni_cap_shift: i32,
    pub ip_warm_up_size: Option<u32>,
    pub idle_ip_reclaim: IdleIpReclaim,
    #[serde(with = "crate::duration::go_string")]
    pub ip_pool_sync_period: Duration,
    /// How often the datapath agent re-checks and repairs every pod (terway-rs's own).
    pub datapath_check_period: Duration,
    pub ip_stack: IpStack,
    pub eni_selection_policy: EniSelectionPolicy,
    /// Requests per minute for every known OpenAPI action (defaults merged with overrides).
    pub rate_limit: BTreeMap<String, u32>,
    /// Retry schedules for every known key (defaults merged with overrides).
    pub backoff: BTreeMap<String, BackoffSpec>,
    /// 0 means the kube client's default.
    pub kube_client_qps: f32,
    pub kube_client_burst: u32,
    pub enable_patch_pod_ips: bool,
    pub disable_network_policy: bool,
    pub custom_stateful_workload_kinds: Vec<String>,
    pub disable_device_plugin: bool,

    // terway-rs's own settings.
    pub ledger_path: PathBuf,
    pub socket_path: PathBuf,
    pub metrics_address: SocketAddr,
    pub endpoints: Endpoints,
    #[serde(with = "crate::duration::go_string")]
    pub ip_cooldown: Duration,
    #[serde(with = "crate::duration::go_string")]
    pub vswitch_cooldown: Duration,
    pub datapath_mode: DatapathMode,
    pub mtu: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ServiceCidr {
    pub ipv4: Option<Ipv4Net>,
    pub ipv6: Option<Ipv6Net>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct TagPair {
    pub key: String,
    pub value: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct IdleIpReclaim {
    /// `None`: the feature is off (upstream's default).
    #[serde(with = "crate::duration::go_string::option")]
    pub after: Option<Duration>,
    #[serde(with = "crate::duration::go_string")]
    pub interval: Duration,
    pub batch_size: u32,
    pub jitter_factor: f64,
}

/// Endpoint overrides; `None` means the regional VPC endpoint of the product.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Endpoints {
    pub ecs: Option<String>,
    pub vpc: Option<String>,
    pub metadata: String,
    /// Use `ecs.<region>.aliyuncs.com` instead of the VPC-internal `ecs-vpc.` host.
    pub public: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum VSwitchSelectionPolicy {
    /// Shuffle the zone's vSwitches.
    Random,
    /// Most available IPs first.
    Ordered,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EniSelectionPolicy {
    MostIps,
    LeastIps,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IpStack {
    Ipv4,
    Dual,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DatapathMode {
    /// Shared ENI, veth pair and policy routing (the default).
    Veth,
    /// One whole ENI per pod.
    ExclusiveEni,
    /// Shared ENI through an ipvlan L2 child (falls back to veth where the kernel lacks ipvlan).
    Ipvlan,
}

impl DatapathMode {
    pub fn is_exclusive(self) -> bool {
        self == Self::ExclusiveEni
    }
}

/// Settings that take effect only when terwayd restarts. A reload that
/// changes one of them is reported and the running value is kept.
pub const RESTART_ONLY_FIELDS: &[&str] = &[
    "access_key",
    "access_secret",
    "credential_path",
    "ip_stack",
    "kube_client_qps",
    "kube_client_burst",
    "disable_device_plugin",
    "ledger_path",
    "socket_path",
    "metrics_address",
    "endpoints",
    "datapath_mode",
    "mtu",
];

macro_rules! changed_fields {
    ($a:expr, $b:expr; $($field:ident),* $(,)?) => {{
        let mut changed: Vec<&'static str> = Vec::new();
        $( if $a.$field != $b.$field { changed.push(stringify!($field)); } )*
        changed
    }};
}

impl Config {
    /// Names of the top-level settings that differ between `self` and `other`.
    pub fn changed_fields(&self, other: &Config) -> Vec<&'static str> {
        changed_fields!(self, other;
            version, access_key, access_secret, credential_path, region_id, service_cidr,
            vswitches, vswitch_selection_policy, security_groups, resource_group_id, eni_tags,
            eni_tag_filter, eni_tag_block_list, max_pool_size, min_pool_size, min_eni, max_eni,
            eni_cap_ratio, eni_cap_shift, ip_warm_up_size, idle_ip_reclaim, ip_pool_sync_period,
            datapath_check_period,
            ip_stack, eni_selection_policy, rate_limit, backoff, kube_client_qps,
            kube_client_burst, enable_patch_pod_ips, disable_network_policy,
            custom_stateful_workload_kinds, disable_device_plugin, ledger_path, socket_path,
            metrics_address, endpoints, ip_cooldown, vswitch_cooldown, datapath_mode, mtu)
    }

    /// Copies every restart-only setting from `running` into `self`, so a
    /// reload applies the live settings only.
    pub fn keep_restart_only_from(&mut self, running: &Config) {
        self.access_key.clone_from(&running.access_key);
        self.access_secret.clone_from(&running.access_secret);
        self.credential_path.clone_from(&running.credential_path);
        self.ip_stack = running.ip_stack;
        self.kube_client_qps = running.kube_client_qps;
        self.kube_client_burst = running.kube_client_burst;
        self.disable_device_plugin = running.disable_device_plugin;
        self.ledger_path.clone_from(&running.ledger_path);
        self.socket_path.clone_from(&running.socket_path);
        self.metrics_address = running.metrics_address;
        self.endpoints.clone_from(&running.endpoints);
        self.datapath_mode = running.datapath_mode;
        self.mtu = running.mtu;
    }

    /// The vSwitches configured for `zone` (empty when the zone is not listed:
    /// the caller then uses the instance's own vSwitch, as upstream does).
    pub fn vswitches_in_zone(&self, zone: &str) -> &[String] {
        self.vswitches.get(zone).map_or(&[], Vec::as_slice)
    }

    /// Effective configuration as pretty JSON, secrets redacted.
    pub fn to_redacted_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }
}
