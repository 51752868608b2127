//! terway-node: the node service that ties config, cloud, ledger and datapath together.

pub mod bridge;
pub mod cluster;
/// The plugin's crate: terwayd decodes requests with the very types the plugin encodes.
pub use terway_cni as cni;
pub mod config_check;
pub mod daemon;
#[cfg(feature = "demo")]
pub mod demo;
pub mod metrics;
pub mod policy;
pub mod service;
#[cfg(feature = "demo")]
pub mod simulated_node;

#[cfg(test)]
mod tests {
    #[test]
    fn the_plugin_and_the_config_agree_on_the_default_socket() {
        assert_eq!(crate::cni::DEFAULT_SOCKET_PATH, terway_config::defaults::SOCKET_PATH);
    }
}
