//! The ipvlan messages: built apart from sending so they can be checked
//! here, where the kernel has no ipvlan.

use rtnetlink::packet_route::link::{IpVlanMode, LinkMessage};
use rtnetlink::LinkIpVlan;

/// An ipvlan L2 child of the ENI `parent` named `name`.
pub fn child_message(name: &str, parent: u32, mtu: u32) -> LinkMessage {
    LinkIpVlan::new(name, parent, IpVlanMode::L2).mtu(mtu).build()
}

/// Errnos the kernel answers when it has no ipvlan: the link kind is unknown.
pub fn means_unsupported(errno: i32) -> bool {
    const EOPNOTSUPP: i32 = 95;
    const EINVAL: i32 = 22;
    const ENODEV: i32 = 19;
    errno == EOPNOTSUPP || errno == EINVAL || errno == ENODEV
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtnetlink::packet_route::link::{InfoData, InfoIpVlan, InfoKind, LinkAttribute, LinkInfo};

    #[test]
    fn child_is_an_l2_ipvlan_of_the_eni() {
        let m = child_message("ipv0abc", 7, 1500);
        let attrs = &m.attributes;
        assert!(attrs.contains(&LinkAttribute::IfName("ipv0abc".into())));
        assert!(attrs.contains(&LinkAttribute::Link(7)), "the parent is the ENI");
        assert!(attrs.contains(&LinkAttribute::Mtu(1500)));
        let info = attrs
            .iter()
            .find_map(|a| {
                if let LinkAttribute::LinkInfo(i) = a {
                    Some(i.clone())
                } else {
                    None
                }
            })
            .expect("link info");
        assert!(info.contains(&LinkInfo::Kind(InfoKind::IpVlan)));
        assert!(info.iter().any(
            |i| matches!(i, LinkInfo::Data(InfoData::IpVlan(d)) if d.contains(&InfoIpVlan::Mode(IpVlanMode::L2)))
        ));
    }
}
