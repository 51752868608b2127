//! The real `terway` binary: what it answers on bad input (never reaching a
//! daemon), and its exchange over a unix socket with a server in this test
//! that decodes requests with the daemon's own decoder.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::Value;
use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::{Command, Stdio};
use terway_cni::protocol::{decode_request, PodNetworkReply, Reply, Request};

fn conf(version: &str, socket: &Path) -> String {
    format!(
        r#"{{"cniVersion":"{version}","name":"terway","type":"terway","socket":"{}","runtimeConfig":{{"bandwidth":{{"egressRate":5000000}}}}}}"#,
        socket.display()
    )
}

fn plugin(command: &str, stdin: &str, extra: &[(&str, &str)], drop_env: &[&str]) -> (i32, Value) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_terway"));
    cmd.env_clear()
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", "c0ffee01")
        .env("CNI_NETNS", "/var/run/netns/cni-test")
        .env("CNI_IFNAME", "eth0")
        .env(
            "CNI_ARGS",
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID=c0ffee01",
        )
        .env("CNI_PATH", "/opt/cni/bin");
    for (k, v) in extra {
        cmd.env(k, v);
    }
    for k in drop_env {
        cmd.env_remove(k);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let json = if text.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
    };
    (out.status.code().unwrap_or(-1), json)
}

/// A one-shot stand-in for terwayd's socket: checks the request with the
/// daemon's decoder and answers `reply`.
fn serve_once(socket: &Path, reply: Reply) -> std::thread::JoinHandle<Request> {
    let listener = UnixListener::bind(socket).unwrap();
    std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut body = Vec::new();
        s.read_to_end(&mut body).unwrap();
        let request = decode_request(&body).unwrap();
        s.write_all(&serde_json::to_vec(&reply).unwrap()).unwrap();
        request
    })
}

fn network() -> PodNetworkReply {
    PodNetworkReply {
        ipv4: "192.168.1.7/32".into(),
        ipv4_gateway: "169.254.1.1".into(),
        ipv6: None,
        ipv6_gateway: None,
        mac: "02:00:00:00:00:07".into(),
    }
}

#[test]
fn add_through_the_socket_in_every_version() {
    let dir = tempfile::tempdir().unwrap();
    for (i, version) in ["0.3.1", "0.4.0", "1.0.0"].iter().enumerate() {
        let socket = dir.path().join(format!("eni{i}.socket"));
        let server = serve_once(
            &socket,
            Reply::Ok {
                network: Some(network()),
            },
        );
        let (code, out) = plugin("ADD", &conf(version, &socket), &[], &[]);
        let request = server.join().unwrap();
        assert_eq!(code, 0, "{out}");
        assert_eq!(out["cniVersion"], *version);
        assert_eq!(out["ips"][0]["address"], "192.168.1.7/32");
        assert_eq!(out["interfaces"][0]["sandbox"], "/var/run/netns/cni-test");
        assert_eq!(out["ips"][0].get("version").is_some(), *version != "1.0.0");
        let Request::Add(pod) = request else {
            panic!("{request:?}")
        };
        assert_eq!((pod.pod_namespace.as_str(), pod.pod_name.as_str()), ("shop", "web-0"));
        assert_eq!(
            pod.egress_bps,
            Some(5_000_000),
            "runtimeConfig.bandwidth reaches the daemon"
        );
    }
}

#[test]
fn daemon_errors_are_passed_on() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("eni.socket");
    let server = serve_once(
        &socket,
        Reply::Error {
            code: 11,
            msg: "no idle address yet; try again later".into(),
            details: "vsw-small exhausted".into(),
        },
    );
    let (code, out) = plugin("ADD", &conf("1.0.0", &socket), &[], &[]);
    server.join().unwrap();
    assert_ne!(code, 0);
    assert_eq!(out["code"], 11);
    assert!(out["msg"].as_str().unwrap().contains("try again later"));
    assert_eq!(out["details"], "vsw-small exhausted");

    // DEL: success prints nothing
    let server = serve_once(&socket.with_extension("2"), Reply::Ok { network: None });
    let (code, out) = plugin("DEL", &conf("1.0.0", &socket.with_extension("2")), &[], &["CNI_NETNS"]);
    assert!(matches!(server.join().unwrap(), Request::Del(_)));
    assert_eq!((code, out), (0, Value::Null));
}

#[test]
fn no_daemon_means_try_again_later() {
    let dir = tempfile::tempdir().unwrap();
    let (code, out) = plugin("ADD", &conf("1.0.0", &dir.path().join("absent.socket")), &[], &[]);
    assert_ne!(code, 0);
    assert_eq!(out["code"], 11);
    assert!(out["msg"].as_str().unwrap().contains("try again later"), "{out}");
}

#[test]
fn malformed_input_never_reaches_the_daemon() {
    let dir = tempfile::tempdir().unwrap();
    // no server listens: every one of these must be refused before any connection
    let socket = dir.path().join("never.socket");
    let good = conf("1.0.0", &socket);
    let cases: Vec<(&str, String, Vec<&str>, u64, &str)> = vec![
        ("ADD", "{not json".into(), vec![], 6, "not JSON"),
        ("ADD", conf("0.1.0", &socket), vec![], 1, "0.1.0"),
        ("ADD", r#"{"name":"t","type":"terway"}"#.into(), vec![], 7, "cniVersion"),
        ("ADD", good.clone(), vec!["CNI_CONTAINERID"], 4, "CNI_CONTAINERID"),
        ("ADD", good.clone(), vec!["CNI_NETNS"], 4, "CNI_NETNS"),
        ("ADD", good.clone(), vec!["CNI_IFNAME"], 4, "CNI_IFNAME"),
        ("FROB", good.clone(), vec![], 4, "FROB"),
        ("CHECK", conf("0.3.1", &socket), vec![], 1, "CHECK"),
    ];
    for (command, stdin, drop_env, want, names) in cases {
        let (code, out) = plugin(command, &stdin, &[], &drop_env);
        assert_ne!(code, 0, "{command} {drop_env:?}");
        assert_eq!(out["code"], want, "{command} {drop_env:?}: {out}");
        assert!(
            out["msg"].as_str().unwrap().contains(names),
            "{command} {drop_env:?}: {out}"
        );
    }
    let (code, out) = plugin("VERSION", "", &[], &[]);
    assert_eq!(code, 0);
    assert!(out["supportedVersions"]
        .as_array()
        .unwrap()
        .iter()
        .any(|v| v == "0.3.1"));
}
