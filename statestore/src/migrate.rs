//! Schema migrations, applied in place when an older ledger is opened.
//!
//! v1 → v2: ENI records gained `route_table` (the policy-routing table of the
//! ENI). v1 ledgers numbered tables implicitly by ENI order; the migration
//! writes that number down: `ROUTE_TABLE_BASE + position` in id order.

use crate::LedgerError;
use std::path::Path;

/// Route tables of ENIs start here (terway-rs's datapath convention).
pub const ROUTE_TABLE_BASE: u32 = 1000;

pub(crate) fn migrate(path: &Path, enis: &sled::Tree, from: u32) -> Result<(), LedgerError> {
    if from < 2 {
        v1_to_v2(path, enis)?;
    }
    Ok(())
}

fn v1_to_v2(path: &Path, enis: &sled::Tree) -> Result<(), LedgerError> {
    for (position, item) in (1u32..).zip(enis.iter()) {
        let (key, value) = item.map_err(|e| crate::ledger::storage(path, "migrate v1 enis", e))?;
        let Ok(mut record) = serde_json::from_slice::<serde_json::Value>(&value) else {
            continue; // undecodable records are reported by check, not guessed at here
        };
        if let Some(obj) = record.as_object_mut() {
            obj.entry("route_table")
                .or_insert_with(|| serde_json::json!(ROUTE_TABLE_BASE + position));
            obj.entry("status").or_insert_with(|| serde_json::json!("in_use"));
        }
        let bytes = serde_json::to_vec(&record).map_err(|e| crate::ledger::storage(path, "migrate v1 enis", e))?;
        enis.insert(key, bytes)
            .map_err(|e| crate::ledger::storage(path, "migrate v1 enis", e))?;
    }
    Ok(())
}
