//! terway-statestore: the crash-safe ledger of ENIs, IPs, pods and in-flight
//! cloud intents, on sled; pool arithmetic; and the ledger/cloud diff.
//!
//! [`Ledger`] is the entry type. The binary `terway-ledger` inspects a ledger offline.

pub mod bolt;
mod check;
pub mod diff;
mod ledger;
mod migrate;
pub mod model;
pub mod pool;

pub mod table;
mod wal;
pub use check::{check, Problem};
pub use ledger::{BindRequest, Bound, Durability, EniPreference, Ledger, OpenOptions, Released, State, SCHEMA_VERSION};
pub use migrate::ROUTE_TABLE_BASE;
pub use model::*;

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("ledger {path} is held by another process (is terwayd running? use --snapshot to read a copy)")]
    Locked { path: PathBuf },
    #[error("no ledger at {path}")]
    NotFound { path: PathBuf },
    #[error("ledger {path} has schema version {found}; this build reads up to version {supported}")]
    NewerSchema { path: PathBuf, found: u32, supported: u32 },
    #[error("ledger {path} belongs to instance {stored}, not {wanted}")]
    WrongInstance {
        path: PathBuf,
        stored: String,
        wanted: String,
    },
    #[error("ledger {path}: {op} failed: {message}")]
    Storage { path: PathBuf, op: String, message: String },
    #[error("ledger {path} is damaged: {what}")]
    Corrupt { path: PathBuf, what: String },
    #[error("no idle address in the pool ({cooling} cooling down)")]
    NoIdleIp { cooling: usize },
    #[error("no idle ENI for an exclusive-ENI pod")]
    NoIdleEni,
    #[error("ENI {eni_id} is not in the ledger")]
    UnknownEni { eni_id: String },
    #[error("conflict: {what}")]
    Conflict { what: String },
}
