//! The ledger's records. Their JSON form is the stable export schema of
//! `terway-ledger export --json` (see `Export`).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::IpAddr;

/// Milliseconds since the Unix epoch (wall clock), for cooldowns and ages.
pub type UnixMillis = u64;

pub fn now_millis() -> UnixMillis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A pod by namespace and name; `uid` tells two incarnations apart.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
    #[serde(default)]
    pub uid: String,
}

impl PodRef {
    pub fn new(namespace: &str, name: &str, uid: &str) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
            uid: uid.into(),
        }
    }

    /// `namespace/name`, the pod tree's key.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

impl std::fmt::Display for PodRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EniStatus {
    /// Attached and serving.
    InUse,
    /// No new pods; its IPs and then the ENI itself are being given back.
    Draining,
}

/// An ENI attached to this instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EniRecord {
    pub id: String,
    pub mac: String,
    pub vswitch_id: String,
    pub gateway: IpAddr,
    /// The vSwitch CIDR.
    pub cidr: String,
    pub primary_ip: IpAddr,
    pub status: EniStatus,
    /// Policy-routing table holding this ENI's default route.
    pub route_table: u32,
    /// Created by terway-rs (and so ours to delete), not merely adopted.
    #[serde(default)]
    pub created_by_us: bool,
    /// Exclusive-ENI mode: the pod this ENI is reserved for.
    #[serde(default)]
    pub owner: Option<PodRef>,
    /// Serves one pod whole (an exclusive ENI, also on a shared-mode node):
    /// its addresses never go to shared pods.
    #[serde(default)]
    pub exclusive: bool,
    /// The vSwitch's IPv6 side, recorded on a dual-stack node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<EniIpv6>,
}

/// The IPv6 gateway and CIDR of an ENI's vSwitch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EniIpv6 {
    pub gateway: std::net::Ipv6Addr,
    pub cidr: String,
}

/// Where one container's interface lives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Binding {
    pub pod: PodRef,
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum IpState {
    /// Confirmed by the cloud, ready for a pod.
    Idle,
    Bound(Binding),
    /// Released by a pod; reusable after `until`.
    Cooling {
        until: UnixMillis,
    },
    /// Being given back to the cloud.
    Releasing,
}

impl IpState {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Idle => "idle",
            Self::Bound(_) => "bound",
            Self::Cooling { .. } => "cooling",
            Self::Releasing => "releasing",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpRecord {
    pub ip: IpAddr,
    pub eni_id: String,
    #[serde(flatten)]
    pub state: IpState,
}

/// What shaped a pod's datapath, kept so repair and DEL can redo or undo it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodNetworkSettings {
    /// bits per second, 0 = unlimited
    #[serde(default)]
    pub ingress_bps: u64,
    #[serde(default)]
    pub egress_bps: u64,
    /// The pod got a whole ENI.
    #[serde(default)]
    pub exclusive_eni: bool,
    /// The network configuration's `host_stack_cidrs`, kept so a repair
    /// after a restart rebuilds the same routes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub host_stack_cidrs: Vec<ipnet::IpNet>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodRecord {
    pub pod: PodRef,
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
    pub ips: Vec<IpAddr>,
    /// Exclusive-ENI pods: their ENI.
    #[serde(default)]
    pub eni_id: Option<String>,
    #[serde(default)]
    pub settings: PodNetworkSettings,
    pub bound_at: UnixMillis,
}

/// A cloud mutation about to be made. Recorded before the call, completed
/// after the answer; after a crash the cloud is asked what happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum IntentKind {
    AssignIps {
        eni_id: String,
        count: u32,
        /// AssignIpv6Addresses rather than AssignPrivateIpAddresses.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        ipv6: bool,
    },
    UnassignIps {
        eni_id: String,
        ips: Vec<IpAddr>,
    },
    CreateEni {
        vswitch_id: String,
    },
    AttachEni {
        eni_id: String,
    },
    DetachEni {
        eni_id: String,
    },
    DeleteEni {
        eni_id: String,
    },
}

impl IntentKind {
    /// IPs that must stay out of the pool until this intent is resolved.
    pub fn touched_ips(&self) -> &[IpAddr] {
        match self {
            Self::UnassignIps { ips, .. } => ips,
            _ => &[],
        }
    }

    pub fn eni_id(&self) -> Option<&str> {
        match self {
            Self::AssignIps { eni_id, .. }
            | Self::UnassignIps { eni_id, .. }
            | Self::AttachEni { eni_id }
            | Self::DetachEni { eni_id }
            | Self::DeleteEni { eni_id } => Some(eni_id),
            Self::CreateEni { .. } => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Intent {
    pub id: u64,
    #[serde(flatten)]
    pub kind: IntentKind,
    /// The ClientToken sent with the call (Create*/Assign*).
    pub client_token: Option<String>,
    pub created_at: UnixMillis,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    pub schema_version: u32,
    pub instance_id: Option<String>,
    /// The terway-rs version that last wrote the ledger.
    pub written_by: String,
}

/// Everything in the ledger: the `export --json` schema (version 1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Export {
    pub export_version: u32,
    pub meta: Meta,
    pub enis: Vec<EniRecord>,
    pub ips: Vec<IpRecord>,
    pub pods: Vec<PodRecord>,
    pub intents: Vec<Intent>,
    /// Records `repair` moved aside: tree name → key → raw value text.
    pub quarantine: BTreeMap<String, BTreeMap<String, String>>,
}

pub const EXPORT_VERSION: u32 = 1;
