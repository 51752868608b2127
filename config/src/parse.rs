//! From JSON to a validated [`Config`]: every field is read by hand so that
//! all problems of a file are collected, each with its path and value.

use crate::defaults::{self, BackoffSpec};
use crate::diagnostic::{join_path, Findings};
use crate::duration::parse_go_duration;
use crate::model::*;
use crate::secret::Secret;
use ipnet::IpNet;
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

/// What a known top-level key is to terway-rs.
enum KeyUse {
    Used,
    /// Accepted for compatibility with upstream configs; says why it has no effect.
    Ignored(&'static str),
}

/// Reasons for keys read but not yet acted on, so a user who sets them is told.
const NOT_YET: &str = "terway-rs does not implement this setting yet";

const KNOWN_KEYS: &[(&str, KeyUse)] = &[
    ("version", KeyUse::Used),
    ("access_key", KeyUse::Used),
    ("access_secret", KeyUse::Used),
    ("credential_path", KeyUse::Used),
    ("region_id", KeyUse::Used),
    ("service_cidr", KeyUse::Used),
    ("vswitches", KeyUse::Used),
    ("vswitch_selection_policy", KeyUse::Used),
    ("security_group", KeyUse::Used),
    ("security_groups", KeyUse::Used),
    ("resource_group_id", KeyUse::Used),
    ("eni_tags", KeyUse::Used),
    ("eni_tag_filter", KeyUse::Used),
    ("eni_tag_block_list", KeyUse::Used),
    ("max_pool_size", KeyUse::Used),
    ("min_pool_size", KeyUse::Used),
    ("min_eni", KeyUse::Used),
    ("max_eni", KeyUse::Used),
    ("eni_cap_ratio", KeyUse::Used),
    ("eni_cap_shift", KeyUse::Used),
    ("ip_warm_up_size", KeyUse::Ignored(NOT_YET)),
    ("idle_ip_reclaim_after", KeyUse::Ignored(NOT_YET)),
    ("idle_ip_reclaim_interval", KeyUse::Ignored(NOT_YET)),
    ("idle_ip_reclaim_batch_size", KeyUse::Ignored(NOT_YET)),
    ("idle_ip_reclaim_jitter_factor", KeyUse::Ignored(NOT_YET)),
    ("ip_pool_sync_period", KeyUse::Used),
    ("datapath_check_period", KeyUse::Used),
    ("ip_stack", KeyUse::Used),
    ("eni_selection_policy", KeyUse::Used),
    ("rate_limit", KeyUse::Used),
    (
        "backoff_override",
        KeyUse::Ignored("cloud calls retry on terway-rs's own schedule (5 attempts from 500 ms, jittered)"),
    ),
    ("kube_client_qps", KeyUse::Used),
    ("kube_client_burst", KeyUse::Used),
    ("enable_patch_pod_ips", KeyUse::Used),
    ("disable_network_policy", KeyUse::Used),
    (
        "custom_stateful_workload_kinds",
        KeyUse::Ignored("pods keep their address only across sandboxes of the same pod; fixed IPs for stateful workloads are not supported"),
    ),
    (
        "disable_device_plugin",
        KeyUse::Ignored("terway-rs runs no device plugin: exclusive-ENI capacity is published as the node's aliyun/eni resource directly"),
    ),
    ("ledger_path", KeyUse::Used),
    ("socket_path", KeyUse::Used),
    ("metrics_address", KeyUse::Used),
    ("ecs_endpoint", KeyUse::Used),
    ("vpc_endpoint", KeyUse::Used),
    ("metadata_endpoint", KeyUse::Used),
    ("use_public_endpoint", KeyUse::Used),
    ("ip_cooldown", KeyUse::Used),
    ("vswitch_cooldown", KeyUse::Used),
    ("datapath_mode", KeyUse::Used),
    ("mtu", KeyUse::Used),
    (
        "ipam_type",
        KeyUse::Ignored("terway-rs allocates on the node (local IPAM); there is no control plane"),
    ),
    (
        "enable_eni_trunking",
        KeyUse::Ignored("trunk ENIs are not supported by terway-rs"),
    ),
    (
        "enable_erdma",
        KeyUse::Ignored("eRDMA ENIs are not supported by terway-rs"),
    ),
    (
        "enable_ip_prefix",
        KeyUse::Ignored("IP prefix mode is not supported by terway-rs"),
    ),
    (
        "ipv4_prefix_count",
        KeyUse::Ignored("IP prefix mode is not supported by terway-rs"),
    ),
    (
        "ipv6_prefix_count",
        KeyUse::Ignored("IP prefix mode is not supported by terway-rs"),
    ),
    ("extra_routes", KeyUse::Ignored("parsed but unused upstream as well")),
    ("prefix", KeyUse::Ignored("parsed but unused upstream as well")),
];

/// Upper bounds past which a size is a mistake rather than a wish: the
/// largest ECS instance types have 15 ENIs of 50 IPs.
const MAX_SANE_POOL_SIZE: u64 = 5_000;
const MAX_SANE_ENI_COUNT: u64 = 128;
const MAX_SANE_PERIOD: Duration = Duration::from_secs(7 * 24 * 3600);

pub(crate) fn config_from_object(obj: &Map<String, Value>, findings: &mut Findings) -> Config {
    check_keys(obj, "", KNOWN_KEYS.iter().map(|(k, _)| *k), findings);
    for (key, value) in obj {
        if let Some((_, KeyUse::Ignored(why))) = KNOWN_KEYS.iter().find(|(k, _)| k == key) {
            findings.warning(key.clone(), Some(value), format!("accepted but has no effect: {why}"));
        }
    }
    let mut r = Reader { obj, findings };

    let service_cidr = r.service_cidr("service_cidr");
    let vswitches = r.vswitches("vswitches");
    let security_groups = r.security_groups();
    let max_pool_size = r
        .size("max_pool_size", MAX_SANE_POOL_SIZE)
        .unwrap_or(defaults::MAX_POOL_SIZE);
    let min_pool_size = r
        .size("min_pool_size", MAX_SANE_POOL_SIZE)
        .unwrap_or(defaults::MIN_POOL_SIZE);
    // upstream clamps min to max (daemon/config.go); a per-node max under the
    // cluster's min must not stop the node
    let min_pool_size = if min_pool_size > max_pool_size {
        r.findings.warning(
            "min_pool_size",
            obj.get("min_pool_size"),
            format!("min_pool_size ({min_pool_size}) is above max_pool_size ({max_pool_size}); using {max_pool_size}"),
        );
        max_pool_size
    } else {
        min_pool_size
    };
    let min_eni = r.size("min_eni", MAX_SANE_ENI_COUNT).unwrap_or(0);
    let max_eni = r.size("max_eni", MAX_SANE_ENI_COUNT).unwrap_or(0);
    if max_eni > 0 && min_eni > max_eni {
        r.findings.warning(
            "min_eni",
            obj.get("min_eni"),
            format!("min_eni ({min_eni}) is above max_eni ({max_eni}); the pool's minimum stops at max_pool_size"),
        );
    }
    let eni_cap_ratio = match r.float_in("eni_cap_ratio", 0.0, 1.0) {
        // upstream's Populate reads 0 as unset
        Some(0.0) => {
            r.findings.warning(
                "eni_cap_ratio",
                obj.get("eni_cap_ratio"),
                format!("0 means unset; using {}", defaults::ENI_CAP_RATIO),
            );
            defaults::ENI_CAP_RATIO
        }
        Some(ratio) => ratio,
        None => defaults::ENI_CAP_RATIO,
    };
    let eni_cap_shift = r
        .int_in("eni_cap_shift", -(MAX_SANE_ENI_COUNT as i64), MAX_SANE_ENI_COUNT as i64)
        .unwrap_or(0) as i32;
    let idle_ip_reclaim = IdleIpReclaim {
        after: r.duration("idle_ip_reclaim_after", false),
        interval: r
            .duration("idle_ip_reclaim_interval", true)
            .unwrap_or(defaults::IDLE_IP_RECLAIM_INTERVAL),
        batch_size: match r.int_in("idle_ip_reclaim_batch_size", i64::MIN, MAX_SANE_POOL_SIZE as i64) {
            // upstream's Populate reads 0 or less as unset
            Some(n) if n <= 0 => {
                r.findings.warning(
                    "idle_ip_reclaim_batch_size",
                    obj.get("idle_ip_reclaim_batch_size"),
                    format!("{n} means unset; using {}", defaults::IDLE_IP_RECLAIM_BATCH_SIZE),
                );
                defaults::IDLE_IP_RECLAIM_BATCH_SIZE
            }
            Some(n) => n as u32,
            None => defaults::IDLE_IP_RECLAIM_BATCH_SIZE,
        },
        jitter_factor: r.jitter_factor("idle_ip_reclaim_jitter_factor"),
    };

    let config = Config {
        version: r.string("version"),
        access_key: r.string("access_key"),
        access_secret: r.string("access_secret").map(Secret::from),
        credential_path: r.string("credential_path").map(PathBuf::from),
        region_id: r.string("region_id"),
        service_cidr,
        vswitches,
        vswitch_selection_policy: r
            .choice_or_fallback(
                "vswitch_selection_policy",
                &[
                    ("random", VSwitchSelectionPolicy::Random),
                    ("ordered", VSwitchSelectionPolicy::Ordered),
                ],
            )
            .unwrap_or(VSwitchSelectionPolicy::Random),
        security_groups,
        resource_group_id: r.string("resource_group_id"),
        eni_tags: r.string_map("eni_tags"),
        eni_tag_filter: r.string_map("eni_tag_filter"),
        eni_tag_block_list: r.tag_block_list("eni_tag_block_list"),
        max_pool_size,
        min_pool_size,
        min_eni,
        max_eni,
        eni_cap_ratio,
        eni_cap_shift,
        ip_warm_up_size: r.size("ip_warm_up_size", MAX_SANE_POOL_SIZE),
        idle_ip_reclaim,
        ip_pool_sync_period: r.pool_sync_period("ip_pool_sync_period"),
        datapath_check_period: r
            .duration("datapath_check_period", true)
            .unwrap_or(defaults::DATAPATH_CHECK_PERIOD),
        ip_stack: r.ip_stack("ip_stack"),
        eni_selection_policy: r
            .choice_or_fallback(
                "eni_selection_policy",
                &[
                    ("most_ips", EniSelectionPolicy::MostIps),
                    ("least_ips", EniSelectionPolicy::LeastIps),
                ],
            )
            .unwrap_or(EniSelectionPolicy::MostIps),
        rate_limit: r.rate_limit("rate_limit"),
        backoff: r.backoff("backoff_override"),
        kube_client_qps: r.float_in("kube_client_qps", 0.0, 10_000.0).unwrap_or(0.0) as f32,
        kube_client_burst: r.size("kube_client_burst", 100_000).unwrap_or(0),
        enable_patch_pod_ips: r
            .boolean("enable_patch_pod_ips")
            .unwrap_or(defaults::ENABLE_PATCH_POD_IPS),
        disable_network_policy: r.boolean("disable_network_policy").unwrap_or(false),
        custom_stateful_workload_kinds: r.workload_kinds("custom_stateful_workload_kinds"),
        disable_device_plugin: r.boolean("disable_device_plugin").unwrap_or(false),
        ledger_path: r
            .path("ledger_path")
            .unwrap_or_else(|| PathBuf::from(defaults::LEDGER_PATH)),
        socket_path: r
            .path("socket_path")
            .unwrap_or_else(|| PathBuf::from(defaults::SOCKET_PATH)),
        metrics_address: r.socket_addr("metrics_address"),
        endpoints: Endpoints {
            ecs: r.endpoint("ecs_endpoint"),
            vpc: r.endpoint("vpc_endpoint"),
            metadata: r
                .endpoint("metadata_endpoint")
                .unwrap_or_else(|| defaults::METADATA_ENDPOINT.to_owned()),
            public: r.boolean("use_public_endpoint").unwrap_or(false),
        },
        ip_cooldown: r.duration("ip_cooldown", false).unwrap_or(defaults::IP_COOLDOWN),
        vswitch_cooldown: r
            .duration("vswitch_cooldown", true)
            .unwrap_or(defaults::VSWITCH_COOLDOWN),
        datapath_mode: r
            .choice(
                "datapath_mode",
                &[
                    ("veth", DatapathMode::Veth),
                    ("exclusive_eni", DatapathMode::ExclusiveEni),
                    ("ipvlan", DatapathMode::Ipvlan),
                ],
            )
            .unwrap_or(DatapathMode::Veth),
        mtu: r.int_in("mtu", 576, 9000).map_or(defaults::MTU, |v| v as u32),
    };
    if config.ip_stack == IpStack::Dual && config.datapath_mode == DatapathMode::ExclusiveEni {
        r.findings.error(
            "ip_stack",
            Some(&Value::from("dual")),
            "dual stack is not served for pods given a whole ENI (datapath_mode \"exclusive_eni\"); use \"ipv4\" or a shared mode",
        );
    }
    if config.access_key.is_some() != config.access_secret.is_some() {
        let missing = if config.access_key.is_some() {
            "access_secret"
        } else {
            "access_key"
        };
        r.findings
            .error(missing, None, "access_key and access_secret must be given together");
    }
    config
}

/// Reports keys of `obj` that are not in `known`: one typo away from a known
/// key is an error with the suggestion, anything else a warning.
fn check_keys<'k>(
    obj: &Map<String, Value>,
    prefix: &str,
    known: impl Iterator<Item = &'k str> + Clone,
    findings: &mut Findings,
) {
    for key in obj.keys() {
        if known.clone().any(|k| k == key) {
            continue;
        }
        let path = join_path(prefix, key);
        match closest_key(key, known.clone()) {
            Some(suggestion) => {
                findings.error(path, None, format!("unknown key {key:?}; did you mean {suggestion:?}?"))
            }
            None => findings.warning(path, None, format!("unknown key {key:?} is ignored")),
        }
    }
}

