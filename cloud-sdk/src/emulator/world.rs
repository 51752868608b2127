//! The emulated region: vSwitches with real address accounting, instance
//! types and instances, ENIs with their lifecycle, and the ECS/VPC actions
//! over them, each validating its parameters as the cloud does.

use super::scenario::{Delays, InstanceTypeSpec, Scenario};
use crate::signature::Params;
use ipnet::{Ipv4Net, Ipv6Net};
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// An error answer: HTTP status, Code, Message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub code: String,
    pub message: String,
}

impl ApiError {
    pub fn new(status: u16, code: &str, message: impl Into<String>) -> Self {
        Self {
            status,
            code: code.into(),
            message: message.into(),
        }
    }
    pub fn missing(name: &str) -> Self {
        Self::new(
            400,
            "MissingParameter",
            format!("The input parameter \"{name}\" that is mandatory for processing this request is not supplied."),
        )
    }
    pub fn invalid(name: &str, value: &str, why: &str) -> Self {
        Self::new(
            400,
            "InvalidParameter",
            format!("The specified parameter \"{name}\" ({value:?}) is not valid: {why}."),
        )
    }
    fn eni_not_found(id: &str) -> Self {
        Self::new(
            404,
            "InvalidEniId.NotFound",
            format!("The specified NetworkInterfaceId {id:?} does not exist."),
        )
    }
    fn eni_state(id: &str, status: EniStatus, op: &str) -> Self {
        Self::new(
            400,
            "InvalidOperation.InvalidEniState",
            format!("The ENI {id} is {status:?}; {op} is not allowed in this state."),
        )
    }
}

type Result<T> = std::result::Result<T, ApiError>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum EniStatus {
    Creating,
    Available,
    Attaching,
    InUse,
    Detaching,
    Deleting,
}

#[derive(Debug, Clone, Serialize)]
pub struct Eni {
    pub id: String,
    pub mac: String,
    pub vswitch_id: String,
    pub zone_id: String,
    pub status: EniStatus,
    pub primary: bool,
    pub instance_id: Option<String>,
    pub device_index: Option<u32>,
    pub primary_ip: Ipv4Addr,
    pub secondary_ips: Vec<Ipv4Addr>,
    pub ipv6s: Vec<Ipv6Addr>,
    pub security_groups: Vec<String>,
    pub tags: Vec<(String, String)>,
    pub creation_time: String,
    pub name: String,
    pub description: String,
    pub resource_group_id: String,
    #[serde(skip)]
    pending: Option<(EniStatus, Instant)>,
}

/// An ENI that became InUse or Available on an instance, for hot-plug hooks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum AttachmentEvent {
    Attached {
        eni_id: String,
        mac: String,
        instance_id: String,
        gateway: Ipv4Addr,
        vswitch_cidr: String,
        /// The vSwitch's IPv6 gateway and CIDR, when it has IPv6.
        ipv6: Option<(Ipv6Addr, String)>,
    },
    Detached {
        eni_id: String,
        mac: String,
        instance_id: String,
    },
}

#[derive(Debug, Clone)]
pub(crate) struct VSwitchState {
    pub id: String,
    pub zone_id: String,
    pub net: Ipv4Net,
    used: BTreeSet<u32>,
    cursor: u32,
    pub net6: Option<Ipv6Net>,
    used6: BTreeSet<u128>,
}

impl VSwitchState {
    fn new(id: &str, zone_id: &str, cidr: &str) -> std::result::Result<Self, String> {
        let net: Ipv4Net = cidr.parse().map_err(|_| format!("vSwitch {id}: bad CIDR {cidr:?}"))?;
        if net.prefix_len() > 29 {
            return Err(format!("vSwitch {id}: {cidr} is smaller than a /29"));
        }
        let first = u32::from(net.network()) + 1;
        Ok(Self {
            id: id.into(),
            zone_id: zone_id.into(),
            net: net.trunc(),
            used: BTreeSet::new(),
            cursor: first,
            net6: None,
            used6: BTreeSet::new(),
        })
    }

    /// Enables IPv6 with `cidr` (a /64 as the cloud gives, or smaller for tests).
    fn with_ipv6(mut self, cidr: &str) -> std::result::Result<Self, String> {
        let net: Ipv6Net = cidr
            .parse()
            .map_err(|_| format!("vSwitch {}: bad IPv6 CIDR {cidr:?}", self.id))?;
        if net.prefix_len() > 120 {
            return Err(format!("vSwitch {}: {cidr} is smaller than a /120", self.id));
        }
        self.net6 = Some(net.trunc());
        Ok(self)
    }

    /// The cloud keeps the first IPv6 address and the last nine.
    fn usable6(&self) -> Option<(u128, u128)> {
        let n = self.net6?;
        Some((u128::from(n.network()) + 1, u128::from(n.broadcast()) - 9))
    }

    /// The IPv6 gateway: one of the reserved addresses at the top.
    pub fn gateway6(&self) -> Option<Ipv6Addr> {
        self.net6.map(|n| Ipv6Addr::from(u128::from(n.broadcast()) - 2))
    }

    /// `n` free IPv6 addresses, lowest first, or none at all.
    fn allocate6(&mut self, n: usize) -> Option<Vec<Ipv6Addr>> {
        let (first, last) = self.usable6()?;
        let mut out = Vec::with_capacity(n);
        let mut ip = first;
        while out.len() < n && ip <= last {
            if !self.used6.contains(&ip) {
                out.push(ip);
            }
            ip += 1;
        }
        if out.len() < n {
            return None;
        }
        self.used6.extend(out.iter().copied());
        Some(out.into_iter().map(Ipv6Addr::from).collect())
    }

    fn release6(&mut self, ip: Ipv6Addr) {
        self.used6.remove(&u128::from(ip));
    }

    /// The cloud keeps the first address and the last three of every vSwitch.
    fn usable(&self) -> (u32, u32) {
        (u32::from(self.net.network()) + 1, u32::from(self.net.broadcast()) - 3)
    }

    pub fn capacity(&self) -> u64 {
        let (a, b) = self.usable();
        u64::from(b - a + 1)
    }

    pub fn available(&self) -> u64 {
        self.capacity() - self.used.len() as u64
    }

