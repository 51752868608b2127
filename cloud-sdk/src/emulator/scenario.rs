//! What the emulated cloud looks like at start, and the faults it injects.
//! A scenario is a JSON file; every field has a default, and the built-in
//! default scenario needs no file at all.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub const DEFAULT_ACCESS_KEY_ID: &str = "emulator-access-key-id";
pub const DEFAULT_ACCESS_KEY_SECRET: &str = "emulator-access-key-secret";
pub const DEFAULT_REGION: &str = "cn-hangzhou";
pub const DEFAULT_ZONE: &str = "cn-hangzhou-i";
pub const DEFAULT_INSTANCE_ID: &str = "i-emulated00000001";
pub const DEFAULT_SECURITY_GROUP: &str = "sg-emulated00000001";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Scenario {
    pub region_id: String,
    pub vpc_id: String,
    pub vpc_cidr: String,
    pub vswitches: Vec<VSwitchSpec>,
    pub security_groups: Vec<String>,
    pub instance_types: Vec<InstanceTypeSpec>,
    pub instances: Vec<InstanceSpec>,
    pub credentials: Vec<AccessKeySpec>,
    /// The RAM role the metadata service hands credentials for.
    pub ram_role: Option<RamRoleSpec>,
    /// Which instance the metadata service describes (default: the first).
    pub metadata_instance: Option<String>,
    /// Refuse metadata requests without an IMDSv2 token (`HttpTokens=required`).
    pub metadata_tokens_required: bool,
    pub delays: Delays,
    /// Most addresses one Assign call may ask for.
    pub max_ips_per_assign: u32,
    /// Per-action limits in requests per minute; over it the answer is `Throttling`.
    pub rate_limits: BTreeMap<String, u32>,
    pub faults: Faults,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VSwitchSpec {
    pub id: String,
    pub zone_id: String,
    pub cidr: String,
    /// The vSwitch's IPv6 CIDR (a /64), when IPv6 is enabled on it.
    #[serde(default)]
    pub ipv6_cidr: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceTypeSpec {
    pub id: String,
    /// ENIs per instance, the primary included (`EniQuantity`).
    pub eni_quantity: u32,
    /// IPv4 addresses per ENI, its primary included (`EniPrivateIpAddressQuantity`).
    pub ipv4_per_eni: u32,
    #[serde(default)]
    pub ipv6_per_eni: u32,
    #[serde(default)]
    pub eni_total_quantity: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceSpec {
    pub id: String,
    pub zone_id: String,
    pub instance_type: String,
    /// vSwitch of the primary ENI.
    pub vswitch_id: String,
    #[serde(default)]
    pub security_groups: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessKeySpec {
    pub access_key_id: String,
    pub access_key_secret: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RamRoleSpec {
    pub name: String,
    /// Lifetime of the STS credentials handed out.
    pub ttl_seconds: u64,
}

/// How long ENI state changes take (milliseconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Delays {
    /// Creating → Available.
    pub create_ms: u64,
    /// Attaching → InUse.
    pub attach_ms: u64,
    /// Detaching → Available.
    pub detach_ms: u64,
    /// Deleting → gone.
    pub delete_ms: u64,
}

impl Default for Delays {
    fn default() -> Self {
        Self {
            create_ms: 0,
            attach_ms: 200,
            detach_ms: 200,
            delete_ms: 0,
        }
    }
}

/// Faults, changeable while the emulator runs (`PUT /__emulator/faults`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Added latency per action, in milliseconds (`"*"` for every action).
    pub latency_ms: BTreeMap<String, u64>,
    /// Delay per action (`"*"`: every action) after the call took effect and
    /// before it is answered: a caller killed meanwhile never learns it happened.
    pub answer_delay_ms: BTreeMap<String, u64>,
    /// Share of requests (0–1) answered with a 5xx before taking effect.
    pub error_rate: f64,
    /// Share of requests (0–1) that take effect but whose response is lost
    /// (the connection is closed without an answer).
    pub drop_rate: f64,
    /// Lose exactly the next this-many responses (of `actions`), then answer normally.
    pub drop_count: u32,
    /// Restrict error and drop faults to these actions (empty: every action).
    pub actions: Vec<String>,
    /// Describe* answers show the world as it was this long ago.
    pub describe_lag_ms: u64,
    /// The metadata service answers 503 to everything.
    pub metadata_unavailable: bool,
    /// Share of requests (0–1) answered `Throttling`, as an account over its
    /// API rate would be (restricted to `actions` like the other faults).
    pub throttle_rate: f64,
    /// The gateway's clock runs this many seconds ahead (negative: behind)
    /// of the caller's: beyond 15 minutes every request is `InvalidTimeStamp.Expired`.
    pub clock_offset_s: i64,
    /// DescribeNetworkInterfaces ignores every filter (status, type,
    /// instance, vSwitch, ids, tags) and answers with the region's ENIs.
    pub ignore_filters: bool,
}

impl Default for Scenario {
    fn default() -> Self {
        let vsw = |id: &str, cidr: &str| VSwitchSpec {
            id: id.into(),
            zone_id: DEFAULT_ZONE.into(),
            cidr: cidr.into(),
            ipv6_cidr: None,
        };
        Self {
            region_id: DEFAULT_REGION.into(),
            vpc_id: "vpc-emulated00000001".into(),
            vpc_cidr: "192.168.0.0/16".into(),
            vswitches: vec![
                // the node's own vSwitch, where its primary ENI lives
                vsw("vsw-node00000000001", "192.168.0.0/24"),
                // a small vSwitch that runs out after 12 addresses
                vsw("vsw-small0000000001", "192.168.1.0/28"),
                VSwitchSpec {
                    ipv6_cidr: Some("2408:4005:3de:10::/64".into()),
                    ..vsw("vsw-large0000000001", "192.168.16.0/20")
                },
            ],
            security_groups: vec![DEFAULT_SECURITY_GROUP.into()],
            // ecs.g6.2xlarge: 8 vCPU, 4 ENIs of 10 IPv4 addresses each
            instance_types: vec![
                InstanceTypeSpec {
                    id: "ecs.g6.2xlarge".into(),
                    eni_quantity: 4,
                    ipv4_per_eni: 10,
                    ipv6_per_eni: 10,
                    eni_total_quantity: Some(4),
                },
                InstanceTypeSpec {
                    id: "ecs.g6.8xlarge".into(),
                    eni_quantity: 8,
                    ipv4_per_eni: 20,
                    ipv6_per_eni: 20,
                    eni_total_quantity: Some(8),
                },
                InstanceTypeSpec {
                    id: "ecs.g6.large".into(),
                    eni_quantity: 2,
                    ipv4_per_eni: 6,
                    ipv6_per_eni: 1,
                    eni_total_quantity: Some(2),
                },
            ],
            instances: vec![InstanceSpec {
                id: DEFAULT_INSTANCE_ID.into(),
                zone_id: DEFAULT_ZONE.into(),
                instance_type: "ecs.g6.2xlarge".into(),
                vswitch_id: "vsw-node00000000001".into(),
                security_groups: vec![DEFAULT_SECURITY_GROUP.into()],
            }],
            credentials: vec![AccessKeySpec {
                access_key_id: DEFAULT_ACCESS_KEY_ID.into(),
                access_key_secret: DEFAULT_ACCESS_KEY_SECRET.into(),
            }],
            ram_role: Some(RamRoleSpec {
                name: "TerwayEmulatedRole".into(),
                ttl_seconds: 3600,
            }),
            metadata_instance: None,
            metadata_tokens_required: false,
            delays: Delays::default(),
            max_ips_per_assign: 10,
            rate_limits: BTreeMap::new(),
            faults: Faults::default(),
        }
    }
}

impl Scenario {
    pub fn from_json(text: &str) -> Result<Self, String> {
        serde_json::from_str(text).map_err(|e| format!("bad scenario: {e}"))
    }
}
