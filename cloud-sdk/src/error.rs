//! The one error type of the cloud client, and the classification the
//! reconciler acts on.

/// What a caller should do about an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorClass {
    /// Throttling, 5xx, transport trouble, conflicts: try again later.
    Retryable,
    /// The vSwitch has no free address: set it aside and use another.
    VSwitchExhausted,
    /// The instance's ENI or per-ENI IP quota is reached.
    InstanceQuota,
    /// On a release path: the thing to release is already gone.
    AlreadyDone,
    /// Anything else: retrying will not help.
    Fatal,
}

#[derive(Debug, thiserror::Error)]
pub enum CloudError {
    /// The API answered with an error.
    #[error("{action} failed: {code} (HTTP {status}): {message} [RequestId: {request_id}]")]
    Api {
        action: String,
        status: u16,
        code: String,
        message: String,
        request_id: String,
    },
    /// No usable answer reached us (connect, reset, timeout).
    #[error("{action} failed: {message}")]
    Transport {
        action: String,
        message: String,
        timeout: bool,
    },
    /// An answer that does not have the documented shape.
    #[error("{action}: unexpected response (HTTP {status}): {message} [RequestId: {request_id}]")]
    Decode {
        action: String,
        status: u16,
        message: String,
        request_id: String,
    },
    /// Credentials could not be had (missing, or the metadata service refused).
    #[error("credentials: {0}")]
    Credentials(String),
    /// The metadata service failed.
    #[error("metadata {path}: {message}")]
    Metadata {
        path: String,
        status: Option<u16>,
        message: String,
    },
    /// Bad client settings (endpoint, region).
    #[error("client configuration: {0}")]
    Config(String),
}

const RETRYABLE: &[&str] = &[
    "Throttling",
    "Throttling.User",
    "Throttling.Api",
    "ServiceUnavailable",
    "InternalError",
    "UnknownError",
    "InvalidOperation.Conflict",
    "Operation.Conflict",
    "OperationConflict",
    "LastTokenProcessing",
];
const VSWITCH_EXHAUSTED: &[&str] = &[
    "InvalidVSwitchId.IpNotEnough",
    "InvalidVSwitchId.Ipv6NotEnough",
    "QuotaExceeded.PrivateIpAddress",
];
const INSTANCE_QUOTA: &[&str] = &[
    "EniPerInstanceLimitExceeded",
    "MaxEniCountExceeded",
    "MaxEniPrivateIpsCountExceeded",
    "InvalidOperation.Ipv4CountExceeded",
    "InvalidOperation.Ipv6CountExceeded",
];
const GONE: &[&str] = &[
    "InvalidEniId.NotFound",
    "InvalidIp.IpUnassigned",
    "InvalidEcsId.NotFound",
];
const RELEASE_ACTIONS: &[&str] = &[
    "UnassignPrivateIpAddresses",
    "DetachNetworkInterface",
    "DeleteNetworkInterface",
];

/// Classifies an API error of `action`.
pub fn classify(action: &str, status: u16, code: &str) -> ErrorClass {
    if RETRYABLE.contains(&code) || code.starts_with("Throttling") {
        ErrorClass::Retryable
    } else if VSWITCH_EXHAUSTED.contains(&code) {
        ErrorClass::VSwitchExhausted
    } else if INSTANCE_QUOTA.contains(&code) {
        ErrorClass::InstanceQuota
    } else if GONE.contains(&code) && RELEASE_ACTIONS.contains(&action) {
        ErrorClass::AlreadyDone
    } else if status >= 500 {
        ErrorClass::Retryable
    } else {
        ErrorClass::Fatal
    }
}

impl CloudError {
    pub fn class(&self) -> ErrorClass {
        match self {
            Self::Api {
                action, status, code, ..
            } => classify(action, *status, code),
            Self::Transport { .. } => ErrorClass::Retryable,
            Self::Decode { status, .. } if *status >= 500 => ErrorClass::Retryable,
            Self::Metadata { status, .. } if status.is_none_or(|s| s >= 500) => ErrorClass::Retryable,
            Self::Decode { .. } | Self::Metadata { .. } | Self::Credentials(_) | Self::Config(_) => ErrorClass::Fatal,
        }
    }