    /// The vSwitch gateway: one of the reserved addresses at the top.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.net.broadcast()) - 2)
    }

    /// `n` free addresses, round-robin from the last one handed out (so a
    /// just-released address is not the next one given), or none at all.
    fn allocate(&mut self, n: usize) -> Option<Vec<Ipv4Addr>> {
        if (self.available() as usize) < n {
            return None;
        }
        let (first, last) = self.usable();
        let mut out = Vec::with_capacity(n);
        let mut ip = self.cursor.clamp(first, last);
        while out.len() < n {
            if !self.used.contains(&ip) {
                self.used.insert(ip);
                out.push(Ipv4Addr::from(ip));
            }
            ip = if ip >= last { first } else { ip + 1 };
        }
        self.cursor = ip;
        Some(out)
    }

    fn take(&mut self, ip: Ipv4Addr) -> Result<()> {
        let n = u32::from(ip);
        let (first, last) = self.usable();
        if n < first || n > last {
            return Err(ApiError::new(
                403,
                "InvalidVSwitchId.IpInvalid",
                format!("{ip} is not a usable address of {} ({})", self.id, self.net),
            ));
        }
        if !self.used.insert(n) {
            return Err(ApiError::new(
                400,
                "InvalidPrivateIpAddress.Duplicated",
                format!("{ip} is already in use."),
            ));
        }
        Ok(())
    }

    fn release(&mut self, ip: Ipv4Addr) {
        self.used.remove(&u32::from(ip));
    }
}

#[derive(Debug, Clone)]
pub(crate) struct InstanceState {
    pub id: String,
    pub zone_id: String,
    pub instance_type: String,
    pub vswitch_id: String,
    pub security_groups: Vec<String>,
    pub primary_eni: String,
}

#[derive(Debug, Clone)]
struct TokenRecord {
    fingerprint: String,
    answer: Result<Value>,
}

#[derive(Debug)]
pub(crate) struct World {
    pub region_id: String,
    pub vpc_id: String,
    pub vpc_cidr: String,
    pub vswitches: BTreeMap<String, VSwitchState>,
    security_groups: BTreeSet<String>,
    pub instance_types: BTreeMap<String, InstanceTypeSpec>,
    pub instances: BTreeMap<String, InstanceState>,
    pub enis: BTreeMap<String, Eni>,
    delays: Delays,
    max_ips_per_assign: u32,
    next_id: u64,
    client_tokens: HashMap<(String, String), TokenRecord>,
    /// Snapshots of the ENIs for Describe lag; empty when there is no lag.
    history: VecDeque<(Instant, Arc<BTreeMap<String, Eni>>)>,
    pub describe_lag: Duration,
    pub events: Vec<AttachmentEvent>,
}

impl World {
    pub fn new(s: &Scenario) -> std::result::Result<Self, String> {
        let mut w = Self {
            region_id: s.region_id.clone(),
            vpc_id: s.vpc_id.clone(),
            vpc_cidr: s.vpc_cidr.clone(),
            vswitches: BTreeMap::new(),
            security_groups: s.security_groups.iter().cloned().collect(),
            instance_types: s.instance_types.iter().map(|t| (t.id.clone(), t.clone())).collect(),
            instances: BTreeMap::new(),
            enis: BTreeMap::new(),
            delays: s.delays,
            max_ips_per_assign: s.max_ips_per_assign.max(1),
            next_id: 1,
            client_tokens: HashMap::new(),
            history: VecDeque::new(),
            describe_lag: Duration::from_millis(s.faults.describe_lag_ms),
            events: Vec::new(),
        };
        for v in &s.vswitches {
            w.add_vswitch(&v.id, &v.zone_id, &v.cidr)?;
            if let Some(cidr) = &v.ipv6_cidr {
                let with = w.vswitches[&v.id].clone().with_ipv6(cidr)?;
                w.vswitches.insert(v.id.clone(), with);
            }
        }
        for i in &s.instances {
            if !w.instance_types.contains_key(&i.instance_type) {
                return Err(format!("instance {}: unknown instance type {}", i.id, i.instance_type));
            }
            let zone = w.vswitches.get(&i.vswitch_id).map(|v| v.zone_id.clone());
            if zone.as_deref() != Some(i.zone_id.as_str()) {
                return Err(format!(
                    "instance {}: vSwitch {} is not in zone {}",
                    i.id, i.vswitch_id, i.zone_id
                ));
            }
            let eni = w
                .new_eni(
                    &i.vswitch_id,
                    i.security_groups.clone(),
                    Vec::new(),
                    0,
                    String::new(),
                    String::new(),
                    String::new(),
                )
                .map_err(|e| e.message)?;
            let eni_id = eni.id.clone();
            w.enis.insert(
                eni_id.clone(),
                Eni {
                    status: EniStatus::InUse,
                    primary: true,
                    instance_id: Some(i.id.clone()),
                    device_index: Some(0),
                    ..eni
                },
            );
            w.instances.insert(
                i.id.clone(),
                InstanceState {
                    id: i.id.clone(),
                    zone_id: i.zone_id.clone(),
                    instance_type: i.instance_type.clone(),
                    vswitch_id: i.vswitch_id.clone(),
                    security_groups: i.security_groups.clone(),
                    primary_eni: eni_id,
                },
            );
        }
        Ok(w)
    }

    pub fn add_vswitch(&mut self, id: &str, zone_id: &str, cidr: &str) -> std::result::Result<(), String> {
        if self.vswitches.contains_key(id) {
            return Err(format!("vSwitch {id} exists already"));
        }
        let v = VSwitchState::new(id, zone_id, cidr)?;
        if let Some(other) = self
            .vswitches
            .values()
            .find(|o| o.net.contains(&v.net) || v.net.contains(&o.net))
        {
            return Err(format!("vSwitch {id} ({cidr}) overlaps {} ({})", other.id, other.net));
        }
        self.vswitches.insert(id.into(), v);
        Ok(())
    }

    /// Someone else in the VPC takes `n` free addresses of `vswitch_id`
    /// (they stay taken), so a test can run a vSwitch out at a chosen moment.
    pub fn take_addresses(&mut self, vswitch_id: &str, n: usize) -> std::result::Result<Vec<Ipv4Addr>, String> {
        let v = self
            .vswitches
            .get_mut(vswitch_id)
            .ok_or_else(|| format!("no vSwitch {vswitch_id}"))?;
        v.allocate(n)
            .ok_or_else(|| format!("vSwitch {vswitch_id} has only {} free addresses", v.available()))
    }