/// A known key within one edit (insert, delete, substitute, swap of neighbours)
/// of `key`, also comparing case-insensitively with `-` read as `_`.
pub(crate) fn closest_key<'k>(key: &str, known: impl Iterator<Item = &'k str>) -> Option<&'k str> {
    closest_within(key, known, 1)
}

/// The known name nearest to `name`, if it is at most `max_edits` away.
fn closest_within<'k>(name: &str, known: impl Iterator<Item = &'k str>, max_edits: usize) -> Option<&'k str> {
    let normal = |s: &str| s.to_ascii_lowercase().replace('-', "_");
    let name = normal(name);
    known
        .map(|k| (edit_distance(&name, &normal(k)), k))
        .filter(|(d, _)| *d <= max_edits)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// Optimal-string-alignment distance: inserts, deletes, substitutions and
/// swaps of neighbouring characters each count one.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1).min(d[i][j - 1] + 1).min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

struct Reader<'o, 'f> {
    obj: &'o Map<String, Value>,
    findings: &'f mut Findings,
}

impl<'o> Reader<'o, '_> {
    /// The value at `key`, treating JSON `null` as absent.
    fn get(&self, key: &str) -> Option<&'o Value> {
        self.obj.get(key).filter(|v| !v.is_null())
    }

    fn string(&mut self, key: &str) -> Option<String> {
        match self.get(key)? {
            Value::String(s) if s.trim().is_empty() => None,
            Value::String(s) => Some(s.clone()),
            other => {
                self.findings.error(key, Some(other), "expected a string");
                None
            }
        }
    }

    fn path(&mut self, key: &str) -> Option<PathBuf> {
        let s = self.string(key)?;
        if !s.starts_with('/') {
            self.findings.error(key, self.obj.get(key), "must be an absolute path");
            return None;
        }
        Some(PathBuf::from(s))
    }

    fn boolean(&mut self, key: &str) -> Option<bool> {
        match self.get(key)? {
            Value::Bool(b) => Some(*b),
            // ConfigMap values are strings; accept the spellings kubectl users write.
            Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
                "true" | "1" => Some(true),
                "false" | "0" | "" => Some(false),
                _ => {
                    self.findings.error(key, self.obj.get(key), "expected true or false");
                    None
                }
            },
            other => {
                self.findings.error(key, Some(other), "expected true or false");
                None
            }
        }
    }

    fn int_in(&mut self, key: &str, min: i64, max: i64) -> Option<i64> {
        let value = self.get(key)?;
        let Some(n) = value.as_i64().or_else(|| value.as_u64().map(|_| i64::MAX)) else {
            let hint = if value.is_string() {
                "expected a number, not a string"
            } else {
                "expected a whole number"
            };
            self.findings.error(key, Some(value), hint);
            return None;
        };
        if n < min {
            let why = if n < 0 && min >= 0 {
                "must not be negative".to_owned()
            } else {
                format!("must be at least {min}")
            };
            self.findings.error(key, Some(value), why);
            return None;
        }
        if n > max {
            self.findings
                .error(key, Some(value), format!("is absurdly large (at most {max})"));
            return None;
        }
        Some(n)
    }

    /// A count: a non-negative whole number up to `max`.
    fn size(&mut self, key: &str, max: u64) -> Option<u32> {
        self.int_in(key, 0, max as i64).map(|n| n as u32)
    }

    fn float_in(&mut self, key: &str, min: f64, max: f64) -> Option<f64> {
        let value = self.get(key)?;
        let parsed = match value {
            Value::Number(n) => n.as_f64(),
            Value::String(s) => s.trim().parse::<f64>().ok(),
            _ => None,
        };
        let Some(f) = parsed.filter(|f| f.is_finite()) else {
            self.findings.error(key, Some(value), "expected a number");
            return None;
        };
        if f < min || f > max {
            let low = if min == f64::MIN_POSITIVE {
                "above 0".to_owned()
            } else {
                format!("at least {min}")
            };
            self.findings
                .error(key, Some(value), format!("must be {low} and at most {max}"));
            return None;
        }
        Some(f)
    }

    fn jitter_factor(&mut self, key: &str) -> f64 {
        self.float_in(key, 0.0, 1.0)
            .unwrap_or(defaults::IDLE_IP_RECLAIM_JITTER_FACTOR)
    }

    /// A Go duration string. `positive` refuses zero (for periods).
    fn duration(&mut self, key: &str, positive: bool) -> Option<Duration> {
        let value = self.get(key)?;
        let Value::String(text) = value else {
            self.findings.error(
                key,
                Some(value),
                "expected a duration string such as \"90s\", \"10m\" or \"1h30m\"",
            );
            return None;
        };
        match parse_go_duration(text) {
            Ok(d) if positive && d.is_zero() => {
                self.findings.error(key, Some(value), "must be longer than 0");
                None
            }
            Ok(d) if d > MAX_SANE_PERIOD => {
                self.findings.error(key, Some(value), "is absurdly long (at most 168h)");
                None
            }
            Ok(d) => Some(d),
            Err(why) => {
                self.findings.error(
                    key,
                    Some(value),
                    format!("bad duration: {why}; use e.g. \"90s\", \"10m\", \"1h30m\""),
                );
                None
            }
        }
    }

    fn choice<T: Copy>(&mut self, key: &str, options: &[(&str, T)]) -> Option<T> {
        self.pick(key, options, false)
    }

    /// Like [`Reader::choice`], but an unknown value falls back to the first
    /// option with a warning, as upstream does for the selection policies.
    fn choice_or_fallback<T: Copy>(&mut self, key: &str, options: &[(&str, T)]) -> Option<T> {
        self.pick(key, options, true)
    }

    fn pick<T: Copy>(&mut self, key: &str, options: &[(&str, T)], fall_back: bool) -> Option<T> {
        let value = self.get(key)?;
        let text = value.as_str().map(str::trim);
        if let Some(found) = options.iter().find(|(name, _)| Some(*name) == text) {
            return Some(found.1);
        }
        let names = options.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ");
        if fall_back {
            let message = format!("unknown value; using {:?} (expected one of {names})", options[0].0);
            self.findings.warning(key, Some(value), message);
            return Some(options[0].1);
        }
        self.findings
            .error(key, Some(value), format!("unknown value; expected one of {names}"));
        None
    }

    /// Upstream reads a sync period it cannot parse as 120 s; so do we, saying so.
    fn pool_sync_period(&mut self, key: &str) -> Duration {
        let fallback = defaults::IP_POOL_SYNC_PERIOD;
        let Some(value) = self.get(key) else {
            return fallback;
        };
        let parsed = match value {
            Value::String(text) => parse_go_duration(text),
            _ => Err("not a duration string".to_owned()),
        };
        match parsed {
            Ok(d) if d.is_zero() => {
                self.findings.error(key, Some(value), "must be longer than 0");
                fallback
            }
            Ok(d) if d > MAX_SANE_PERIOD => {
                self.findings.warning(key, Some(value), "longer than 168h; using 168h");
                MAX_SANE_PERIOD
            }
            Ok(d) => d,
            Err(why) => {
                self.findings.warning(
                    key,
                    Some(value),
                    format!("bad duration ({why}); using {}s, as upstream does", fallback.as_secs()),
                );
                fallback
            }
        }
    }

    fn ip_stack(&mut self, key: &str) -> IpStack {
        if self.get(key).and_then(Value::as_str) == Some("ipv6") {
            self.findings.error(
                key,
                self.obj.get(key),
                "IPv6 single stack is not supported; use \"ipv4\" or \"dual\"",
            );
            return IpStack::Ipv4;
        }
        self.choice(key, &[("ipv4", IpStack::Ipv4), ("dual", IpStack::Dual)])
            .unwrap_or(IpStack::Ipv4)
    }

    fn service_cidr(&mut self, key: &str) -> ServiceCidr {
        let mut out = ServiceCidr::default();
        let Some(value) = self.get(key) else { return out };
        let Some(text) = value.as_str() else {
            self.findings
                .error(key, Some(value), "expected a string \"<ipv4 cidr>[,<ipv6 cidr>]\"");
            return out;
        };
        let parts: Vec<&str> = text.split(',').map(str::trim).filter(|p| !p.is_empty()).collect();
        if parts.is_empty() {
            self.findings.warning(
                key,
                Some(value),
                "empty: treated as unset; in a cluster terwayd reads networking.serviceSubnet from \
                 kube-system/kubeadm-config, as upstream does (standalone: pods get no Service route of their own)",
            );
            return out;
        }
        if parts.len() > 2 {
            self.findings.error(
                key,
                Some(value),
                "expected one IPv4 CIDR and optionally one IPv6 CIDR, comma-separated",
            );
            return out;
        }
        for part in parts {
            let net: IpNet = match part.parse() {
                Ok(net) => net,
                Err(_) => {
                    self.findings.error(
                        key,
                        Some(value),
                        format!("{part:?} is not a CIDR such as 172.21.0.0/20"),
                    );
                    continue;
                }
            };
            if net.trunc() != net {
                self.findings.error(
                    key,
                    Some(value),
                    format!("{part:?} has host bits set; did you mean {}?", net.trunc()),
                );
                continue;
            }
            let duplicate = match net {
                IpNet::V4(v4) => out.ipv4.replace(v4).is_some(),
                IpNet::V6(v6) => out.ipv6.replace(v6).is_some(),
            };
            if duplicate {
                self.findings
                    .error(key, Some(value), "give at most one IPv4 and one IPv6 CIDR");
            }
        }
        out
    }

    fn vswitches(&mut self, key: &str) -> BTreeMap<String, Vec<String>> {
        let mut out = BTreeMap::new();
        let Some(value) = self.get(key) else { return out };
        let Some(zones) = value.as_object() else {
            self.findings
                .error(key, Some(value), "expected an object of zone → [vSwitch ids]");
            return out;
        };
        for (zone, ids) in zones {
            let path = join_path(key, zone);
            if ids.is_null() {
                continue; // a merge patch's way of saying "no such zone"
            }
            let Some(list) = ids.as_array() else {
                self.findings.error(path, Some(ids), "expected a list of vSwitch ids");
                continue;
            };
            if list.is_empty() {
                self.findings.warning(
                    path,
                    Some(ids),
                    format!("zone {zone:?} has no vSwitch; nodes there use the instance's own vSwitch"),
                );
                continue;
            }
            let mut seen = BTreeSet::new();
            let mut kept = Vec::new();
            for (i, id) in list.iter().enumerate() {
                let item_path = format!("{path}[{i}]");
                match id.as_str() {
                    Some(s) if s.starts_with("vsw-") && s.len() > 4 => {
                        if seen.insert(s.to_owned()) {
                            kept.push(s.to_owned());
                        } else {
                            self.findings
                                .warning(item_path, Some(id), "listed twice; the duplicate is ignored");
                        }
                    }
                    _ => self
                        .findings
                        .error(item_path, Some(id), "expected a vSwitch id such as \"vsw-2zeabc\""),
                }
            }
            if !kept.is_empty() {
                out.insert(zone.clone(), kept);
            }
        }
        out
    }

    fn security_groups(&mut self) -> Vec<String> {
        let mut groups = BTreeSet::new();
        let mut check = |findings: &mut Findings, path: String, v: &Value| match v.as_str() {
            Some(s) if s.starts_with("sg-") && s.len() > 3 => {
                groups.insert(s.to_owned());
            }
            _ => findings.error(path, Some(v), "expected a security group id such as \"sg-2ze1\""),
        };
        if let Some(v) = self.get("security_group") {
            check(self.findings, "security_group".into(), v);
        }
        if let Some(v) = self.get("security_groups") {
            match v.as_array() {
                Some(list) => {
                    for (i, item) in list.iter().enumerate() {
                        check(self.findings, format!("security_groups[{i}]"), item);
                    }
                }
                None => self
                    .findings
                    .error("security_groups", Some(v), "expected a list of security group ids"),
            }
        }
        if groups.len() > defaults::MAX_SECURITY_GROUPS {
            let value = self.obj.get("security_groups");
            self.findings.error(
                "security_groups",
                value,
                format!(
                    "{} security groups after merging security_group and security_groups; an ENI takes at most {}",
                    groups.len(),
                    defaults::MAX_SECURITY_GROUPS
                ),
            );
        }
        groups.into_iter().collect()
    }

    fn string_map(&mut self, key: &str) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        let Some(value) = self.get(key) else { return out };
        let Some(map) = value.as_object() else {
            self.findings
                .error(key, Some(value), "expected an object of string → string");
            return out;
        };
        for (k, v) in map {
            match v.as_str() {
                Some(s) if !k.is_empty() => {
                    out.insert(k.clone(), s.to_owned());
                }
                _ => self.findings.error(
                    join_path(key, k),
                    Some(v),
                    "expected a non-empty key with a string value",
                ),
            }
        }
        out
    }

    fn tag_block_list(&mut self, key: &str) -> Vec<TagPair> {
        let mut out: BTreeSet<TagPair> = defaults::ENI_TAG_BLOCK_LIST
            .iter()
            .map(|(k, v)| TagPair {
                key: (*k).into(),
                value: (*v).into(),
            })
            .collect();
        if let Some(value) = self.get(key) {
            match value.as_array() {
                Some(list) => {
                    for (i, item) in list.iter().enumerate() {
                        let k = item.get("key").and_then(Value::as_str);
                        let v = item.get("value").and_then(Value::as_str);
                        match (k, v) {
                            (Some(k), Some(v)) if !k.is_empty() => {
                                out.insert(TagPair {
                                    key: k.into(),
                                    value: v.into(),
                                });
                            }
                            _ => self.findings.error(
                                format!("{key}[{i}]"),
                                Some(item),
                                "expected {\"key\": \"…\", \"value\": \"…\"}",
                            ),
                        }
                    }
                }
                None => self
                    .findings
                    .error(key, Some(value), "expected a list of {\"key\", \"value\"} objects"),
            }
        }
        out.into_iter().collect()
    }

    fn workload_kinds(&mut self, key: &str) -> Vec<String> {
        let mut out: BTreeSet<String> = defaults::STATEFUL_WORKLOAD_KINDS
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        if let Some(value) = self.get(key) {
            match value.as_array() {
                Some(list) => {
                    for (i, item) in list.iter().enumerate() {
                        match item.as_str() {
                            Some(s) if !s.trim().is_empty() => {
                                out.insert(s.trim().to_ascii_lowercase());
                            }
                            _ => self.findings.error(
                                format!("{key}[{i}]"),
                                Some(item),
                                "expected a kind name such as \"StatefulSet\"",
                            ),
                        }
                    }
                }
                None => self.findings.error(key, Some(value), "expected a list of kind names"),
            }
        }
        out.into_iter().collect()
    }

    fn rate_limit(&mut self, key: &str) -> BTreeMap<String, u32> {
        let mut out: BTreeMap<String, u32> = defaults::RATE_LIMITS_PER_MINUTE
            .iter()
            .map(|(k, v)| ((*k).to_owned(), *v))
            .collect();
        let Some(value) = self.get(key) else { return out };
        let Some(map) = value.as_object() else {
            self.findings
                .error(key, Some(value), "expected an object of API name → requests per minute");
            return out;
        };
        let known = || defaults::RATE_LIMITS_PER_MINUTE.iter().map(|(k, _)| *k);
        for (api, limit) in map {
            let path = join_path(key, api);
            if !known().any(|k| k == api) {
                // upstream takes a limit for any API
                self.unused_entry(path, limit, "API", api, known(), 2);
                continue;
            }
            match limit.as_u64() {
                Some(n) if n > 0 && n <= 1_000_000 => {
                    out.insert(api.clone(), n as u32);
                }
                _ => self.findings.error(
                    path,
                    Some(limit),
                    "expected requests per minute, a whole number from 1 to 1000000",
                ),
            }
        }
        out
    }

    /// An entry naming something terway-rs has no use for: within
    /// `max_edits` of a known name it is a typo, an error naming the right
    /// one; otherwise (upstream accepts it) a warning that it does nothing.
    fn unused_entry<'k>(
        &mut self,
        path: String,
        value: &Value,
        what: &str,
        name: &str,
        known: impl Iterator<Item = &'k str>,
        max_edits: usize,
    ) {
        match closest_within(name, known, max_edits) {
            Some(s) => self.findings.error(
                path,
                Some(value),
                format!("unknown {what} {name:?}; did you mean {s:?}?"),
            ),
            None => self.findings.warning(
                path,
                Some(value),
                format!("terway-rs has no use for {what} {name:?}; this entry has no effect"),
            ),
        }
    }

    fn backoff(&mut self, key: &str) -> BTreeMap<String, BackoffSpec> {
        let mut out: BTreeMap<String, BackoffSpec> =
            defaults::BACKOFFS.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect();
        let Some(value) = self.get(key) else { return out };
        let Some(map) = value.as_object() else {
            self.findings
                .error(key, Some(value), "expected an object of backoff key → schedule");
            return out;
        };
        let known = || defaults::BACKOFFS.iter().map(|(k, _)| *k);
        for (name, spec) in map {
            let path = join_path(key, name);
            let Some(base) = out.get(name).copied() else {
                // upstream has schedules for trunk and CRD-mode waits
                self.unused_entry(path, spec, "backoff key", name, known(), 1);
                continue;
            };
            let Some(fields) = spec.as_object() else {
                self.findings.error(
                    path,
                    Some(spec),
                    "expected an object with InitialDelay, Duration, Factor, Jitter, Steps, Cap",
                );
                continue;
            };
            const FIELDS: [&str; 6] = ["InitialDelay", "Duration", "Factor", "Jitter", "Steps", "Cap"];
            check_keys(fields, &path, FIELDS.into_iter(), self.findings);
            let mut inner = Reader {
                obj: fields,
                findings: self.findings,
            };
            let spec = BackoffSpec {
                initial_delay: inner
                    .backoff_duration(&path, "InitialDelay")
                    .unwrap_or(base.initial_delay),
                duration: inner.backoff_duration(&path, "Duration").unwrap_or(base.duration),
                factor: inner.nested_float(&path, "Factor", 0.0, 100.0).unwrap_or(base.factor),
                jitter: inner.nested_float(&path, "Jitter", 0.0, 10.0).unwrap_or(base.jitter),
                steps: inner
                    .nested_int(&path, "Steps", 1, 10_000)
                    .map_or(base.steps, |n| n as u32),
                cap: inner.backoff_duration(&path, "Cap").or(base.cap),
            };
            out.insert(name.clone(), spec);
        }
        out
    }

    /// Go's `wait.Backoff` durations arrive as integer nanoseconds; accept
    /// those and duration strings.
    fn backoff_duration(&mut self, prefix: &str, key: &str) -> Option<Duration> {
        let value = self.get(key)?;
        let path = join_path(prefix, key);
        let parsed = match value {
            Value::Number(n) => n
                .as_u64()
                .map(Duration::from_nanos)
                .ok_or_else(|| "must be a non-negative number of nanoseconds".to_owned()),
            Value::String(s) => parse_go_duration(s),
            _ => Err("expected nanoseconds or a duration string".to_owned()),
        };
        match parsed {
            Ok(d) if d > MAX_SANE_PERIOD => {
                self.findings
                    .error(path, Some(value), "is absurdly long (at most 168h)");
                None
            }
            Ok(d) => Some(d),
            Err(why) => {
                self.findings.error(path, Some(value), why);
                None
            }
        }
    }

    fn nested_float(&mut self, prefix: &str, key: &str, min: f64, max: f64) -> Option<f64> {
        let value = self.get(key)?;
        match value.as_f64() {
            Some(f) if f >= min && f <= max => Some(f),
            _ => {
                self.findings.error(
                    join_path(prefix, key),
                    Some(value),
                    format!("expected a number from {min} to {max}"),
                );
                None
            }
        }
    }

    fn nested_int(&mut self, prefix: &str, key: &str, min: u64, max: u64) -> Option<u64> {
        let value = self.get(key)?;
        match value.as_u64() {
            Some(n) if n >= min && n <= max => Some(n),
            _ => {
                self.findings.error(
                    join_path(prefix, key),
                    Some(value),
                    format!("expected a whole number from {min} to {max}"),
                );
                None
            }
        }
    }

    fn socket_addr(&mut self, key: &str) -> std::net::SocketAddr {
        let fallback = || std::net::SocketAddr::from(([127, 0, 0, 1], 9190));
        let Some(text) = self.string(key) else {
            return defaults::METRICS_ADDRESS.parse().unwrap_or_else(|_| fallback());
        };
        text.parse().unwrap_or_else(|_| {
            self.findings
                .error(key, self.obj.get(key), "expected an address such as \"127.0.0.1:9190\"");
            fallback()
        })
    }

    /// A host name or an http(s) URL; plain `http://` is allowed for tests.
    fn endpoint(&mut self, key: &str) -> Option<String> {
        let text = self.string(key)?;
        let ok = match text.split_once("://") {
            Some((scheme, rest)) => (scheme == "http" || scheme == "https") && !rest.is_empty() && !rest.contains(' '),
            None => !text.contains(['/', ' ']),
        };
        if !ok {
            self.findings.error(
                key,
                self.obj.get(key),
                "expected a host name or an http:// or https:// URL",
            );
            return None;
        }
        Some(text.trim_end_matches('/').to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distances() {
        assert_eq!(edit_distance("max_pool_sise", "max_pool_size"), 1);
        assert_eq!(edit_distance("max_pool_siz", "max_pool_size"), 1);
        assert_eq!(edit_distance("max_pool_sizee", "max_pool_size"), 1);
        assert_eq!(edit_distance("max_pool_szie", "max_pool_size"), 1);
        assert_eq!(edit_distance("max_pool", "max_pool_size"), 5);
        assert_eq!(edit_distance("mxa_pool_szie", "max_pool_size"), 2);
    }

    #[test]
    fn suggestions_ignore_case_and_dashes() {
        let known = || KNOWN_KEYS.iter().map(|(k, _)| *k);
        assert_eq!(closest_key("Max-Pool-Size", known()), Some("max_pool_size"));
        assert_eq!(closest_key("vswitch", known()), None);
        assert_eq!(closest_key("vswitchs", known()), Some("vswitches"));
        assert_eq!(closest_key("something_new", known()), None);
    }
}
