//! Where a pod's rate limits come from: CNI `runtimeConfig.bandwidth` (bits
//! per second) and the pod annotations.

use crate::spec::Bandwidth;

pub const INGRESS_ANNOTATION: &str = "k8s.aliyun.com/ingress-bandwidth";
pub const EGRESS_ANNOTATION: &str = "k8s.aliyun.com/egress-bandwidth";
pub const K8S_INGRESS_ANNOTATION: &str = "kubernetes.io/ingress-bandwidth";
pub const K8S_EGRESS_ANNOTATION: &str = "kubernetes.io/egress-bandwidth";

/// An annotation whose value is not a rate; the pod runs without that limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("annotation {annotation}={value:?} is not a bandwidth ({reason}); the pod runs without this limit")]
pub struct BandwidthError {
    pub annotation: String,
    pub value: String,
    pub reason: String,
}

/// `k8s.aliyun.com/*-bandwidth`: bytes per second with a K/M/G/T suffix
/// (1024-based, as upstream), returned in bits per second.
pub fn parse_aliyun(annotation: &str, value: &str) -> Result<u64, BandwidthError> {
    parse(annotation, value, 1024, 8)
}

/// `kubernetes.io/*-bandwidth`: a quantity in bits per second (`10M` = 10⁷).
pub fn parse_kubernetes(annotation: &str, value: &str) -> Result<u64, BandwidthError> {
    parse(annotation, value, 1000, 1)
}

fn parse(annotation: &str, value: &str, base: u64, to_bits: u64) -> Result<u64, BandwidthError> {
    let err = |reason: &str| BandwidthError {
        annotation: annotation.into(),
        value: value.into(),
        reason: reason.into(),
    };
    let v = value.trim();
    let digits_end = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (digits, suffix) = v.split_at(digits_end);
    let n: u64 = digits
        .parse()
        .map_err(|_| err("expected a whole number with an optional K, M, G or T suffix"))?;
    let suffix = suffix.strip_suffix("i").unwrap_or(suffix);
    let power = match suffix {
        "" => 0,
        "k" | "K" => 1,
        "m" | "M" => 2,
        "g" | "G" => 3,
        "t" | "T" => 4,
        _ => return Err(err(&format!("unknown suffix {suffix:?}; use K, M, G or T"))),
    };
    let bits = (0..power)
        .try_fold(n, |acc, _| acc.checked_mul(base))
        .and_then(|b| b.checked_mul(to_bits))
        .ok_or_else(|| err("too large"))?;
    if bits == 0 {
        return Err(err("must be above zero"));
    }
    Ok(bits)
}

/// The limits of a pod: CNI runtime config first (it is what kubelet
/// passes for `kubernetes.io/*`), then the annotations. Bad annotations are
/// returned beside the result so the caller can raise an Event and go on.
pub fn resolve(
    runtime_ingress_bps: Option<u64>,
    runtime_egress_bps: Option<u64>,
    annotations: &std::collections::BTreeMap<String, String>,
) -> (Bandwidth, Vec<BandwidthError>) {
    let mut errors = Vec::new();
    let mut pick = |runtime: Option<u64>, aliyun: &str, k8s: &str| -> Option<u64> {
        if let Some(bps) = runtime.filter(|b| *b > 0) {
            return Some(bps);
        }
        if let Some(v) = annotations.get(k8s) {
            match parse_kubernetes(k8s, v) {
                Ok(b) => return Some(b),
                Err(e) => errors.push(e),
            }
        }
        if let Some(v) = annotations.get(aliyun) {
            match parse_aliyun(aliyun, v) {
                Ok(b) => return Some(b),
                Err(e) => errors.push(e),
            }
        }
        None
    };
    let ingress = pick(runtime_ingress_bps, INGRESS_ANNOTATION, K8S_INGRESS_ANNOTATION);
    let egress = pick(runtime_egress_bps, EGRESS_ANNOTATION, K8S_EGRESS_ANNOTATION);
    (
        Bandwidth {
            ingress_bps: ingress,
            egress_bps: egress,
        },
        errors,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn aliyun_annotations_are_1024_based_bytes() {
        assert_eq!(parse_aliyun(INGRESS_ANNOTATION, "10M").unwrap(), 10 * 1024 * 1024 * 8);
        assert_eq!(parse_aliyun(INGRESS_ANNOTATION, "512K").unwrap(), 512 * 1024 * 8);
        assert_eq!(parse_aliyun(INGRESS_ANNOTATION, "1G").unwrap(), 1024 * 1024 * 1024 * 8);
        assert_eq!(parse_aliyun(INGRESS_ANNOTATION, "2048").unwrap(), 2048 * 8);
        assert_eq!(parse_aliyun(INGRESS_ANNOTATION, "10Mi").unwrap(), 10 * 1024 * 1024 * 8);
    }

    #[test]
    fn kubernetes_annotations_are_bits() {
        assert_eq!(parse_kubernetes(K8S_EGRESS_ANNOTATION, "10M").unwrap(), 10_000_000);
        assert_eq!(parse_kubernetes(K8S_EGRESS_ANNOTATION, "1G").unwrap(), 1_000_000_000);
    }

    #[test]
    fn bad_values_name_the_annotation_and_value() {
        let e = parse_aliyun(INGRESS_ANNOTATION, "10Q").unwrap_err();
        assert_eq!(e.annotation, INGRESS_ANNOTATION);
        assert_eq!(e.value, "10Q");
        assert!(
            e.to_string().contains("k8s.aliyun.com/ingress-bandwidth=\"10Q\""),
            "{e}"
        );
        for bad in ["", "M", "-5M", "1.5M", "0", "99999999999T"] {
            assert!(parse_aliyun(EGRESS_ANNOTATION, bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn runtime_config_wins_and_bad_annotations_are_reported() {
        let mut a = BTreeMap::new();
        a.insert(INGRESS_ANNOTATION.to_owned(), "1M".to_owned());
        a.insert(EGRESS_ANNOTATION.to_owned(), "10Q".to_owned());
        let (bw, errors) = resolve(Some(5_000_000), None, &a);
        assert_eq!(bw.ingress_bps, Some(5_000_000), "runtimeConfig first");
        assert_eq!(bw.egress_bps, None, "the bad one is left out");
        assert_eq!(errors.len(), 1);
        let (bw, _) = resolve(None, None, &a);
        assert_eq!(bw.ingress_bps, Some(8 * 1024 * 1024));
    }
}
