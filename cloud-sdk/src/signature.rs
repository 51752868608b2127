//! RPC signature version 1.0 (HMAC-SHA1), as the ECS and VPC gateways check it.
//! Shared by the client (to sign) and the emulator (to verify).

use base64::Engine;
use hmac::{Hmac, Mac};
use std::collections::BTreeMap;

/// Request parameters by name. `BTreeMap<String, _>` orders keys by bytes,
/// which is the order the signature requires (`Tag.10.Key` < `Tag.2.Key`).
pub type Params = BTreeMap<String, String>;

/// RFC 3986 percent-encoding: only `A-Z a-z 0-9 - _ . ~` stay literal; every
/// other UTF-8 byte becomes `%XY` with upper-case hex (space is `%20`).
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        }
    }
    out
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

/// Decodes `%XY` escapes (and `+` as space, for form bodies when `plus_is_space`).
pub fn percent_decode(s: &str, plus_is_space: bool) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .ok_or_else(|| format!("truncated escape in {s:?}"))?;
                let hex = std::str::from_utf8(hex).map_err(|_| format!("bad escape in {s:?}"))?;
                out.push(u8::from_str_radix(hex, 16).map_err(|_| format!("bad escape %{hex} in {s:?}"))?);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| format!("{s:?} is not UTF-8 once decoded"))
}

/// Parses `a=1&b=2` into parameters; the last of repeated names wins.
pub fn parse_query(query: &str, plus_is_space: bool) -> Result<Params, String> {
    let mut params = Params::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        params.insert(percent_decode(k, plus_is_space)?, percent_decode(v, plus_is_space)?);
    }
    Ok(params)
}

/// `k=v&…` over every parameter except `Signature`, names and values encoded.
pub fn canonical_query(params: &Params) -> String {
    let mut out = String::new();
    for (k, v) in params.iter().filter(|(k, _)| k.as_str() != "Signature") {
        if !out.is_empty() {
            out.push('&');
        }
        out.push_str(&percent_encode(k));
        out.push('=');
        out.push_str(&percent_encode(v));
    }
    out
}

/// `METHOD&%2F&percentEncode(canonical query)`.
pub fn string_to_sign(method: &str, params: &Params) -> String {
    format!(
        "{method}&{}&{}",
        percent_encode("/"),
        percent_encode(&canonical_query(params))
    )
}

