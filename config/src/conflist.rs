//! Rendering of `10-terway.conflist`, the CNI network configuration kubelet reads.

use serde_json::{json, Value};
use std::path::Path;

pub const CONFLIST_FILE_NAME: &str = "10-terway.conflist";
pub const NETWORK_NAME: &str = "terway";
pub const CNI_VERSION: &str = "1.0.0";

/// A reference plugin chained after terway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChainedPlugin {
    /// hostPort mappings (`portmap`, capability `portMappings`).
    Portmap,
    /// The reference `bandwidth` plugin; terway then leaves shaping to it.
    Bandwidth,
}

impl std::str::FromStr for ChainedPlugin {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "portmap" => Ok(Self::Portmap),
            "bandwidth" => Ok(Self::Bandwidth),
            other => Err(format!(
                "unknown chained plugin {other:?}; expected portmap or bandwidth"
            )),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ConflistOptions<'a> {
    pub mtu: u32,
    /// Socket the plugin dials; written into the plugin config.
    pub socket_path: &'a Path,
    pub chained: &'a [ChainedPlugin],
}

/// The conflist as pretty JSON text.
pub fn render(opts: &ConflistOptions<'_>) -> String {
    let value = render_value(opts);
    serde_json::to_string_pretty(&value).unwrap_or_default() + "\n"
}

pub fn render_value(opts: &ConflistOptions<'_>) -> Value {
    let chained_bandwidth = opts.chained.contains(&ChainedPlugin::Bandwidth);
    // Only one plugin may shape a pod's traffic: with the reference bandwidth
    // plugin chained, terway does not ask for the capability itself.
    let mut plugins = vec![json!({
        "type": "terway",
        "mtu": opts.mtu,
        "socket": opts.socket_path,
        "capabilities": { "bandwidth": !chained_bandwidth },
    })];
    for plugin in opts.chained {
        plugins.push(match plugin {
            ChainedPlugin::Portmap => json!({"type": "portmap", "capabilities": {"portMappings": true}, "snat": true}),
            ChainedPlugin::Bandwidth => json!({"type": "bandwidth", "capabilities": {"bandwidth": true}}),
        });
    }
    json!({
        "cniVersion": CNI_VERSION,
        "name": NETWORK_NAME,
        "plugins": plugins,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_terway_alone() {
        let v = render_value(&ConflistOptions {
            mtu: 1500,
            socket_path: Path::new("/var/run/eni/eni.socket"),
            chained: &[],
        });
        assert_eq!(v["cniVersion"], "1.0.0");
        assert_eq!(v["name"], "terway");
        assert_eq!(v["plugins"].as_array().unwrap().len(), 1);
        assert_eq!(v["plugins"][0]["type"], "terway");
        assert_eq!(v["plugins"][0]["mtu"], 1500);
        assert_eq!(v["plugins"][0]["capabilities"]["bandwidth"], true);
        assert_eq!(v["plugins"][0]["socket"], "/var/run/eni/eni.socket");
    }

    #[test]
    fn renders_chained_plugins() {
        let chained = [ChainedPlugin::Portmap, ChainedPlugin::Bandwidth];
        let text = render(&ConflistOptions {
            mtu: 9000,
            socket_path: Path::new("/run/t.sock"),
            chained: &chained,
        });
        let v: Value = serde_json::from_str(&text).unwrap();
        let plugins = v["plugins"].as_array().unwrap();
        assert_eq!(plugins.len(), 3);
        assert_eq!(plugins[1]["type"], "portmap");
        assert_eq!(plugins[1]["capabilities"]["portMappings"], true);
        assert_eq!(plugins[2]["type"], "bandwidth");
        // shaping is left to the chained plugin
        assert_eq!(plugins[0]["capabilities"]["bandwidth"], false);
        assert_eq!(plugins[0]["mtu"], 9000);
    }

    #[test]
    fn chained_plugin_names() {
        assert_eq!("portmap".parse::<ChainedPlugin>(), Ok(ChainedPlugin::Portmap));
        assert!("flannel".parse::<ChainedPlugin>().unwrap_err().contains("flannel"));
    }
}
