//! The masquerade of exclusive-ENI pods' host-path traffic. Such a pod
//! reaches Services (and `host_stack_cidrs`) through its host peer; when
//! kube-proxy sends the connection to a backend on another node, the packet
//! leaves the node with the pod's own address as source, and the backend's
//! reply goes straight to the pod's ENI, past the host's NAT: the connection
//! never opens. Upstream masquerades everything leaving the node in
//! exclusive-ENI mode (`terway-masq` in nat POSTROUTING); here only packets
//! from the addresses of pods given an ENI whole, so that shared-ENI pods on
//! the same node keep their own source address. One nftables table
//! (`ip terway_masq`), replaced whole in one transaction.

use super::{pod_network, Node};
use crate::policy::nft::Nft;
use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::{Mutex, PoisonError};
use terway_datapath::Mode;

pub const TABLE: &str = "terway_masq";

/// The table's owner in the node service: what it last put in force.
#[derive(Debug)]
pub struct Masquerade {
    nft: Nft,
    applied: Mutex<Option<BTreeSet<Ipv4Addr>>>,
}

impl Masquerade {
    pub fn new(nft: Nft) -> Self {
        Self {
            nft,
            applied: Mutex::new(None),
        }
    }

    /// Puts the table in force for the exclusive-ENI pods the ledger holds;
    /// `always`: even when they are what was last applied (the datapath
    /// agent's round, which also restores a table removed by hand).
    pub fn sync(&self, node: &Node, always: bool) -> Result<(), String> {
        let pods = exclusive_pod_addresses(node);
        let mut applied = self.applied.lock().unwrap_or_else(PoisonError::into_inner);
        if !always && applied.as_ref() == Some(&pods) {
            return Ok(());
        }
        self.nft.apply(&script(&pods)).map_err(|e| e.to_string())?;
        *applied = Some(pods);
        Ok(())
    }

    /// Removes the table (uninstall).
    pub fn remove(nft: &Nft) -> Result<(), String> {
        nft.apply(&script(&BTreeSet::new())).map_err(|e| e.to_string())
    }
}

/// IPv4 addresses of the pods whose datapath is an ENI given whole.
fn exclusive_pod_addresses(node: &Node) -> BTreeSet<Ipv4Addr> {
    node.ledger
        .snapshot()
        .pods
        .values()
        .filter_map(|record| pod_network::spec_of_record(node, record, None))
        .filter(|spec| spec.mode == Mode::ExclusiveEni)
        .map(|spec| spec.ipv4)
        .collect()
}

/// The whole table: created if missing, deleted, made again (one
/// transaction); with no such pod, no table (no NAT hook on the node).
fn script(pods: &BTreeSet<Ipv4Addr>) -> String {
    let remove = format!("table ip {TABLE} {{}}\ndelete table ip {TABLE}\n");
    if pods.is_empty() {
        return remove;
    }
    let list: Vec<String> = pods.iter().map(ToString::to_string).collect();
    format!(
        "{remove}\
         table ip {TABLE} {{\n  \
           set exclusive_pods {{\n    type ipv4_addr\n    elements = {{ {} }}\n  }}\n  \
           chain postrouting {{\n    \
             type nat hook postrouting priority srcnat; policy accept;\n    \
             oifname != \"lo\" ip saddr @exclusive_pods masquerade comment \"terway-rs: exclusive-ENI pod via its host peer\"\n  \
           }}\n\
         }}\n",
        list.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_script_lists_the_pods_and_masquerades_only_them() {
        let empty = script(&BTreeSet::new());
        assert_eq!(empty, "table ip terway_masq {}\ndelete table ip terway_masq\n");
        let two: BTreeSet<Ipv4Addr> = ["10.0.0.2".parse().unwrap(), "10.0.0.3".parse().unwrap()].into();
        let s = script(&two);
        assert!(s.contains("elements = { 10.0.0.2, 10.0.0.3 }"), "{s}");
        assert!(s.contains("ip saddr @exclusive_pods masquerade"), "{s}");
        assert!(
            s.starts_with("table ip terway_masq {}\ndelete table ip terway_masq\n"),
            "{s}"
        );
    }
}
