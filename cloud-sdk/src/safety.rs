//! Checks made on our side before a destructive call, so that deleting
//! never rests on the server having applied a filter: a gateway (or a
//! double, or a future API change) that ignores `Status` or `Tag.N` must not
//! make terway-rs delete an ENI that is not its own.

use crate::api::NetworkInterfaceSet;
use std::time::{Duration, SystemTime};

/// What an ENI must show before it is deleted.
#[derive(Debug, Clone)]
pub struct DeletionRules<'a> {
    /// The tag every ENI terway-rs creates carries.
    pub creator_tag: (&'a str, &'a str),
    /// For automatic clean-up: the node tag and this instance's id.
    pub node_tag: Option<(&'a str, &'a str)>,
    /// The status the call needs (`Available` for a delete).
    pub status: &'a str,
    /// Younger ENIs may be in the middle of being attached by their creator.
    pub min_age: Duration,
    pub now: SystemTime,
}

/// Why `eni` must be kept, or `None` when the rules allow deleting it.
pub fn reason_to_keep(eni: &NetworkInterfaceSet, rules: &DeletionRules<'_>) -> Option<String> {
    if eni.kind != "Secondary" {
        return Some(format!(
            "a {} ENI, never deleted",
            if eni.kind.is_empty() { "typeless" } else { &eni.kind }
        ));
    }
    if eni.status != rules.status {
        return Some(format!("status {} (deleting needs {})", eni.status, rules.status));
    }
    let (key, value) = rules.creator_tag;
    if eni.tag(key) != Some(value) {
        return Some(format!("no {key}={value} tag: not created by terway"));
    }
    if let Some((key, node)) = rules.node_tag {
        match eni.tag(key) {
            Some(tagged) if tagged == node => {}
            Some(other) => return Some(format!("created for another node ({other})")),
            None => return Some(format!("no {key} tag: not created for this node")),
        }
    }
    let Some(created) = crate::utc::parse(&eni.creation_time) else {
        return Some(format!(
            "creation time {:?} does not parse: its age is unknown",
            eni.creation_time
        ));
    };
    // a creation time in the future (clock skew) is as young as can be
    let age = rules.now.duration_since(created).unwrap_or(Duration::ZERO);
    if age < rules.min_age {
        return Some(format!(
            "{}s old, younger than {}s",
            age.as_secs(),
            rules.min_age.as_secs()
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{EcsTag, EcsTags};

    fn eni(kind: &str, status: &str, tags: &[(&str, &str)], created: &str) -> NetworkInterfaceSet {
        NetworkInterfaceSet {
            network_interface_id: "eni-1".into(),
            kind: kind.into(),
            status: status.into(),
            creation_time: created.into(),
            tags: EcsTags {
                items: tags
                    .iter()
                    .map(|(k, v)| EcsTag {
                        tag_key: (*k).into(),
                        tag_value: (*v).into(),
                    })
                    .collect(),
            },
            ..Default::default()
        }
    }

    #[test]
    fn only_our_old_available_secondary_enis_may_go() {
        let now = crate::utc::parse("2026-11-30T12:00:00Z").unwrap_or(SystemTime::UNIX_EPOCH);
        let rules = DeletionRules {
            creator_tag: ("creator", "terway"),
            node_tag: Some(("node", "i-1")),
            status: "Available",
            min_age: Duration::from_secs(300),
            now,
        };
        let ours = [("creator", "terway"), ("node", "i-1")];
        let old = "2026-11-30T11:00:00Z";
        assert_eq!(reason_to_keep(&eni("Secondary", "Available", &ours, old), &rules), None);
        let kept = |e: NetworkInterfaceSet| reason_to_keep(&e, &rules).unwrap_or_default();
        assert!(kept(eni("Primary", "Available", &ours, old)).contains("Primary"));
        assert!(kept(eni("Secondary", "InUse", &ours, old)).contains("status InUse"));
        assert!(kept(eni("Secondary", "Available", &[("node", "i-1")], old)).contains("not created by terway"));
        assert!(kept(eni(
            "Secondary",
            "Available",
            &[("creator", "terway"), ("node", "i-2")],
            old
        ))
        .contains("another node"));
        assert!(
            kept(eni("Secondary", "Available", &[("creator", "terway")], old)).contains("not created for this node")
        );
        assert!(kept(eni("Secondary", "Available", &ours, "yesterday")).contains("does not parse"));
        assert!(kept(eni("Secondary", "Available", &ours, "2026-11-30T11:58:00Z")).contains("younger"));
        assert!(kept(eni("Secondary", "Available", &ours, "2026-12-01T00:00:00Z")).contains("younger"));
        // without a node rule (terway-cli --all-nodes), any node's ENI may go
        let any_node = DeletionRules {
            node_tag: None,
            ..rules
        };
        assert_eq!(
            reason_to_keep(
                &eni("Secondary", "Available", &[("creator", "terway"), ("node", "i-2")], old),
                &any_node
            ),
            None
        );
    }
}
