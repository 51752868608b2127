//! The emulator checks requests as the OpenAPI gateway does, for any correct
//! signer: these requests are built and signed by hand, not by `CloudClient`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use proptest::prelude::*;
use serde_json::Value;
use std::time::{Duration, SystemTime};
use terway_cloud::emulator::*;
use terway_cloud::signature::{self, percent_encode, Params};
use terway_cloud::{new_client_token, utc};

fn base(action: &str, version: &str) -> Params {
    terway_cloud::install_crypto_provider();
    let mut p = Params::new();
    for (k, v) in [
        ("Action", action),
        ("Version", version),
        ("AccessKeyId", DEFAULT_ACCESS_KEY_ID),
        ("SignatureMethod", "HMAC-SHA1"),
        ("SignatureVersion", "1.0"),
        ("Format", "JSON"),
        ("RegionId", DEFAULT_REGION),
    ] {
        p.insert(k.into(), v.into());
    }
    p.insert("SignatureNonce".into(), new_client_token());
    p.insert("Timestamp".into(), utc::now());
    p
}

fn sign(method: &str, mut p: Params) -> Params {
    let sig = signature::signature(method, &p, DEFAULT_ACCESS_KEY_SECRET);
    p.insert("Signature".into(), sig);
    p
}

fn encode(p: &Params) -> String {
    p.iter()
        .map(|(k, v)| format!("{}={}", percent_encode(k), percent_encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

async fn get(url: &str, p: &Params) -> (u16, Value) {
    let r = reqwest::get(format!("{url}/?{}", encode(p))).await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

/// POST with `in_query` parameters in the URL and the rest in a form body.
async fn post(url: &str, p: &Params, in_query: &[&str]) -> (u16, Value) {
    let (q, b): (Params, Params) = p.clone().into_iter().partition(|(k, _)| in_query.contains(&k.as_str()));
    let r = reqwest::Client::new()
        .post(format!("{url}/?{}", encode(&q)))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(encode(&b))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

fn code(v: &Value) -> &str {
    v["Code"].as_str().unwrap_or("")
}

#[tokio::test]
async fn accepts_any_correct_signer() {
    let em = Emulator::start(Scenario::default()).await.unwrap();
    // an empty parameter, as the legacy Python SDK sends `SignatureType=`, is signed like any other
    let mut p = base("DescribeVSwitches", "2016-04-28");
    p.insert("SignatureType".into(), String::new());
    let (status, body) = get(&em.url(), &sign("GET", p)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["VSwitches"]["VSwitch"].as_array().unwrap().len(), 3);
    assert!(body["RequestId"].as_str().is_some_and(|r| !r.is_empty()));

    // POST with the common parameters in the query and the API's in the body (Tea SDK style)
    let mut p = base("CreateNetworkInterface", "2014-05-26");
    p.insert("VSwitchId".into(), "vsw-large0000000001".into());
    p.insert("SecurityGroupIds.1".into(), DEFAULT_SECURITY_GROUP.into());
    p.insert("Description".into(), "a description with spaces, * and ~".into());
    p.insert("Tag.1.Key".into(), "k8s.aliyun.com/owner".into());
    p.insert("Tag.1.Value".into(), "中文 value".into());
    let signed = sign("POST", p);
    let common = [
        "Action",
        "Version",
        "AccessKeyId",
        "SignatureMethod",
        "SignatureVersion",
        "SignatureNonce",
        "Timestamp",
        "Signature",
        "Format",
    ];
    let (status, body) = post(&em.url(), &signed, &common).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["Description"], "a description with spaces, * and ~");
    assert_eq!(body["Tags"]["Tag"][0]["TagValue"], "中文 value");

    // a GET signature does not verify as POST
    let p = sign("GET", base("DescribeVSwitches", "2016-04-28"));
    let (status, body) = post(&em.url(), &p, &[]).await;
    assert_eq!((status, code(&body)), (400, "SignatureDoesNotMatch"));
}

#[tokio::test]
async fn gateway_refusals() {
    let em = Emulator::start(Scenario::default()).await.unwrap();
    let url = em.url();

    let mut p = base("DescribeVSwitches", "2016-04-28");
    p.insert("AccessKeyId".into(), "unknown-key".into());
    let (status, body) = get(&url, &sign("GET", p)).await;
    assert_eq!((status, code(&body)), (404, "InvalidAccessKeyId.NotFound"));

    let mut p = base("DescribeVSwitches", "2016-04-28");
    p.insert(
        "Timestamp".into(),
        utc::format(SystemTime::now() - Duration::from_secs(20 * 60)),
    );
    let (status, body) = get(&url, &sign("GET", p)).await;
    assert_eq!((status, code(&body)), (400, "InvalidTimeStamp.Expired"));

    let mut p = base("DescribeVSwitches", "2016-04-28");
    p.insert("Timestamp".into(), "2026-11-26 12:00:00".into());
    let (status, body) = get(&url, &sign("GET", p)).await;
    assert_eq!((status, code(&body)), (400, "InvalidTimeStamp.Format"));

    let p = sign("GET", base("DescribeVSwitches", "2016-04-28"));
    assert_eq!(get(&url, &p).await.0, 200);
    let (status, body) = get(&url, &p).await;
    assert_eq!(
        (status, code(&body)),
        (400, "SignatureNonceUsed"),
        "the same nonce twice"
    );

    for missing in [
        "Action",
        "Version",
        "AccessKeyId",
        "SignatureNonce",
        "Timestamp",
        "SignatureMethod",
        "SignatureVersion",
    ] {
        let mut p = base("DescribeVSwitches", "2016-04-28");
        p.remove(missing);
        let (status, body) = get(&url, &sign("GET", p)).await;
        assert_eq!((status, code(&body)), (400, "MissingParameter"), "{missing}");
        assert!(body["Message"].as_str().unwrap().contains(missing), "{body}");
    }
    let mut p = base("DescribeVSwitches", "2016-04-28");
    p.remove("Signature");
    let (_, body) = get(&url, &p).await;
    assert!(body["Message"].as_str().unwrap().contains("\"Signature\""), "{body}");

    let (status, body) = get(&url, &sign("GET", base("DescribeVSwitches", "2014-05-26"))).await;
    assert_eq!((status, code(&body)), (400, "InvalidVersion"));

    let (status, body) = get(&url, &sign("GET", base("DescribeEverything", "2014-05-26"))).await;
    assert_eq!((status, code(&body)), (404, "InvalidAction.NotFound"));

    // action parameters: missing and malformed ones are named
    let mut p = base("CreateNetworkInterface", "2014-05-26");
    p.insert("SecurityGroupId".into(), DEFAULT_SECURITY_GROUP.into());
    let (status, body) = get(&url, &sign("GET", p)).await;
    assert_eq!((status, code(&body)), (400, "MissingParameter"));
    assert!(body["Message"].as_str().unwrap().contains("VSwitchId"), "{body}");

    let mut p = base("AssignPrivateIpAddresses", "2014-05-26");
    p.insert("NetworkInterfaceId".into(), "eni-x".into());
    p.insert("SecondaryPrivateIpAddressCount".into(), "three".into());
    let (status, body) = get(&url, &sign("GET", p)).await;
    assert_eq!((status, code(&body)), (400, "InvalidParameter"));
    assert!(
        body["Message"]
            .as_str()
            .unwrap()
            .contains("SecondaryPrivateIpAddressCount"),
        "{body}"
    );

    let mut p = base("DescribeVSwitches", "2016-04-28");
    p.insert("RegionId".into(), "cn-nowhere".into());
    let (status, body) = get(&url, &sign("GET", p)).await;
    assert_eq!((status, code(&body)), (404, "InvalidRegionId.NotFound"));
}

#[tokio::test]
async fn client_token_same_answer_never_a_second_eni() {
    let em = Emulator::start(Scenario::default()).await.unwrap();
    let token = new_client_token();
    let create = |description: &str| {
        let mut p = base("CreateNetworkInterface", "2014-05-26");
        p.insert("VSwitchId".into(), "vsw-large0000000001".into());
        p.insert("SecurityGroupId".into(), DEFAULT_SECURITY_GROUP.into());
        p.insert("ClientToken".into(), token.clone());
        p.insert("Description".into(), description.into());
        sign("POST", p)
    };
    let (_, first) = post(&em.url(), &create("one"), &[]).await;
    let (_, second) = post(&em.url(), &create("one"), &[]).await;
    assert_eq!(first["NetworkInterfaceId"], second["NetworkInterfaceId"]);
    assert_eq!(em.dump()["enis"].as_array().unwrap().len(), 2, "primary + one");
    let (status, body) = post(&em.url(), &create("two"), &[]).await;
    assert_eq!((status, code(&body)), (400, "IdempotentParameterMismatch"));
}

#[test]
fn emulator_binary_answers_a_signed_request() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_aliyun-emulator"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let result = rt.block_on(async {
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        get(&url, &sign("GET", base("DescribeVSwitches", "2016-04-28"))).await
    });
    let _ = child.kill();
    let _ = child.wait();
    let (status, body) = result;
    assert_eq!(status, 200, "{body}");
    let ids: Vec<&str> = body["VSwitches"]["VSwitch"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["VSwitchId"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        ["vsw-large0000000001", "vsw-node00000000001", "vsw-small0000000001"]
    );
}

/// A parameter name the emulator does not act on, but which is still signed.
fn extra_name() -> impl Strategy<Value = String> {
    "X[A-Za-z0-9.]{0,12}"
}

fn extra_value() -> impl Strategy<Value = String> {
    prop_oneof![
        "[ -~]{0,20}",
        "\\PC{0,8}",
        Just(String::new()),
        Just("a b*c~d+e/f=g&h".to_owned()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Every request our signer signs is accepted; changing any single byte of
    /// a parameter value or of the signature gets it refused.
    #[test]
    fn signed_accepted_any_byte_change_rejected(
        extras in proptest::collection::btree_map(extra_name(), extra_value(), 0..6),
        post_it in any::<bool>(),
        pick in any::<proptest::sample::Index>(),
        flip in 1u8..=255,
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let em = Emulator::start(Scenario::default()).await.unwrap();
            let method = if post_it { "POST" } else { "GET" };
            let send = |p: Params| {
                let url = em.url();
                async move { if post_it { post(&url, &p, &[]).await } else { get(&url, &p).await } }
            };
            let mut p = base("DescribeVSwitches", "2016-04-28");
            p.extend(extras.clone());
            let signed = sign(method, p.clone());
            let (status, body) = send(signed.clone()).await;
            prop_assert_eq!(status, 200, "{}", body);

            // change one byte of one value (signature included), with a fresh nonce so only the change matters
            let mut p = base("DescribeVSwitches", "2016-04-28");
            p.extend(extras);
            let mut tampered = sign(method, p);
            let keys: Vec<String> = tampered.keys().filter(|k| k.as_str() != "SignatureNonce").cloned().collect();
            let key = pick.get(&keys).clone();
            let mut bytes = tampered[&key].clone().into_bytes();
            if bytes.is_empty() {
                bytes.push(b'x');
            } else {
                let i = pick.index(bytes.len());
                bytes[i] ^= flip;
            }
            let Ok(changed) = String::from_utf8(bytes) else { return Ok(()) };
            tampered.insert(key.clone(), changed);
            let (status, body) = send(tampered).await;
            prop_assert!(status >= 400, "a change to {} was accepted: {}", key, body);
            Ok(())
        })?;
    }
}
