//! Names and numbers the datapath derives: host veth names, route tables.

use sha1::{Digest, Sha1};

/// The host side of a pod's veth: `cali` + 11 hex digits of SHA-1 over
/// `namespace.name` (plus `.ifname` when it is not `eth0`) — upstream's
/// scheme, so policy agents that know `cali*` keep working. 15 characters.
pub fn host_veth_name(namespace: &str, name: &str, ifname: &str) -> String {
    let mut key = format!("{namespace}.{name}");
    if ifname != "eth0" {
        key.push('.');
        key.push_str(ifname);
    }
    let digest = Sha1::digest(key.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("cali{}", &hex[..11])
}

/// First policy-routing table of ENIs: table = base + the ENI's link index
/// on the host, as upstream numbers them (so that a node taken over from
/// upstream finds its pods' `from <pod> lookup <table>` rules pointing at
/// the same ENI's table); the base keeps clear of 253–255.
pub const ENI_TABLE_BASE: u32 = 1000;

pub fn eni_route_table(link_index: u32) -> u32 {
    ENI_TABLE_BASE + link_index
}

/// Rule priorities, as upstream: traffic to a pod looks up main; traffic
/// from a pod looks up its ENI's table.
pub const RULE_PRIORITY_TO_POD: u32 = 512;
pub const RULE_PRIORITY_FROM_POD: u32 = 2048;

/// The link-local next hop pods route through (answered by a static neighbour).
pub const POD_GATEWAY_V4: std::net::Ipv4Addr = std::net::Ipv4Addr::new(169, 254, 1, 1);
pub const POD_GATEWAY_V6: std::net::Ipv6Addr = std::net::Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);

/// Name an ENI link gets when it returns from a pod: `eni` + its MAC's last four bytes.
pub fn returned_eni_name(mac: &[u8; 6]) -> String {
    format!("eni{:02x}{:02x}{:02x}{:02x}", mac[2], mac[3], mac[4], mac[5])
}

/// The host-side ipvlan slave of an ENI.
pub fn ipvlan_slave_name(eni_ifindex: u32) -> String {
    format!("ipvl_{eni_ifindex}")
}

pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let parts: Vec<u8> = s.split(':').filter_map(|p| u8::from_str_radix(p, 16).ok()).collect();
    (parts.len() == 6 && s.split(':').count() == 6)
        .then(|| [parts[0], parts[1], parts[2], parts[3], parts[4], parts[5]])
}

pub fn format_mac(m: &[u8]) -> String {
    m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn veth_names_are_stable_and_short() {
        let a = host_veth_name("default", "nginx-0", "eth0");
        assert_eq!(a, host_veth_name("default", "nginx-0", "eth0"));
        assert_eq!(a.len(), 15);
        assert!(a.starts_with("cali"));
        assert_ne!(a, host_veth_name("default", "nginx-1", "eth0"));
        assert_ne!(a, host_veth_name("default", "nginx-0", "eth1"));
        // SHA-1("default.nginx-0") starts with these digits
        let digest = Sha1::digest(b"default.nginx-0");
        assert_eq!(
            &a[4..],
            &format!(
                "{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
                digest[0], digest[1], digest[2], digest[3], digest[4], digest[5]
            )[..11]
        );
    }

    #[test]
    fn tables_avoid_reserved_ids() {
        for index in 0..64 {
            let t = eni_route_table(index);
            assert!(!(253..=255).contains(&t));
        }
    }

    #[test]
    fn macs() {
        let m = parse_mac("00:16:3e:0a:0b:0c").unwrap();
        assert_eq!(format_mac(&m), "00:16:3e:0a:0b:0c");
        assert_eq!(returned_eni_name(&m), "eni3e0a0b0c");
        assert!(parse_mac("00:16:3e:0a:0b").is_none());
        assert!(parse_mac("zz:16:3e:0a:0b:0c").is_none());
    }
}