    pub fn is_retryable(&self) -> bool {
        self.class() == ErrorClass::Retryable
    }

    /// The API error code, if the API answered.
    pub fn code(&self) -> Option<&str> {
        match self {
            Self::Api { code, .. } => Some(code),
            _ => None,
        }
    }

    pub fn request_id(&self) -> Option<&str> {
        match self {
            Self::Api { request_id, .. } | Self::Decode { request_id, .. } => Some(request_id),
            _ => None,
        }
    }

    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Api { status, .. } | Self::Decode { status, .. } => Some(*status),
            Self::Metadata { status, .. } => *status,
            _ => None,
        }
    }

    /// A label for metrics: the API code, or the kind of failure.
    pub fn metric_code(&self) -> &str {
        match self {
            Self::Api { code, .. } => code,
            Self::Transport { timeout: true, .. } => "Timeout",
            Self::Transport { .. } => "Transport",
            Self::Decode { .. } => "Decode",
            Self::Credentials(_) => "Credentials",
            Self::Metadata { .. } => "Metadata",
            Self::Config(_) => "Config",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes() {
        for code in [
            "Throttling",
            "Throttling.User",
            "Throttling.Api",
            "ServiceUnavailable",
            "InternalError",
            "InvalidOperation.Conflict",
            "Operation.Conflict",
        ] {
            assert_eq!(
                classify("AssignPrivateIpAddresses", 400, code),
                ErrorClass::Retryable,
                "{code}"
            );
        }
        assert_eq!(classify("X", 502, "BadGateway"), ErrorClass::Retryable);
        assert_eq!(
            classify("CreateNetworkInterface", 403, "InvalidVSwitchId.IpNotEnough"),
            ErrorClass::VSwitchExhausted
        );
        assert_eq!(
            classify("AssignPrivateIpAddresses", 403, "QuotaExceeded.PrivateIpAddress"),
            ErrorClass::VSwitchExhausted
        );
        assert_eq!(
            classify("AssignIpv6Addresses", 403, "InvalidVSwitchId.Ipv6NotEnough"),
            ErrorClass::VSwitchExhausted
        );
        for code in [
            "EniPerInstanceLimitExceeded",
            "MaxEniPrivateIpsCountExceeded",
            "InvalidOperation.Ipv4CountExceeded",
            "InvalidOperation.Ipv6CountExceeded",
        ] {
            assert_eq!(
                classify("AttachNetworkInterface", 403, code),
                ErrorClass::InstanceQuota,
                "{code}"
            );
        }
        assert_eq!(
            classify("UnassignPrivateIpAddresses", 403, "InvalidIp.IpUnassigned"),
            ErrorClass::AlreadyDone
        );
        assert_eq!(
            classify("DeleteNetworkInterface", 404, "InvalidEniId.NotFound"),
            ErrorClass::AlreadyDone
        );
        assert_eq!(
            classify("DetachNetworkInterface", 404, "InvalidEcsId.NotFound"),
            ErrorClass::AlreadyDone
        );
        // the same code outside a release path is not "done"
        assert_eq!(
            classify("AssignPrivateIpAddresses", 404, "InvalidEniId.NotFound"),
            ErrorClass::Fatal
        );
        for code in [
            "SignatureDoesNotMatch",
            "InvalidAccessKeyId.NotFound",
            "Forbidden.RAM",
            "IncorrectInstanceStatus",
            "SomethingNew",
        ] {
            assert_eq!(
                classify("CreateNetworkInterface", 400, code),
                ErrorClass::Fatal,
                "{code}"
            );
        }
        let t = CloudError::Transport {
            action: "X".into(),
            message: "timeout".into(),
            timeout: true,
        };
        assert!(t.is_retryable());
        assert_eq!(t.metric_code(), "Timeout");
    }
}
