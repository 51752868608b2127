//! terway-node: the node service that ties config, cloud, ledger and datapath together.

pub mod cluster;
pub mod cni;
pub mod config_check;
pub mod daemon;
pub mod demo;
pub mod metrics;
pub mod simulated_node;