/// `Base64(HMAC-SHA1(secret + "&", string_to_sign))`.
pub fn sign(secret: &str, string_to_sign: &str) -> String {
    let key = format!("{secret}&");
    // HMAC takes a key of any length; new_from_slice cannot fail for it.
    let mut mac = match Hmac::<sha1::Sha1>::new_from_slice(key.as_bytes()) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC accepts keys of every length"),
    };
    mac.update(string_to_sign.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// The signature of `params` sent with `method`.
pub fn signature(method: &str, params: &Params, secret: &str) -> String {
    sign(secret, &string_to_sign(method, params))
}

/// Constant-time comparison of two signatures.
pub fn signatures_match(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r1_params(timestamp_key: &str) -> Params {
        [
            ("AccessKeyId", "testid"),
            ("Action", "DescribeRegions"),
            ("Format", "XML"),
            ("SignatureMethod", "HMAC-SHA1"),
            ("SignatureNonce", "3ee8c1b8-83d3-44af-a94f-4e0ad82fd6cf"),
            ("SignatureVersion", "1.0"),
            (timestamp_key, "2016-02-23T12:46:24Z"),
            ("Version", "2014-05-26"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    #[test]
    fn documented_vector_r1() {
        let params = r1_params("Timestamp");
        let sts = string_to_sign("GET", &params);
        assert_eq!(
            sts,
            "GET&%2F&AccessKeyId%3Dtestid%26Action%3DDescribeRegions%26Format%3DXML%26SignatureMethod%3DHMAC-SHA1%26SignatureNonce%3D3ee8c1b8-83d3-44af-a94f-4e0ad82fd6cf%26SignatureVersion%3D1.0%26Timestamp%3D2016-02-23T12%253A46%253A24Z%26Version%3D2014-05-26"
        );
        assert_eq!(sign("testsecret", &sts), "OLeaidS1JvxuMvnyHOwuJ+uX5qY=");
        // on the wire the signature itself is encoded once more
        assert_eq!(
            percent_encode("OLeaidS1JvxuMvnyHOwuJ+uX5qY="),
            "OLeaidS1JvxuMvnyHOwuJ%2BuX5qY%3D"
        );
    }

    #[test]
    fn documented_vector_r2_and_its_traps() {
        // The older spelling `TimeStamp` sorts after `SignatureVersion` too and gives CT9X0….
        assert_eq!(
            signature("GET", &r1_params("TimeStamp"), "testsecret"),
            "CT9X0VtwR86fNWSnsc6v8YGOjuE="
        );
        // The docs' typo — a literal `&` instead of `%26` — gives other values, which we must not produce.
        let literal_amp = |key: &str| {
            let q = canonical_query(&r1_params(key));
            sign(
                "testsecret",
                &format!("GET&%2F&{}", percent_encode(&q).replace("%26", "&")),
            )
        };
        assert_eq!(literal_amp("TimeStamp"), "LZ5DVzNj95387UDL70u7+18AwWY=");
        assert_eq!(literal_amp("Timestamp"), "VyBL52idtt+oImX0NZC+2ngk15Q=");
        // The key is the secret plus "&": without it the value differs.
        let sts = string_to_sign("GET", &r1_params("Timestamp"));
        let mut mac = Hmac::<sha1::Sha1>::new_from_slice(b"testsecret").unwrap();
        mac.update(sts.as_bytes());
        let no_amp = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        assert_ne!(no_amp, "OLeaidS1JvxuMvnyHOwuJ+uX5qY=");
    }

    #[test]
    fn encoding_edge_cases() {
        assert_eq!(percent_encode("a b"), "a%20b");
        assert_eq!(percent_encode("*"), "%2A");
        assert_eq!(percent_encode("~"), "~");
        assert_eq!(percent_encode("+"), "%2B");
        assert_eq!(percent_encode("/"), "%2F");
        assert_eq!(percent_encode("="), "%3D");
        assert_eq!(percent_encode("&"), "%26");
        assert_eq!(percent_encode("-_.~AZaz09"), "-_.~AZaz09");
        assert_eq!(percent_encode("\""), "%22");
        assert_eq!(percent_encode("中"), "%E4%B8%AD");
        assert_eq!(percent_encode("é"), "%C3%A9");
        assert_eq!(percent_encode(""), "");
    }

    #[test]
    fn empty_values_are_signed() {
        let mut p = Params::new();
        p.insert("SignatureType".into(), String::new());
        p.insert("Action".into(), "X".into());
        assert_eq!(canonical_query(&p), "Action=X&SignatureType=");
        assert!(string_to_sign("GET", &p).contains("SignatureType%3D"));
    }

    #[test]
    fn byte_order_sort() {
        let mut p = Params::new();
        for k in ["Tag.2.Key", "Tag.10.Key", "tag", "Tag.1.Value", "Action"] {
            p.insert(k.into(), "v".into());
        }
        assert_eq!(
            canonical_query(&p),
            "Action=v&Tag.1.Value=v&Tag.10.Key=v&Tag.2.Key=v&tag=v"
        );
    }

    #[test]
    fn signature_parameter_is_excluded() {
        let mut p = r1_params("Timestamp");
        let before = string_to_sign("GET", &p);
        p.insert("Signature".into(), "whatever".into());
        assert_eq!(string_to_sign("GET", &p), before);
    }

    #[test]
    fn post_differs_from_get() {
        let p = r1_params("Timestamp");
        assert!(string_to_sign("POST", &p).starts_with("POST&%2F&"));
        assert_ne!(signature("POST", &p, "testsecret"), signature("GET", &p, "testsecret"));
    }

    #[test]
    fn sts_token_is_a_signed_parameter() {
        let mut p = r1_params("Timestamp");
        let without = signature("GET", &p, "testsecret");
        p.insert("SecurityToken".into(), "CAIS+token/=".into());
        let with = signature("GET", &p, "testsecret");
        assert_ne!(without, with);
        assert!(string_to_sign("GET", &p).contains("SecurityToken%3DCAIS%252Btoken%252F%253D"));
    }

    #[test]
    fn query_round_trip() {
        let p = r1_params("Timestamp");
        let parsed = parse_query(&canonical_query(&p), false).unwrap();
        assert_eq!(parsed, p);
        assert_eq!(parse_query("a=b+c", true).unwrap()["a"], "b c");
        assert_eq!(parse_query("a=b+c", false).unwrap()["a"], "b+c");
        assert!(parse_query("a=%G1", false).is_err());
        assert!(parse_query("a=%E4", false).is_err());
    }
}