    fn next(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    #[allow(clippy::too_many_arguments)]
    fn new_eni(
        &mut self,
        vswitch_id: &str,
        security_groups: Vec<String>,
        tags: Vec<(String, String)>,
        secondary: usize,
        name: String,
        description: String,
        resource_group_id: String,
    ) -> Result<Eni> {
        let vsw = self.vswitches.get_mut(vswitch_id).ok_or_else(|| {
            ApiError::new(
                404,
                "InvalidVSwitchId.NotFound",
                format!("The specified VSwitchId {vswitch_id:?} does not exist."),
            )
        })?;
        let zone_id = vsw.zone_id.clone();
        let ips = vsw.allocate(1 + secondary).ok_or_else(|| {
            ApiError::new(
                403,
                "InvalidVSwitchId.IpNotEnough",
                format!("The specified VSwitch \"{vswitch_id}\" has not enough IpAddress."),
            )
        })?;
        let n = self.next();
        Ok(Eni {
            id: format!("eni-emu{n:013x}"),
            mac: format!(
                "00:16:3e:{:02x}:{:02x}:{:02x}",
                (n >> 16) & 0xff,
                (n >> 8) & 0xff,
                n & 0xff
            ),
            vswitch_id: vswitch_id.into(),
            zone_id,
            status: EniStatus::Available,
            primary: false,
            instance_id: None,
            device_index: None,
            primary_ip: ips[0],
            secondary_ips: ips[1..].to_vec(),
            ipv6s: Vec::new(),
            security_groups,
            tags,
            creation_time: crate::utc::now(),
            name,
            description,
            resource_group_id,
            pending: None,
        })
    }

    /// Applies the ENI state changes that are due.
    pub fn advance(&mut self, now: Instant) {
        let due: Vec<String> = self
            .enis
            .values()
            .filter(|e| e.pending.is_some_and(|(_, at)| at <= now))
            .map(|e| e.id.clone())
            .collect();
        if due.is_empty() {
            return;
        }
        for id in due {
            let Some(eni) = self.enis.get_mut(&id) else { continue };
            let Some((next, _)) = eni.pending.take() else { continue };
            match next {
                EniStatus::InUse => {
                    eni.status = EniStatus::InUse;
                    if let (Some(instance_id), Some(v)) = (eni.instance_id.clone(), self.vswitches.get(&eni.vswitch_id))
                    {
                        self.events.push(AttachmentEvent::Attached {
                            eni_id: id.clone(),
                            mac: eni.mac.clone(),
                            instance_id,
                            gateway: v.gateway(),
                            vswitch_cidr: v.net.to_string(),
                            ipv6: v.gateway6().zip(v.net6.map(|n| n.to_string())),
                        });
                    }
                }
                EniStatus::Available => {
                    if eni.status == EniStatus::Detaching {
                        if let Some(instance_id) = eni.instance_id.take() {
                            self.events.push(AttachmentEvent::Detached {
                                eni_id: id.clone(),
                                mac: eni.mac.clone(),
                                instance_id,
                            });
                        }
                        eni.device_index = None;
                    }
                    eni.status = EniStatus::Available;
                }
                EniStatus::Deleting => {
                    self.enis.remove(&id);
                }
                other => eni.status = other,
            }
        }
        self.snapshot(now);
    }

    fn schedule(&mut self, eni_id: &str, now_status: EniStatus, then: EniStatus, delay_ms: u64, now: Instant) {
        if let Some(eni) = self.enis.get_mut(eni_id) {
            eni.status = now_status;
            eni.pending = Some((then, now + Duration::from_millis(delay_ms)));
        }
        self.advance(now);
        self.snapshot(now);
    }

    /// Records the ENIs for Describe lag.
    fn snapshot(&mut self, now: Instant) {
        if self.describe_lag.is_zero() {
            self.history.clear();
            return;
        }
        self.history.push_back((now, Arc::new(self.enis.clone())));
        // keep the newest snapshot older than the lag, and everything after it
        while self.history.len() > 1 && self.history[1].0 + self.describe_lag <= now {
            self.history.pop_front();
        }
    }

    pub fn set_describe_lag(&mut self, lag: Duration, now: Instant) {
        self.describe_lag = lag;
        self.history.clear();
        self.snapshot(now);
    }

    /// The ENIs as Describe* should show them: `describe_lag` in the past.
    fn described_enis(&self, now: Instant) -> Arc<BTreeMap<String, Eni>> {
        if self.describe_lag.is_zero() {
            return Arc::new(self.enis.clone());
        }
        self.history
            .iter()
            .rev()
            .find(|(at, _)| *at + self.describe_lag <= now)
            .or_else(|| self.history.front())
            .map_or_else(|| Arc::new(self.enis.clone()), |(_, e)| e.clone())
    }

    fn check_region(&self, p: &Params) -> Result<()> {
        let region = required(p, "RegionId")?;
        if region != self.region_id {
            return Err(ApiError::new(
                404,
                "InvalidRegionId.NotFound",
                format!("The specified RegionId {region:?} does not exist."),
            ));
        }
        Ok(())
    }

    /// Runs `action`; answers of ClientToken-carrying actions are remembered
    /// so a retry with the same token gets the same answer, not a second resource.
    pub fn dispatch(&mut self, action: &str, p: &Params, now: Instant) -> Result<Value> {
        self.advance(now);
        let token = p.get("ClientToken").filter(|t| !t.is_empty()).cloned();
        if let Some(token) = &token {
            if token.len() > 64 || !token.is_ascii() {
                return Err(ApiError::invalid("ClientToken", token, "at most 64 ASCII characters"));
            }
            let fingerprint = fingerprint(p);
            if let Some(rec) = self.client_tokens.get(&(action.to_owned(), token.clone())) {
                if rec.fingerprint != fingerprint {
                    return Err(ApiError::new(
                        400,
                        "IdempotentParameterMismatch",
                        "The request uses the same client token as a previous, but non-identical request.",
                    ));
                }
                return rec.answer.clone();
            }
        }
        let answer = match action {
            "CreateNetworkInterface" => self.create_network_interface(p),
            "AttachNetworkInterface" => self.attach(p, now),
            "DetachNetworkInterface" => self.detach(p, now),
            "DeleteNetworkInterface" => self.delete(p, now),
            "AssignPrivateIpAddresses" => self.assign(p),
            "UnassignPrivateIpAddresses" => self.unassign(p),
            "AssignIpv6Addresses" => self.assign_ipv6(p),
            "UnassignIpv6Addresses" => self.unassign_ipv6(p),
            "DescribeNetworkInterfaces" => self.describe_network_interfaces(p, now),
            "DescribeInstanceTypes" => self.describe_instance_types(p),
            "DescribeInstances" => self.describe_instances(p),
            "DescribeVSwitches" => self.describe_vswitches(p),
            other => Err(ApiError::new(
                404,
                "InvalidAction.NotFound",
                format!("Specified api {other:?} is not found, please check your url and method."),
            )),
        };
        if answer.is_ok() && !action.starts_with("Describe") {
            self.snapshot(now);
        }
        if let Some(token) = token {
            // a transient refusal is not remembered: the retry must get a real try
            let remember = !matches!(&answer, Err(e) if e.status >= 500);
            if remember {
                self.client_tokens.insert(
                    (action.to_owned(), token),
                    TokenRecord {
                        fingerprint: fingerprint(p),
                        answer: answer.clone(),
                    },
                );
            }
        }
        answer
    }

    fn create_network_interface(&mut self, p: &Params) -> Result<Value> {
        self.check_region(p)?;
        let vswitch_id = required(p, "VSwitchId")?;
        let mut groups = list(p, "SecurityGroupIds")?;
        if let Some(g) = p.get("SecurityGroupId").filter(|g| !g.is_empty()) {
            if !groups.is_empty() {
                return Err(ApiError::new(
                    400,
                    "InvalidParameter.Conflict",
                    "SecurityGroupId and SecurityGroupIds.N cannot be given together.",
                ));
            }
            groups.push(g.clone());
        }
        if groups.is_empty() {
            return Err(ApiError::missing("SecurityGroupId"));
        }
        for g in &groups {
            if !self.security_groups.contains(g) {
                return Err(ApiError::new(
                    404,
                    "InvalidSecurityGroupId.NotFound",
                    format!("The specified SecurityGroupId {g:?} does not exist."),
                ));
            }
        }
        let tags = tags(p)?;
        let count = optional_u32(p, "SecondaryPrivateIpAddressCount", 1, 49)?.unwrap_or(0) as usize;
        let eni = self.new_eni(
            &vswitch_id,
            groups,
            tags,
            count,
            p.get("NetworkInterfaceName").cloned().unwrap_or_default(),
            p.get("Description").cloned().unwrap_or_default(),
            p.get("ResourceGroupId").cloned().unwrap_or_default(),
        )?;
        let mut eni = eni;
        if let Some(n) = optional_u32(p, "Ipv6AddressCount", 1, 50)? {
            let vsw = self
                .vswitches
                .get_mut(&vswitch_id)
                .ok_or_else(|| ApiError::new(500, "InternalError", "vSwitch missing"))?;
            let Some(v6) = vsw.allocate6(n as usize) else {
                // what was taken for the ENI goes back
                for ip in std::iter::once(eni.primary_ip).chain(eni.secondary_ips.iter().copied()) {
                    vsw.release(ip);
                }
                return Err(ipv6_unavailable(&vswitch_id, vsw.net6.is_some()));
            };
            eni.ipv6s = v6;
        }
        let id = eni.id.clone();
        let delay = self.delays.create_ms;
        self.enis.insert(id.clone(), eni);
        if delay > 0 {
            self.schedule(&id, EniStatus::Creating, EniStatus::Available, delay, Instant::now());
        }
        let eni = &self.enis[&id];
        let mut body = eni_json(eni, self);
        body["Status"] = json!("Available");
        Ok(body)
    }

    fn eni_mut(&mut self, id: &str) -> Result<&mut Eni> {
        self.enis.get_mut(id).ok_or_else(|| ApiError::eni_not_found(id))
    }

    fn instance(&self, p: &Params) -> Result<InstanceState> {
        let id = required(p, "InstanceId")?;
        self.instances.get(&id).cloned().ok_or_else(|| {
            ApiError::new(
                404,
                "InvalidEcsId.NotFound",
                format!("The specified InstanceId {id:?} does not exist."),
            )
        })
    }

    fn instance_type_of(&self, instance: &InstanceState) -> Result<&InstanceTypeSpec> {
        self.instance_types
            .get(&instance.instance_type)
            .ok_or_else(|| ApiError::new(500, "InternalError", "instance type missing"))
    }

    fn attach(&mut self, p: &Params, now: Instant) -> Result<Value> {
        self.check_region(p)?;
        let instance = self.instance(p)?;
        let eni_id = required(p, "NetworkInterfaceId")?;
        let quota = self.instance_type_of(&instance)?.eni_quantity;
        let attached: Vec<u32> = self
            .enis
            .values()
            .filter(|e| e.instance_id.as_deref() == Some(&instance.id))
            .filter_map(|e| e.device_index)
            .collect();
        let eni = self.enis.get(&eni_id).ok_or_else(|| ApiError::eni_not_found(&eni_id))?;
        if eni.status != EniStatus::Available {
            return Err(ApiError::eni_state(&eni_id, eni.status, "AttachNetworkInterface"));
        }
        if eni.zone_id != instance.zone_id {
            return Err(ApiError::new(
                403,
                "InvalidOperation.AvailabilityZoneMismatch",
                format!(
                    "The ENI {eni_id} is in zone {}, the instance in {}.",
                    eni.zone_id, instance.zone_id
                ),
            ));
        }
        if attached.len() as u32 >= quota {
            return Err(ApiError::new(
                403,
                "EniPerInstanceLimitExceeded",
                format!(
                    "The instance {} already has {} ENIs, the quota of its type {}.",
                    instance.id,
                    attached.len(),
                    instance.instance_type
                ),
            ));
        }
        let index = (1..).find(|i| !attached.contains(i)).unwrap_or(1);
        let delay = self.delays.attach_ms;
        let eni = self.eni_mut(&eni_id)?;
        eni.instance_id = Some(instance.id.clone());
        eni.device_index = Some(index);
        self.schedule(&eni_id, EniStatus::Attaching, EniStatus::InUse, delay, now);
        Ok(json!({}))
    }

    fn detach(&mut self, p: &Params, now: Instant) -> Result<Value> {
        self.check_region(p)?;
        let instance = self.instance(p)?;
        let eni_id = required(p, "NetworkInterfaceId")?;
        let delay = self.delays.detach_ms;
        let eni = self.eni_mut(&eni_id)?;
        if eni.primary {
            return Err(ApiError::new(
                400,
                "InvalidOperation.DetachPrimaryEniNotAllowed",
                "The primary ENI cannot be detached.",
            ));
        }
        if eni.instance_id.as_deref() != Some(instance.id.as_str()) {
            return Err(ApiError::new(
                403,
                "InvalidOperation.EniNotAttached",
                format!("The ENI {eni_id} is not attached to {}.", instance.id),
            ));
        }
        if !matches!(eni.status, EniStatus::InUse | EniStatus::Attaching) {
            return Err(ApiError::eni_state(&eni_id, eni.status, "DetachNetworkInterface"));
        }
        self.schedule(&eni_id, EniStatus::Detaching, EniStatus::Available, delay, now);
        Ok(json!({}))
    }

    fn delete(&mut self, p: &Params, now: Instant) -> Result<Value> {
        self.check_region(p)?;
        let eni_id = required(p, "NetworkInterfaceId")?;
        let delay = self.delays.delete_ms;
        let eni = self.eni_mut(&eni_id)?;
        if eni.status != EniStatus::Available {
            return Err(ApiError::eni_state(&eni_id, eni.status, "DeleteNetworkInterface"));
        }
        let ips: Vec<Ipv4Addr> = std::iter::once(eni.primary_ip)
            .chain(eni.secondary_ips.iter().copied())
            .collect();
        let ipv6s = eni.ipv6s.clone();
        let vswitch_id = eni.vswitch_id.clone();
        if let Some(v) = self.vswitches.get_mut(&vswitch_id) {
            for ip in ips {
                v.release(ip);
            }
            for ip in ipv6s {
                v.release6(ip);
            }
        }
        if delay == 0 {
            self.enis.remove(&eni_id);
        } else {
            self.schedule(&eni_id, EniStatus::Deleting, EniStatus::Deleting, delay, now);
        }
        Ok(json!({}))
    }

    /// Per-ENI IPv4 quota: the instance type's when attached; unattached
    /// ENIs are bounded only by the largest quota of any type (50).
    fn ip_quota(&self, eni: &Eni) -> u32 {
        eni.instance_id
            .as_ref()
            .and_then(|i| self.instances.get(i))
            .and_then(|i| self.instance_types.get(&i.instance_type))
            .map_or(50, |t| t.ipv4_per_eni)
    }

    fn assign(&mut self, p: &Params) -> Result<Value> {
        self.check_region(p)?;
        let eni_id = required(p, "NetworkInterfaceId")?;
        let wanted: Vec<Ipv4Addr> = list(p, "PrivateIpAddress")?
            .iter()
            .map(|s| {
                s.parse()
                    .map_err(|_| ApiError::invalid("PrivateIpAddress", s, "not an IPv4 address"))
            })
            .collect::<Result<_>>()?;
        let count = optional_u32(p, "SecondaryPrivateIpAddressCount", 1, 49)?;
        let n = match (count, wanted.len()) {
            (Some(_), 1..) => {
                return Err(ApiError::new(
                    400,
                    "InvalidParameter.Conflict",
                    "PrivateIpAddress.N and SecondaryPrivateIpAddressCount cannot be given together.",
                ))
            }
            (None, 0) => return Err(ApiError::missing("SecondaryPrivateIpAddressCount")),
            (Some(c), _) => c as usize,
            (None, n) => n,
        };
        if n > self.max_ips_per_assign as usize {
            return Err(ApiError::invalid(
                "SecondaryPrivateIpAddressCount",
                &n.to_string(),
                &format!("at most {} per call", self.max_ips_per_assign),
            ));
        }
        let eni = self.enis.get(&eni_id).ok_or_else(|| ApiError::eni_not_found(&eni_id))?;
        if !matches!(eni.status, EniStatus::Available | EniStatus::InUse) {
            return Err(ApiError::eni_state(&eni_id, eni.status, "AssignPrivateIpAddresses"));
        }
        let quota = self.ip_quota(eni) as usize;
        let have = 1 + eni.secondary_ips.len();
        if have + n > quota {
            return Err(ApiError::new(
                403,
                "MaxEniPrivateIpsCountExceeded",
                format!("The ENI {eni_id} has {have} addresses; {n} more exceed its quota of {quota}."),
            ));
        }
        let vswitch_id = eni.vswitch_id.clone();
        let vsw = self
            .vswitches
            .get_mut(&vswitch_id)
            .ok_or_else(|| ApiError::new(500, "InternalError", "vSwitch missing"))?;
        let ips = if wanted.is_empty() {
            vsw.allocate(n).ok_or_else(|| {
                ApiError::new(
                    403,
                    "InvalidVSwitchId.IpNotEnough",
                    format!("The specified VSwitch \"{vswitch_id}\" has not enough IpAddress."),
                )
            })?
        } else {
            let mut taken = Vec::new();
            for ip in &wanted {
                if let Err(e) = vsw.take(*ip) {
                    for t in taken {
                        vsw.release(t);
                    }
                    return Err(e);
                }
                taken.push(*ip);
            }
            taken
        };
        self.eni_mut(&eni_id)?.secondary_ips.extend(&ips);
        Ok(json!({
            "AssignedPrivateIpAddressesSet": {
                "NetworkInterfaceId": eni_id,
                "PrivateIpSet": {"PrivateIpAddress": ips.iter().map(ToString::to_string).collect::<Vec<_>>()},
            }
        }))
    }

    fn unassign(&mut self, p: &Params) -> Result<Value> {
        self.check_region(p)?;
        let eni_id = required(p, "NetworkInterfaceId")?;
        let ips: Vec<Ipv4Addr> = list(p, "PrivateIpAddress")?
            .iter()
            .map(|s| {
                s.parse()
                    .map_err(|_| ApiError::invalid("PrivateIpAddress", s, "not an IPv4 address"))
            })
            .collect::<Result<_>>()?;
        if ips.is_empty() {
            return Err(ApiError::missing("PrivateIpAddress.1"));
        }
        let eni = self.enis.get(&eni_id).ok_or_else(|| ApiError::eni_not_found(&eni_id))?;
        if !matches!(eni.status, EniStatus::Available | EniStatus::InUse) {
            return Err(ApiError::eni_state(&eni_id, eni.status, "UnassignPrivateIpAddresses"));
        }
        for ip in &ips {
            if *ip == eni.primary_ip {
                return Err(ApiError::invalid(
                    "PrivateIpAddress",
                    &ip.to_string(),
                    "the primary address of an ENI cannot be unassigned",
                ));
            }
            if !eni.secondary_ips.contains(ip) {
                return Err(ApiError::new(
                    403,
                    "InvalidIp.IpUnassigned",
                    format!("The address {ip} is not assigned to {eni_id}."),
                ));
            }
        }
        let vswitch_id = eni.vswitch_id.clone();
        self.eni_mut(&eni_id)?.secondary_ips.retain(|ip| !ips.contains(ip));
        if let Some(v) = self.vswitches.get_mut(&vswitch_id) {
            for ip in ips {
                v.release(ip);
            }
        }
        Ok(json!({}))
    }

    fn ipv6_quota(&self, eni: &Eni) -> u32 {
        eni.instance_id
            .as_ref()
            .and_then(|i| self.instances.get(i))
            .and_then(|i| self.instance_types.get(&i.instance_type))
            .map_or(50, |t| t.ipv6_per_eni)
    }

    fn assign_ipv6(&mut self, p: &Params) -> Result<Value> {
        self.check_region(p)?;
        let eni_id = required(p, "NetworkInterfaceId")?;
        if !list(p, "Ipv6Address")?.is_empty() {
            return Err(ApiError::invalid(
                "Ipv6Address",
                "",
                "the emulator assigns by Ipv6AddressCount only",
            ));
        }
        let n =
            optional_u32(p, "Ipv6AddressCount", 1, 50)?.ok_or_else(|| ApiError::missing("Ipv6AddressCount"))? as usize;
        let eni = self.enis.get(&eni_id).ok_or_else(|| ApiError::eni_not_found(&eni_id))?;
        if !matches!(eni.status, EniStatus::Available | EniStatus::InUse) {
            return Err(ApiError::eni_state(&eni_id, eni.status, "AssignIpv6Addresses"));
        }
        let quota = self.ipv6_quota(eni) as usize;
        let have = eni.ipv6s.len();
        if have + n > quota {
            return Err(ApiError::new(
                403,
                "InvalidOperation.Ipv6CountExceeded",
                format!("The ENI {eni_id} has {have} IPv6 addresses; {n} more exceed its quota of {quota}."),
            ));
        }
        let vswitch_id = eni.vswitch_id.clone();
        let vsw = self
            .vswitches
            .get_mut(&vswitch_id)
            .ok_or_else(|| ApiError::new(500, "InternalError", "vSwitch missing"))?;
        let has_ipv6 = vsw.net6.is_some();
        let ips = vsw
            .allocate6(n)
            .ok_or_else(|| ipv6_unavailable(&vswitch_id, has_ipv6))?;
        self.eni_mut(&eni_id)?.ipv6s.extend(&ips);
        Ok(json!({
            "NetworkInterfaceId": eni_id,
            "Ipv6Sets": {"Ipv6Address": ips.iter().map(ToString::to_string).collect::<Vec<_>>()},
        }))
    }

    fn unassign_ipv6(&mut self, p: &Params) -> Result<Value> {
        self.check_region(p)?;
        let eni_id = required(p, "NetworkInterfaceId")?;
        let ips: Vec<Ipv6Addr> = list(p, "Ipv6Address")?
            .iter()
            .map(|s| {
                s.parse()
                    .map_err(|_| ApiError::invalid("Ipv6Address", s, "not an IPv6 address"))
            })
            .collect::<Result<_>>()?;
        if ips.is_empty() {
            return Err(ApiError::missing("Ipv6Address.1"));
        }
        let eni = self.enis.get(&eni_id).ok_or_else(|| ApiError::eni_not_found(&eni_id))?;
        if !matches!(eni.status, EniStatus::Available | EniStatus::InUse) {
            return Err(ApiError::eni_state(&eni_id, eni.status, "UnassignIpv6Addresses"));
        }
        if let Some(ip) = ips.iter().find(|ip| !eni.ipv6s.contains(ip)) {
            return Err(ApiError::new(
                403,
                "InvalidIp.IpUnassigned",
                format!("The address {ip} is not assigned to {eni_id}."),
            ));
        }
        let vswitch_id = eni.vswitch_id.clone();
        self.eni_mut(&eni_id)?.ipv6s.retain(|ip| !ips.contains(ip));
        if let Some(v) = self.vswitches.get_mut(&vswitch_id) {
            for ip in ips {
                v.release6(ip);
            }
        }
        Ok(json!({}))
    }

    fn describe_network_interfaces(&self, p: &Params, now: Instant) -> Result<Value> {
        self.check_region(p)?;
        let ids = list(p, "NetworkInterfaceId")?;
        let tag_filter = tags(p)?;
        let kind = p.get("Type").cloned();
        if let Some(k) = &kind {
            if k != "Primary" && k != "Secondary" {
                return Err(ApiError::invalid("Type", k, "expected Primary or Secondary"));
            }
        }
        let enis = self.described_enis(now);
        let matching: Vec<&Eni> = enis
            .values()
            .filter(|e| {
                p.get("InstanceId")
                    .is_none_or(|i| e.instance_id.as_deref() == Some(i.as_str()))
            })
            .filter(|e| p.get("VSwitchId").is_none_or(|v| &e.vswitch_id == v))
            .filter(|_| p.get("VpcId").is_none_or(|v| v == &self.vpc_id))
            .filter(|e| p.get("Status").is_none_or(|s| format!("{:?}", e.status) == *s))
            .filter(|e| kind.as_deref().is_none_or(|k| (k == "Primary") == e.primary))
            .filter(|e| ids.is_empty() || ids.contains(&e.id))
            .filter(|e| tag_filter.iter().all(|t| e.tags.contains(t)))
            .collect();
        let total = matching.len();
        let (start, size, next) = if p.contains_key("PageNumber") || p.contains_key("PageSize") {
            let page = optional_u32(p, "PageNumber", 1, u32::MAX)?.unwrap_or(1) as usize;
            let size = optional_u32(p, "PageSize", 1, 1000)?.unwrap_or(10) as usize;
            ((page - 1) * size, size, None)
        } else {
            let size = p
                .get("MaxResults")
                .map(|_| optional_u32(p, "MaxResults", 0, u32::MAX))
                .transpose()?
                .flatten()
                .unwrap_or(10)
                .clamp(10, 500) as usize;
            let start = match p.get("NextToken").filter(|t| !t.is_empty()) {
                Some(t) => decode_next_token(t)?,
                None => 0,
            };
            (start, size, Some(()))
        };
        let page: Vec<Value> = matching
            .iter()
            .skip(start)
            .take(size)
            .map(|e| eni_json(e, self))
            .collect();
        let next_token = if next.is_some() && start + size < total {
            encode_next_token(start + size)
        } else {
            String::new()
        };
        Ok(json!({
            "TotalCount": total,
            "PageNumber": start.checked_div(size).map_or(1, |n| n + 1),
            "PageSize": size,
            "NextToken": next_token,
            "NetworkInterfaceSets": {"NetworkInterfaceSet": page},
        }))
    }

    fn describe_instance_types(&self, p: &Params) -> Result<Value> {
        let wanted = list(p, "InstanceTypes")?;
        if wanted.len() > 10 {
            return Err(ApiError::invalid(
                "InstanceTypes",
                &wanted.len().to_string(),
                "at most 10 types",
            ));
        }
        let types: Vec<Value> = self
            .instance_types
            .values()
            .filter(|t| wanted.is_empty() || wanted.contains(&t.id))
            .map(|t| {
                json!({
                    "InstanceTypeId": t.id,
                    "InstanceTypeFamily": t.id.rsplit_once('.').map_or(t.id.as_str(), |(f, _)| f),
                    "EniQuantity": t.eni_quantity,
                    "EniPrivateIpAddressQuantity": t.ipv4_per_eni,
                    "EniIpv6AddressQuantity": t.ipv6_per_eni,
                    "EniTotalQuantity": t.eni_total_quantity.unwrap_or(t.eni_quantity),
                    "EniTrunkSupported": false,
                    "EriQuantity": 0,
                    "CpuArchitecture": "X86",
                })
            })
            .collect();
        Ok(json!({"NextToken": "", "InstanceTypes": {"InstanceType": types}}))
    }

    fn describe_instances(&self, p: &Params) -> Result<Value> {
        self.check_region(p)?;
        let ids: Vec<String> = match p.get("InstanceIds").filter(|s| !s.is_empty()) {
            Some(s) => serde_json::from_str(s)
                .map_err(|_| ApiError::invalid("InstanceIds", s, "expected a JSON array of instance ids"))?,
            None => Vec::new(),
        };
        let instances: Vec<Value> = self
            .instances
            .values()
            .filter(|i| ids.is_empty() || ids.contains(&i.id))
            .map(|i| {
                let primary = &self.enis[&i.primary_eni];
                let nics: Vec<Value> = self
                    .enis
                    .values()
                    .filter(|e| e.instance_id.as_deref() == Some(&i.id))
                    .map(|e| {
                        json!({
                            "NetworkInterfaceId": e.id,
                            "Type": if e.primary { "Primary" } else { "Secondary" },
                            "MacAddress": e.mac,
                            "PrimaryIpAddress": e.primary_ip.to_string(),
                            "PrivateIpSets": {"PrivateIpSet": [{"PrivateIpAddress": e.primary_ip.to_string(), "Primary": true}]},
                        })
                    })
                    .collect();
                json!({
                    "InstanceId": i.id,
                    "RegionId": self.region_id,
                    "ZoneId": i.zone_id,
                    "InstanceType": i.instance_type,
                    "InstanceTypeFamily": i.instance_type.rsplit_once('.').map_or(i.instance_type.as_str(), |(f, _)| f),
                    "Status": "Running",
                    "InstanceNetworkType": "vpc",
                    "VpcAttributes": {"VpcId": self.vpc_id, "VSwitchId": i.vswitch_id, "NatIpAddress": "",
                                      "PrivateIpAddress": {"IpAddress": [primary.primary_ip.to_string()]}},
                    "SecurityGroupIds": {"SecurityGroupId": i.security_groups},
                    "NetworkInterfaces": {"NetworkInterface": nics},
                    "Tags": {"Tag": []},
                })
            })
            .collect();
        Ok(
            json!({"TotalCount": instances.len(), "PageNumber": 1, "PageSize": instances.len().max(10), "NextToken": "",
                  "Instances": {"Instance": instances}}),
        )
    }

    fn describe_vswitches(&self, p: &Params) -> Result<Value> {
        if !p.contains_key("RegionId") && !p.contains_key("VpcId") {
            return Err(ApiError::missing("RegionId"));
        }
        if p.contains_key("RegionId") {
            self.check_region(p)?;
        }
        let page = optional_u32(p, "PageNumber", 1, u32::MAX)?.unwrap_or(1) as usize;
        let size = optional_u32(p, "PageSize", 1, 50)?.unwrap_or(10) as usize;
        let matching: Vec<&VSwitchState> = self
            .vswitches
            .values()
            .filter(|v| p.get("VSwitchId").is_none_or(|id| &v.id == id))
            .filter(|v| p.get("ZoneId").is_none_or(|z| &v.zone_id == z))
            .filter(|_| p.get("VpcId").is_none_or(|id| id == &self.vpc_id))
            .collect();
        let items: Vec<Value> = matching
            .iter()
            .skip((page - 1) * size)
            .take(size)
            .map(|v| {
                json!({
                    "VSwitchId": v.id, "VpcId": self.vpc_id, "ZoneId": v.zone_id, "CidrBlock": v.net.to_string(),
                    "AvailableIpAddressCount": v.available(), "Status": "Available", "VSwitchName": "", "Description": "",
                    "IsDefault": false, "Ipv6CidrBlock": v.net6.map(|n| n.to_string()).unwrap_or_default(),
                    "EnabledIpv6": v.net6.is_some(),
                    "RouteTable": {"RouteTableId": "vtb-emulated", "RouteTableType": "System"}, "Tags": {"Tag": []},
                })
            })
            .collect();
        Ok(json!({"TotalCount": matching.len(), "PageNumber": page, "PageSize": size, "VSwitches": {"VSwitch": items}}))
    }

    /// ENIs attached (InUse) to `instance_id`, primary first, for the metadata service.
    pub fn attached_enis(&self, instance_id: &str) -> Vec<&Eni> {
        let mut enis: Vec<&Eni> = self
            .enis
            .values()
            .filter(|e| e.instance_id.as_deref() == Some(instance_id) && e.status == EniStatus::InUse)
            .collect();
        enis.sort_by_key(|e| e.device_index);
        enis
    }

    /// The whole world, for tests and the demo.
    pub fn dump(&self) -> Value {
        let vswitches: Vec<Value> = self
            .vswitches
            .values()
            .map(|v| {
                json!({"id": v.id, "zone_id": v.zone_id, "cidr": v.net.to_string(), "gateway": v.gateway().to_string(),
                            "capacity": v.capacity(), "available": v.available()})
            })
            .collect();
        let instances: Vec<Value> = self
            .instances
            .values()
            .map(|i| json!({"id": i.id, "zone_id": i.zone_id, "instance_type": i.instance_type, "vswitch_id": i.vswitch_id, "primary_eni": i.primary_eni}))
            .collect();
        json!({
            "region_id": self.region_id,
            "vpc_id": self.vpc_id,
            "vswitches": vswitches,
            "instances": instances,
            "enis": self.enis.values().collect::<Vec<_>>(),
            "client_tokens": self.client_tokens.len(),
        })
    }
}

fn eni_json(e: &Eni, w: &World) -> Value {
    let mut ips = vec![
        json!({"PrivateIpAddress": e.primary_ip.to_string(), "Primary": true, "AssociatedPublicIp": {}, "PrivateDnsName": ""}),
    ];
    ips.extend(e.secondary_ips.iter().map(|ip| json!({"PrivateIpAddress": ip.to_string(), "Primary": false, "AssociatedPublicIp": {}, "PrivateDnsName": ""})));
    json!({
        "NetworkInterfaceId": e.id,
        "Status": format!("{:?}", e.status),
        "Type": if e.primary { "Primary" } else { "Secondary" },
        "InstanceId": e.instance_id.clone().unwrap_or_default(),
        "VpcId": w.vpc_id,
        "VSwitchId": e.vswitch_id,
        "ZoneId": e.zone_id,
        "MacAddress": e.mac,
        "PrivateIpAddress": e.primary_ip.to_string(),
        "CreationTime": e.creation_time,
        "OwnerId": "1234567890",
        "ResourceGroupId": e.resource_group_id,
        "NetworkInterfaceName": e.name,
        "Description": e.description,
        "ServiceManaged": false,
        "DeleteOnRelease": false,
        "NetworkInterfaceTrafficMode": "Standard",
        "SecurityGroupIds": {"SecurityGroupId": e.security_groups},
        "PrivateIpSets": {"PrivateIpSet": ips},
        "Ipv6Sets": {"Ipv6Set": e.ipv6s.iter().map(|ip| json!({"Ipv6Address": ip.to_string()})).collect::<Vec<_>>()},
        "AssociatedPublicIp": {"PublicIpAddress": "", "AllocationId": ""},
        "Attachment": {"InstanceId": e.instance_id.clone().unwrap_or_default(), "DeviceIndex": e.device_index.unwrap_or(0),
                       "NetworkCardIndex": 0, "TrunkNetworkInterfaceId": ""},
        "Tags": {"Tag": e.tags.iter().map(|(k, v)| json!({"TagKey": k, "TagValue": v})).collect::<Vec<_>>()},
    })
}

fn encode_next_token(offset: usize) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("offset:{offset}"))
}

