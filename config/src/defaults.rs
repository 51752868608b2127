//! Every default of the daemon configuration, in one place. Values follow
//! upstream Terway (`types/daemon/config.go: Populate`, `pkg/backoff`,
//! `pkg/aliyun/client/ratelimit.go`) unless marked as terway-rs's own.

use std::time::Duration;

/// Where the `eni-config` ConfigMap is mounted (`-config /etc/eni/eni_conf`).
pub const CONFIG_PATH: &str = "/etc/eni/eni_conf";
/// The ConfigMap key (and file name inside a ConfigMap mount) of the daemon config.
pub const CONFIGMAP_KEY: &str = "eni_conf";

pub const MAX_POOL_SIZE: u32 = 0;
pub const MIN_POOL_SIZE: u32 = 0;
pub const ENI_CAP_RATIO: f64 = 1.0;
pub const IDLE_IP_RECLAIM_INTERVAL: Duration = Duration::from_secs(10 * 60);
pub const IDLE_IP_RECLAIM_BATCH_SIZE: u32 = 5;
pub const IDLE_IP_RECLAIM_JITTER_FACTOR: f64 = 0.1;
pub const IP_POOL_SYNC_PERIOD: Duration = Duration::from_secs(120);
pub const ENABLE_PATCH_POD_IPS: bool = true;
pub const MAX_SECURITY_GROUPS: usize = 10;
/// IPs asked for in one AssignPrivateIpAddresses call (upstream batch size).
pub const ASSIGN_BATCH_SIZE: u32 = 10;
/// Owner kinds whose pods keep their IP for a while after deletion.
pub const STATEFUL_WORKLOAD_KINDS: &[&str] = &["statefulset"];
/// ENIs carrying one of these tags are never touched (upstream's built-in block list).
pub const ENI_TAG_BLOCK_LIST: &[(&str, &str)] = &[
    ("creator", "alibabacloud-erdma-controller"),
    ("terway.alibabacloud.com/excluded", "true"),
];

// terway-rs's own settings.
pub const LEDGER_PATH: &str = "/var/lib/terway/ledger";
pub const SOCKET_PATH: &str = "/var/run/eni/eni.socket";
pub const METRICS_ADDRESS: &str = "127.0.0.1:9190";
pub const METADATA_ENDPOINT: &str = "http://100.100.100.200";
/// A released IP waits this long before another pod may get it, so that
/// peers' conntrack and ARP entries for the old pod age out (AWS VPC CNI uses 30 s).
pub const IP_COOLDOWN: Duration = Duration::from_secs(30);
/// How often the datapath agent checks every pod and ENI against its desired
/// state and repairs drift (upstream re-syncs its rules every 5 minutes).
pub const DATAPATH_CHECK_PERIOD: Duration = Duration::from_secs(5 * 60);
/// How long an exhausted vSwitch is set aside (upstream: its cache entry TTL).
pub const VSWITCH_COOLDOWN: Duration = Duration::from_secs(10 * 60);
pub const MTU: u32 = 1500;

/// Client-side token buckets per OpenAPI action, in requests per minute
/// (QPS = value / 60, burst = value).
pub const RATE_LIMITS_PER_MINUTE: &[(&str, u32)] = &[
    ("AttachNetworkInterface", 500),
    ("CreateNetworkInterface", 500),
    ("DeleteNetworkInterface", 500),
    ("DetachNetworkInterface", 400),
    ("DescribeNetworkInterfaces", 800),
    ("DescribeNetworkInterfaceAttribute", 2000),
    ("AssignPrivateIpAddresses", 400),
    ("UnassignPrivateIpAddresses", 400),
    ("AssignIpv6Addresses", 400),
    ("UnassignIpv6Addresses", 400),
    ("DescribeInstanceTypes", 400),
    ("DescribeInstances", 500),
    ("DescribeVSwitches", 300),
];
/// The bucket of any action not listed above.
pub const DEFAULT_RATE_LIMIT_PER_MINUTE: u32 = 500;

/// A retry schedule with k8s `wait.Backoff` semantics.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct BackoffSpec {
    #[serde(rename = "InitialDelay", with = "crate::duration::go_string")]
    pub initial_delay: Duration,
    #[serde(rename = "Duration", with = "crate::duration::go_string")]
    pub duration: Duration,
    #[serde(rename = "Factor")]
    pub factor: f64,
    #[serde(rename = "Jitter")]
    pub jitter: f64,
    #[serde(rename = "Steps")]
    pub steps: u32,
    #[serde(rename = "Cap", with = "crate::duration::go_string::option")]
    pub cap: Option<Duration>,
}

const fn backoff(initial_ms: u64, duration_ms: u64, factor: f64, jitter: f64, steps: u32) -> BackoffSpec {
    BackoffSpec {
        initial_delay: Duration::from_millis(initial_ms),
        duration: Duration::from_millis(duration_ms),
        factor,
        jitter,
        steps,
        cap: None,
    }
}

/// Built-in retry schedules, by the key `backoff_override` uses.
pub const BACKOFFS: &[(&str, BackoffSpec)] = &[
    ("default", backoff(0, 2_000, 1.5, 0.3, 6)),
    ("eni_create", backoff(0, 10_000, 2.0, 0.3, 2)),
    ("eni_ops", backoff(0, 5_000, 2.0, 0.3, 6)),
    ("eni_release", backoff(0, 4_000, 2.0, 0.5, 8)),
    ("eni_ip_ops", backoff(0, 5_000, 1.0, 1.3, 6)),
    (
        "eni_delete_confirm",
        BackoffSpec {
            cap: Some(Duration::from_secs(4)),
            ..backoff(1_000, 2_000, 1.5, 0.0, 4)
        },
    ),
    ("wait_eni_ip_removed", backoff(1_000, 2_000, 1.5, 0.5, 4)),
    ("wait_eni_status", backoff(3_000, 3_000, 1.5, 0.5, 8)),
    ("meta_assign_private_ip", backoff(0, 1_100, 1.0, 0.2, 10)),
    ("meta_unassign_private_ip", backoff(0, 1_100, 1.0, 0.2, 10)),
    ("wait_sts_token_ready", backoff(0, 1_000, 1.0, 0.2, 60)),
];

/// The rate limit of `action`, with no override applied.
pub fn rate_limit_per_minute(action: &str) -> u32 {
    RATE_LIMITS_PER_MINUTE
        .iter()
        .find(|(name, _)| *name == action)
        .map_or(DEFAULT_RATE_LIMIT_PER_MINUTE, |(_, v)| *v)
}
