//! Fuzzes what reaches terway-rs from outside on the pod path: the plugin's
//! environment and stdin, and the daemon's request decoding. Neither may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use terway_cni::{plugin, protocol};

const VARS: [&str; 5] = ["CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_ARGS"];

fuzz_target!(|data: &[u8]| {
    // the daemon side: raw bytes from the socket
    let _ = protocol::decode_request(data);
    // the plugin side: up to five NUL-separated environment values, then stdin
    let mut parts = data.splitn(VARS.len() + 1, |b| *b == 0);
    let values: Vec<Option<String>> =
        VARS.iter().map(|_| parts.next().map(|p| String::from_utf8_lossy(p).into_owned())).collect();
    let stdin = parts.next().unwrap_or_default();
    let env = |k: &str| VARS.iter().position(|v| *v == k).and_then(|i| values[i].clone());
    if let Ok(inv) = plugin::parse(&env, stdin) {
        if let Some(request) = inv.request {
            // whatever the plugin would send, the daemon must accept
            let bytes = serde_json_bytes(&request);
            assert!(protocol::decode_request(&bytes).is_ok(), "plugin sent what the daemon refuses: {request:?}");
        }
    }
});

fn serde_json_bytes(r: &protocol::Request) -> Vec<u8> {
    protocol::encode_request(r)
}