fn decode_next_token(t: &str) -> Result<usize> {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(t)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| s.strip_prefix("offset:").and_then(|n| n.parse().ok()))
        .ok_or_else(|| ApiError::invalid("NextToken", t, "not a token this API returned"))
}

/// What identifies "the same request" for ClientToken purposes.
fn fingerprint(p: &Params) -> String {
    const PER_ATTEMPT: &[&str] = &[
        "Signature",
        "SignatureNonce",
        "Timestamp",
        "AccessKeyId",
        "SecurityToken",
        "ClientToken",
        "Format",
    ];
    let kept: Params = p
        .iter()
        .filter(|(k, _)| !PER_ATTEMPT.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    crate::signature::canonical_query(&kept)
}

pub(crate) fn required(p: &Params, name: &str) -> Result<String> {
    p.get(name)
        .filter(|v| !v.is_empty())
        .cloned()
        .ok_or_else(|| ApiError::missing(name))
}

fn optional_u32(p: &Params, name: &str, min: u32, max: u32) -> Result<Option<u32>> {
    let Some(v) = p.get(name).filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    let n: u32 = v
        .parse()
        .map_err(|_| ApiError::invalid(name, v, "not a whole number"))?;
    if n < min || n > max {
        return Err(ApiError::invalid(name, v, &format!("must be from {min} to {max}")));
    }
    Ok(Some(n))
}

/// `Name.1 … Name.N`, which must be numbered from 1 without gaps.
fn list(p: &Params, name: &str) -> Result<Vec<String>> {
    let prefix = format!("{name}.");
    let mut items: Vec<(u32, String)> = Vec::new();
    for (k, v) in p.range(prefix.clone()..) {
        let Some(rest) = k.strip_prefix(&prefix) else { break };
        if rest.contains('.') {
            continue;
        }
        let n: u32 = rest
            .parse()
            .map_err(|_| ApiError::invalid(k, v, "the index must be a number"))?;
        items.push((n, v.clone()));
    }
    items.sort_by_key(|(n, _)| *n);
    for (i, (n, _)) in items.iter().enumerate() {
        if *n as usize != i + 1 {
            return Err(ApiError::invalid(
                &format!("{name}.{n}"),
                "",
                "list indexes must run 1, 2, 3, … without gaps",
            ));
        }
    }
    Ok(items.into_iter().map(|(_, v)| v).collect())
}

/// `Tag.N.Key` / `Tag.N.Value` pairs.
fn tags(p: &Params) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for n in 1..=20 {
        match (p.get(&format!("Tag.{n}.Key")), p.get(&format!("Tag.{n}.Value"))) {
            (Some(k), v) if !k.is_empty() => out.push((k.clone(), v.cloned().unwrap_or_default())),
            (Some(_), _) => {
                return Err(ApiError::invalid(
                    &format!("Tag.{n}.Key"),
                    "",
                    "a tag key cannot be empty",
                ))
            }
            (None, Some(v)) => {
                return Err(ApiError::invalid(
                    &format!("Tag.{n}.Value"),
                    v,
                    "a tag value needs its Tag.N.Key",
                ))
            }
            (None, None) => {}
        }
    }
    if p.keys().any(|k| {
        k.strip_prefix("Tag.")
            .and_then(|r| r.split('.').next())
            .and_then(|n| n.parse::<u32>().ok())
            .is_some_and(|n| n > 20)
    }) {
        return Err(ApiError::invalid("Tag.N", "", "at most 20 tags"));
    }
    Ok(out)
}

/// The wall-clock expiry of credentials issued now with `ttl`.
pub(crate) fn expiry(ttl: Duration) -> SystemTime {
    SystemTime::now() + ttl
}

fn ipv6_unavailable(vswitch_id: &str, enabled: bool) -> ApiError {
    if enabled {
        ApiError::new(
            403,
            "InvalidVSwitchId.Ipv6NotEnough",
            format!("The specified VSwitch \"{vswitch_id}\" has not enough IPv6 addresses."),
        )
    } else {
        ApiError::new(
            403,
            "InvalidVSwitchId.Ipv6NotTurnOn",
            format!("The specified VSwitch \"{vswitch_id}\" has no IPv6 CIDR."),
        )
    }
}
