//! Typed requests and responses of the ECS 2014-05-26 and VPC 2016-04-28
//! actions terway-rs uses. Field names are exactly the API's; lists arrive
//! wrapped (`{"SecurityGroupIds": {"SecurityGroupId": [...]}}`).

use crate::signature::Params;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Product {
    Ecs,
    Vpc,
}

impl Product {
    pub fn version(self) -> &'static str {
        match self {
            Self::Ecs => "2014-05-26",
            Self::Vpc => "2016-04-28",
        }
    }
}

/// An OpenAPI action: its name, product, HTTP method and parameters.
pub trait Action {
    const NAME: &'static str;
    const PRODUCT: Product;
    /// Mutations go as POST with a form body, reads as GET.
    const POST: bool;
    /// Whether the action takes a `ClientToken` (kept across retries of one call).
    const TAKES_CLIENT_TOKEN: bool = false;
    type Response: DeserializeOwned + std::fmt::Debug;
    fn params(&self, p: &mut Params);
    /// A token chosen by the caller (e.g. recorded in an intent before the call).
    fn client_token(&self) -> Option<&str> {
        None
    }
}

fn put(p: &mut Params, key: &str, value: impl ToString) {
    p.insert(key.to_owned(), value.to_string());
}

fn put_opt(p: &mut Params, key: &str, value: Option<impl ToString>) {
    if let Some(v) = value {
        put(p, key, v);
    }
}

/// `Name.1`, `Name.2`, … (1-based).
fn put_list<T: ToString>(p: &mut Params, key: &str, values: &[T]) {
    for (i, v) in values.iter().enumerate() {
        put(p, &format!("{key}.{}", i + 1), v.to_string());
    }
}

/// `Tag.N.Key` / `Tag.N.Value`.
fn put_tags(p: &mut Params, tags: &[(String, String)]) {
    for (i, (k, v)) in tags.iter().enumerate() {
        put(p, &format!("Tag.{}.Key", i + 1), k);
        put(p, &format!("Tag.{}.Value", i + 1), v);
    }
}

