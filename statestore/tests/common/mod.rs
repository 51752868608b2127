//! Records the ledger tests share.
#![allow(dead_code)]

use std::net::IpAddr;
use terway_statestore::*;

/// An attached ENI `id` on vSwitch 10.0.`n`.0/24, its primary 10.0.`n`.1.
pub fn eni(id: &str, n: u8) -> EniRecord {
    EniRecord {
        id: id.into(),
        mac: format!("00:16:3e:00:00:{n:02x}"),
        vswitch_id: "vsw-1".into(),
        gateway: IpAddr::from([10, 0, n, 253]),
        cidr: format!("10.0.{n}.0/24"),
        primary_ip: IpAddr::from([10, 0, n, 1]),
        status: EniStatus::InUse,
        route_table: ROUTE_TABLE_BASE + u32::from(n),
        created_by_us: true,
        owner: None,
        exclusive: false,
        ipv6: None,
    }
}

/// The secondary addresses 10.0.`n`.`from`..=`to`.
pub fn addresses(n: u8, from: u8, to: u8) -> Vec<IpAddr> {
    (from..=to).map(|i| IpAddr::from([10, 0, n, i])).collect()
}

/// Copies a directory tree (a ledger's files) to `to`, which must not exist.
pub fn copy_dir(from: &std::path::Path, to: &std::path::Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}