macro_rules! wrapped_list {
    ($(#[$m:meta])* $name:ident, $key:literal, $item:ty) => {
        $(#[$m])*
        #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
        pub struct $name {
            #[serde(rename = $key, default)]
            pub items: Vec<$item>,
        }
        impl From<Vec<$item>> for $name {
            fn from(items: Vec<$item>) -> Self {
                Self { items }
            }
        }
    };
}

wrapped_list!(SecurityGroupIds, "SecurityGroupId", String);
wrapped_list!(PrivateIpSets, "PrivateIpSet", PrivateIpSet);
wrapped_list!(EcsTags, "Tag", EcsTag);
wrapped_list!(NetworkInterfaceSets, "NetworkInterfaceSet", NetworkInterfaceSet);
wrapped_list!(PrivateIpAddressList, "PrivateIpAddress", String);
wrapped_list!(InstanceTypeList, "InstanceType", InstanceType);
wrapped_list!(InstanceList, "Instance", Instance);
wrapped_list!(InstanceNetworkInterfaces, "NetworkInterface", InstanceNetworkInterface);
wrapped_list!(IpAddressList, "IpAddress", String);
wrapped_list!(VSwitchList, "VSwitch", VSwitch);
wrapped_list!(VpcTags, "Tag", VpcTag);
wrapped_list!(Ipv6Sets, "Ipv6Set", Ipv6Set);
wrapped_list!(Ipv6AddressList, "Ipv6Address", String);

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Ipv6Set {
    pub ipv6_address: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct PrivateIpSet {
    pub private_ip_address: String,
    pub primary: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct EcsTag {
    pub tag_key: String,
    pub tag_value: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct VpcTag {
    pub key: String,
    pub value: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Attachment {
    pub instance_id: String,
    pub device_index: u32,
    pub network_card_index: u32,
    pub trunk_network_interface_id: String,
}

/// One ENI as DescribeNetworkInterfaces and CreateNetworkInterface return it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct NetworkInterfaceSet {
    pub network_interface_id: String,
    pub status: String,
    #[serde(rename = "Type")]
    pub kind: String,
    pub instance_id: String,
    pub vpc_id: String,
    #[serde(rename = "VSwitchId")]
    pub vswitch_id: String,
    pub zone_id: String,
    pub mac_address: String,
    pub private_ip_address: String,
    pub creation_time: String,
    pub resource_group_id: String,
    pub network_interface_name: String,
    pub description: String,
    pub security_group_ids: SecurityGroupIds,
    pub private_ip_sets: PrivateIpSets,
    pub ipv6_sets: Ipv6Sets,
    pub tags: EcsTags,
    pub attachment: Attachment,
}

impl NetworkInterfaceSet {
    /// Every IPv4 on the ENI, primary first.
    pub fn ipv4_addresses(&self) -> Vec<Ipv4Addr> {
        let mut ips: Vec<(bool, Ipv4Addr)> = self
            .private_ip_sets
            .items
            .iter()
            .filter_map(|s| s.private_ip_address.parse().ok().map(|ip| (!s.primary, ip)))
            .collect();
        ips.sort();
        ips.into_iter().map(|(_, ip)| ip).collect()
    }

    /// Every IPv6 on the ENI.
    pub fn ipv6_addresses(&self) -> Vec<std::net::Ipv6Addr> {
        self.ipv6_sets
            .items
            .iter()
            .filter_map(|s| s.ipv6_address.parse().ok())
            .collect()
    }

    pub fn tag(&self, key: &str) -> Option<&str> {
        self.tags
            .items
            .iter()
            .find(|t| t.tag_key == key)
            .map(|t| t.tag_value.as_str())
    }
}

// ---- CreateNetworkInterface ----

#[derive(Debug, Clone, Default)]
pub struct CreateNetworkInterface {
    pub region_id: String,
    pub vswitch_id: String,
    pub security_group_ids: Vec<String>,
    pub secondary_private_ip_address_count: Option<u32>,
    /// IPv6 addresses the ENI comes with (dual stack).
    pub ipv6_address_count: Option<u32>,
    pub tags: Vec<(String, String)>,
    pub resource_group_id: Option<String>,
    pub network_interface_name: Option<String>,
    pub description: Option<String>,
    pub client_token: Option<String>,
}

pub type CreateNetworkInterfaceResponse = NetworkInterfaceSetWithRequest;

/// The ENI fields plus the RequestId, as Create returns them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct NetworkInterfaceSetWithRequest {
    pub request_id: String,
    #[serde(flatten)]
    pub eni: NetworkInterfaceSet,
}

impl Action for CreateNetworkInterface {
    const NAME: &'static str = "CreateNetworkInterface";
    const PRODUCT: Product = Product::Ecs;
    const POST: bool = true;
    const TAKES_CLIENT_TOKEN: bool = true;
    type Response = CreateNetworkInterfaceResponse;
    fn params(&self, p: &mut Params) {
        put(p, "RegionId", &self.region_id);
        put(p, "VSwitchId", &self.vswitch_id);
        put_list(p, "SecurityGroupIds", &self.security_group_ids);
        put_opt(
            p,
            "SecondaryPrivateIpAddressCount",
            self.secondary_private_ip_address_count,
        );
        put_opt(p, "Ipv6AddressCount", self.ipv6_address_count);
        put_tags(p, &self.tags);
        put_opt(p, "ResourceGroupId", self.resource_group_id.as_ref());
        put_opt(p, "NetworkInterfaceName", self.network_interface_name.as_ref());
        put_opt(p, "Description", self.description.as_ref());
    }
    fn client_token(&self) -> Option<&str> {
        self.client_token.as_deref()
    }
}

// ---- Attach / Detach / Delete ----

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct RequestIdOnly {
    pub request_id: String,
}

#[derive(Debug, Clone, Default)]
pub struct AttachNetworkInterface {
    pub region_id: String,
    pub instance_id: String,
    pub network_interface_id: String,
}

impl Action for AttachNetworkInterface {
    const NAME: &'static str = "AttachNetworkInterface";
    const PRODUCT: Product = Product::Ecs;
    const POST: bool = true;
    type Response = RequestIdOnly;
    fn params(&self, p: &mut Params) {
        put(p, "RegionId", &self.region_id);
        put(p, "InstanceId", &self.instance_id);
        put(p, "NetworkInterfaceId", &self.network_interface_id);
    }
}

#[derive(Debug, Clone, Default)]
pub struct DetachNetworkInterface {
    pub region_id: String,
    pub instance_id: String,
    pub network_interface_id: String,
}

impl Action for DetachNetworkInterface {
    const NAME: &'static str = "DetachNetworkInterface";
    const PRODUCT: Product = Product::Ecs;
    const POST: bool = true;
    type Response = RequestIdOnly;
    fn params(&self, p: &mut Params) {
        put(p, "RegionId", &self.region_id);
        put(p, "InstanceId", &self.instance_id);
        put(p, "NetworkInterfaceId", &self.network_interface_id);
    }
}

#[derive(Debug, Clone, Default)]
pub struct DeleteNetworkInterface {
    pub region_id: String,
    pub network_interface_id: String,
}

impl Action for DeleteNetworkInterface {
    const NAME: &'static str = "DeleteNetworkInterface";
    const PRODUCT: Product = Product::Ecs;
    const POST: bool = true;
    type Response = RequestIdOnly;
    fn params(&self, p: &mut Params) {
        put(p, "RegionId", &self.region_id);
        put(p, "NetworkInterfaceId", &self.network_interface_id);
    }
}

// ---- Assign / Unassign ----

#[derive(Debug, Clone, Default)]
pub struct AssignPrivateIpAddresses {
    pub region_id: String,
    pub network_interface_id: String,
    /// Ask for this many addresses chosen by the cloud …
    pub secondary_private_ip_address_count: Option<u32>,
    /// … or for these exact addresses.
    pub private_ip_addresses: Vec<Ipv4Addr>,
    pub client_token: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct AssignedPrivateIpAddressesSet {
    pub network_interface_id: String,
    pub private_ip_set: PrivateIpAddressList,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct AssignPrivateIpAddressesResponse {
    pub request_id: String,
    /// Older API versions answered with the RequestId only.
    pub assigned_private_ip_addresses_set: Option<AssignedPrivateIpAddressesSet>,
}

impl AssignPrivateIpAddressesResponse {
    pub fn addresses(&self) -> Vec<Ipv4Addr> {
        self.assigned_private_ip_addresses_set
            .as_ref()
            .map(|s| s.private_ip_set.items.iter().filter_map(|ip| ip.parse().ok()).collect())
            .unwrap_or_default()
    }
}

impl Action for AssignPrivateIpAddresses {
    const NAME: &'static str = "AssignPrivateIpAddresses";
    const PRODUCT: Product = Product::Ecs;
    const POST: bool = true;
    const TAKES_CLIENT_TOKEN: bool = true;
    type Response = AssignPrivateIpAddressesResponse;
    fn params(&self, p: &mut Params) {
        put(p, "RegionId", &self.region_id);
        put(p, "NetworkInterfaceId", &self.network_interface_id);
        put_opt(
            p,
            "SecondaryPrivateIpAddressCount",
            self.secondary_private_ip_address_count,
        );
        put_list(p, "PrivateIpAddress", &self.private_ip_addresses);
    }
    fn client_token(&self) -> Option<&str> {
        self.client_token.as_deref()
    }
}

#[derive(Debug, Clone, Default)]
pub struct UnassignPrivateIpAddresses {
    pub region_id: String,
    pub network_interface_id: String,
    pub private_ip_addresses: Vec<Ipv4Addr>,
}

impl Action for UnassignPrivateIpAddresses {
    const NAME: &'static str = "UnassignPrivateIpAddresses";
    const PRODUCT: Product = Product::Ecs;
    const POST: bool = true;
    type Response = RequestIdOnly;
    fn params(&self, p: &mut Params) {
        put(p, "RegionId", &self.region_id);
        put(p, "NetworkInterfaceId", &self.network_interface_id);
        put_list(p, "PrivateIpAddress", &self.private_ip_addresses);
    }
}

#[derive(Debug, Clone, Default)]
pub struct AssignIpv6Addresses {
    pub region_id: String,
    pub network_interface_id: String,
    pub ipv6_address_count: u32,
    pub client_token: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct AssignIpv6AddressesResponse {
    pub request_id: String,
    pub network_interface_id: String,
    pub ipv6_sets: Ipv6AddressList,
}

impl AssignIpv6AddressesResponse {
    pub fn addresses(&self) -> Vec<std::net::Ipv6Addr> {
        self.ipv6_sets.items.iter().filter_map(|ip| ip.parse().ok()).collect()
    }
}

impl Action for AssignIpv6Addresses {
    const NAME: &'static str = "AssignIpv6Addresses";
    const PRODUCT: Product = Product::Ecs;
    const POST: bool = true;
    const TAKES_CLIENT_TOKEN: bool = true;
    type Response = AssignIpv6AddressesResponse;
    fn params(&self, p: &mut Params) {
        put(p, "RegionId", &self.region_id);
        put(p, "NetworkInterfaceId", &self.network_interface_id);
        put(p, "Ipv6AddressCount", self.ipv6_address_count);
    }
    fn client_token(&self) -> Option<&str> {
        self.client_token.as_deref()
    }
}

#[derive(Debug, Clone, Default)]
pub struct UnassignIpv6Addresses {
    pub region_id: String,
    pub network_interface_id: String,
    pub ipv6_addresses: Vec<std::net::Ipv6Addr>,
}

impl Action for UnassignIpv6Addresses {
    const NAME: &'static str = "UnassignIpv6Addresses";
    const PRODUCT: Product = Product::Ecs;
    const POST: bool = true;
    type Response = RequestIdOnly;
    fn params(&self, p: &mut Params) {
        put(p, "RegionId", &self.region_id);
        put(p, "NetworkInterfaceId", &self.network_interface_id);
        put_list(p, "Ipv6Address", &self.ipv6_addresses);
    }
}

// ---- DescribeNetworkInterfaces ----

#[derive(Debug, Clone, Default)]
pub struct DescribeNetworkInterfaces {
    pub region_id: String,
    pub instance_id: Option<String>,
    pub vpc_id: Option<String>,
    pub vswitch_id: Option<String>,
    pub network_interface_ids: Vec<String>,
    /// `Primary` or `Secondary`.
    pub kind: Option<String>,
    pub status: Option<String>,
    pub tags: Vec<(String, String)>,
    pub max_results: Option<u32>,
    pub next_token: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct DescribeNetworkInterfacesResponse {
    pub request_id: String,
    pub total_count: u32,
    pub next_token: String,
    pub network_interface_sets: NetworkInterfaceSets,
}

impl Action for DescribeNetworkInterfaces {
    const NAME: &'static str = "DescribeNetworkInterfaces";
    const PRODUCT: Product = Product::Ecs;
    const POST: bool = false;
    type Response = DescribeNetworkInterfacesResponse;
    fn params(&self, p: &mut Params) {
        put(p, "RegionId", &self.region_id);
        put_opt(p, "InstanceId", self.instance_id.as_ref());
        put_opt(p, "VpcId", self.vpc_id.as_ref());
        put_opt(p, "VSwitchId", self.vswitch_id.as_ref());
        put_list(p, "NetworkInterfaceId", &self.network_interface_ids);
        put_opt(p, "Type", self.kind.as_ref());
        put_opt(p, "Status", self.status.as_ref());
        put_tags(p, &self.tags);
        put_opt(p, "MaxResults", self.max_results);
        put_opt(p, "NextToken", self.next_token.as_ref());
    }
}

// ---- DescribeInstanceTypes ----

#[derive(Debug, Clone, Default)]
pub struct DescribeInstanceTypes {
    pub instance_types: Vec<String>,
    pub next_token: Option<String>,
    pub max_results: Option<u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct InstanceType {
    pub instance_type_id: String,
    pub instance_type_family: String,
    pub cpu_core_count: u32,
    pub memory_size: f64,
    pub eni_quantity: u32,
    pub eni_private_ip_address_quantity: u32,
    pub eni_ipv6_address_quantity: u32,
    pub eni_total_quantity: u32,
    pub eni_trunk_supported: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct DescribeInstanceTypesResponse {
    pub request_id: String,
    pub next_token: String,
    pub instance_types: InstanceTypeList,
}

impl Action for DescribeInstanceTypes {
    const NAME: &'static str = "DescribeInstanceTypes";
    const PRODUCT: Product = Product::Ecs;
    const POST: bool = false;
    type Response = DescribeInstanceTypesResponse;
    fn params(&self, p: &mut Params) {
        put_list(p, "InstanceTypes", &self.instance_types);
        put_opt(p, "NextToken", self.next_token.as_ref());
        put_opt(p, "MaxResults", self.max_results);
    }
}

// ---- DescribeInstances ----

#[derive(Debug, Clone, Default)]
pub struct DescribeInstances {
    pub region_id: String,
    pub instance_ids: Vec<String>,
    pub next_token: Option<String>,
    pub max_results: Option<u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct VpcAttributes {
    pub vpc_id: String,
    #[serde(rename = "VSwitchId")]
    pub vswitch_id: String,
    pub private_ip_address: IpAddressList,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct InstanceNetworkInterface {
    pub network_interface_id: String,
    #[serde(rename = "Type")]
    pub kind: String,
    pub mac_address: String,
    pub primary_ip_address: String,
    pub private_ip_sets: PrivateIpSets,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Instance {
    pub instance_id: String,
    pub region_id: String,
    pub zone_id: String,
    pub instance_type: String,
    pub instance_type_family: String,
    pub status: String,
    pub instance_network_type: String,
    pub vpc_attributes: VpcAttributes,
    pub security_group_ids: SecurityGroupIds,
    pub network_interfaces: InstanceNetworkInterfaces,
    pub tags: EcsTags,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct DescribeInstancesResponse {
    pub request_id: String,
    pub total_count: u32,
    pub next_token: String,
    pub instances: InstanceList,
}

impl Action for DescribeInstances {
    const NAME: &'static str = "DescribeInstances";
    const PRODUCT: Product = Product::Ecs;
    const POST: bool = false;
    type Response = DescribeInstancesResponse;
    fn params(&self, p: &mut Params) {
        put(p, "RegionId", &self.region_id);
        if !self.instance_ids.is_empty() {
            // A JSON array in a string, unlike every other list parameter.
            put(p, "InstanceIds", serde_json::Value::from(self.instance_ids.clone()));
        }
        put_opt(p, "NextToken", self.next_token.as_ref());
        put_opt(p, "MaxResults", self.max_results);
    }
}

// ---- VPC DescribeVSwitches ----

#[derive(Debug, Clone, Default)]
pub struct DescribeVSwitches {
    pub region_id: String,
    pub vpc_id: Option<String>,
    pub vswitch_id: Option<String>,
    pub zone_id: Option<String>,
    pub page_number: Option<u32>,
    pub page_size: Option<u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct VSwitch {
    #[serde(rename = "VSwitchId")]
    pub vswitch_id: String,
    pub vpc_id: String,
    pub zone_id: String,
    pub cidr_block: String,
    pub available_ip_address_count: u64,
    pub status: String,
    #[serde(rename = "VSwitchName")]
    pub vswitch_name: String,
    pub ipv6_cidr_block: String,
    pub tags: VpcTags,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct DescribeVSwitchesResponse {
    pub request_id: String,
    pub total_count: u32,
    pub page_number: u32,
    pub page_size: u32,
    #[serde(rename = "VSwitches")]
    pub vswitches: VSwitchList,
}

impl Action for DescribeVSwitches {
    const NAME: &'static str = "DescribeVSwitches";
    const PRODUCT: Product = Product::Vpc;
    const POST: bool = false;
    type Response = DescribeVSwitchesResponse;
    fn params(&self, p: &mut Params) {
        put(p, "RegionId", &self.region_id);
        put_opt(p, "VpcId", self.vpc_id.as_ref());
        put_opt(p, "VSwitchId", self.vswitch_id.as_ref());
        put_opt(p, "ZoneId", self.zone_id.as_ref());
        put_opt(p, "PageNumber", self.page_number);
        put_opt(p, "PageSize", self.page_size);
    }
}

/// The error body every action answers with on failure.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ErrorBody {
    #[serde(rename = "RequestId", alias = "requestId")]
    pub request_id: String,
    #[serde(rename = "HostId")]
    pub host_id: String,
    #[serde(rename = "Code", alias = "code")]
    pub code: String,
    #[serde(rename = "Message", alias = "message")]
    pub message: String,
    #[serde(rename = "Recommend")]
    pub recommend: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_parameters_flatten() {
        let mut p = Params::new();
        CreateNetworkInterface {
            region_id: "cn-hangzhou".into(),
            vswitch_id: "vsw-1".into(),
            security_group_ids: vec!["sg-1".into(), "sg-2".into()],
            tags: (1..=11).map(|i| (format!("k{i}"), format!("v{i}"))).collect(),
            ..Default::default()
        }
        .params(&mut p);
        assert_eq!(p["SecurityGroupIds.1"], "sg-1");
        assert_eq!(p["SecurityGroupIds.2"], "sg-2");
        assert_eq!(p["Tag.10.Key"], "k10");
        assert_eq!(p["Tag.11.Value"], "v11");
        // byte order puts Tag.10 before Tag.2
        let keys: Vec<&String> = p.keys().filter(|k| k.starts_with("Tag.")).collect();
        assert_eq!(keys[0], "Tag.1.Key");
        assert_eq!(keys[2], "Tag.10.Key");

        let mut p = Params::new();
        DescribeInstances {
            region_id: "r".into(),
            instance_ids: vec!["i-1".into(), "i-2".into()],
            ..Default::default()
        }
        .params(&mut p);
        assert_eq!(p["InstanceIds"], r#"["i-1","i-2"]"#);
    }

    #[test]
    fn decodes_documented_describe_shape() {
        let body = r#"{"RequestId":"5C0E2B68","TotalCount":1,"PageNumber":1,"PageSize":10,"NextToken":"",
 "NetworkInterfaceSets":{"NetworkInterfaceSet":[{
   "NetworkInterfaceId":"eni-1","Status":"InUse","Type":"Secondary","InstanceId":"i-1",
   "VpcId":"vpc-1","VSwitchId":"vsw-1","ZoneId":"cn-shenzhen-c","MacAddress":"00:16:3e:00:00:c2",
   "PrivateIpAddress":"192.168.0.5","CreationTime":"2019-12-25T12:31:31Z","OwnerId":"1406",
   "QueueNumber":8,"ServiceManaged":false,
   "SecurityGroupIds":{"SecurityGroupId":["sg-1"]},
   "PrivateIpSets":{"PrivateIpSet":[{"PrivateIpAddress":"192.168.0.9","Primary":false,"AssociatedPublicIp":{}},
                                    {"PrivateIpAddress":"192.168.0.5","Primary":true,"AssociatedPublicIp":{},"PrivateDnsName":""}]},
   "Ipv6Sets":{"Ipv6Set":[]},
   "Attachment":{"InstanceId":"i-1","DeviceIndex":1,"NetworkCardIndex":0,"TrunkNetworkInterfaceId":""},
   "Tags":{"Tag":[{"TagKey":"creator","TagValue":"terway"}]}}]}}"#;
        let r: DescribeNetworkInterfacesResponse = serde_json::from_str(body).unwrap();
        let eni = &r.network_interface_sets.items[0];
        assert_eq!(eni.vswitch_id, "vsw-1");
        assert_eq!(eni.kind, "Secondary");
        assert_eq!(
            eni.ipv4_addresses(),
            [
                "192.168.0.5".parse::<Ipv4Addr>().unwrap(),
                "192.168.0.9".parse().unwrap()
            ]
        );
        assert_eq!(eni.tag("creator"), Some("terway"));
        assert_eq!(eni.attachment.device_index, 1);
    }

    #[test]
    fn assign_response_with_and_without_set() {
        let r: AssignPrivateIpAddressesResponse = serde_json::from_str(r#"{"RequestId":"x"}"#).unwrap();
        assert!(r.addresses().is_empty());
        let r: AssignPrivateIpAddressesResponse = serde_json::from_str(
            r#"{"RequestId":"x","AssignedPrivateIpAddressesSet":{"NetworkInterfaceId":"eni-1","PrivateIpSet":{"PrivateIpAddress":["10.0.0.7"]}}}"#,
        )
        .unwrap();
        assert_eq!(r.addresses(), ["10.0.0.7".parse::<Ipv4Addr>().unwrap()]);
    }
}
