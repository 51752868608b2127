//! Which vSwitch a new ENI comes from: the node zone's configured ones, by
//! `vswitch_selection_policy`, minus those set aside after running out.

use std::collections::HashMap;
use std::time::{Duration, Instant};
use terway_config::VSwitchSelectionPolicy;

/// How often, at most, a set-aside vSwitch is re-checked while ADDs wait.
pub const RECHECK_INTERVAL: Duration = Duration::from_secs(3);

#[derive(Debug, Default)]
pub struct VSwitchSelector {
    set_aside: HashMap<String, Instant>,
    last_recheck: Option<Instant>,
}

impl VSwitchSelector {
    /// `vswitch` ran out (IpNotEnough / QuotaExceeded.PrivateIpAddress): skip it for `cooldown`.
    pub fn set_aside(&mut self, vswitch: &str, cooldown: Duration) {
        tracing::warn!(
            vswitch,
            cooldown_s = cooldown.as_secs(),
            "vSwitch has no free address; set aside"
        );
        self.set_aside.insert(vswitch.to_owned(), Instant::now() + cooldown);
    }

    /// The cloud shows free addresses on `vswitch` again (another node gave
    /// some back): use it before its cooldown is over.
    pub fn lift(&mut self, vswitch: &str, free: u64) {
        if self.set_aside.remove(vswitch).is_some() {
            tracing::info!(vswitch, free, "set-aside vSwitch has free addresses again; back in use");
        }
    }

    /// Whether it is time to ask the cloud about set-aside vSwitches again
    /// (only while some are set aside; at most every [`RECHECK_INTERVAL`]).
    pub fn recheck_due(&mut self) -> bool {
        let now = Instant::now();
        if !self.set_aside.values().any(|until| *until > now)
            || self.last_recheck.is_some_and(|t| now < t + RECHECK_INTERVAL)
        {
            return false;
        }
        self.last_recheck = Some(now);
        true
    }

    pub fn is_set_aside(&self, vswitch: &str) -> bool {
        self.set_aside.get(vswitch).is_some_and(|until| *until > Instant::now())
    }

    /// vSwitches set aside now, with the time left.
    pub fn set_aside_now(&self) -> Vec<(String, Duration)> {
        let now = Instant::now();
        let mut v: Vec<_> = self
            .set_aside
            .iter()
            .filter(|(_, u)| **u > now)
            .map(|(k, u)| (k.clone(), *u - now))
            .collect();
        v.sort();
        v
    }

    /// Candidates in the order to try. `available` is the cloud's free-address
    /// count per vSwitch (for `ordered`: most free first).
    pub fn candidates(
        &self,
        configured: &[String],
        policy: VSwitchSelectionPolicy,
        available: &HashMap<String, u64>,
    ) -> Vec<String> {
        let mut usable: Vec<String> = configured.iter().filter(|v| !self.is_set_aside(v)).cloned().collect();
        match policy {
            VSwitchSelectionPolicy::Ordered => {
                usable.sort_by_key(|v| std::cmp::Reverse(available.get(v).copied().unwrap_or(0)));
            }
            VSwitchSelectionPolicy::Random => {
                use rand::seq::SliceRandom;
                usable.shuffle(&mut rand::rng());
            }
        }
        usable.retain(|v| available.get(v).is_none_or(|n| *n > 0));
        usable
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordered_by_free_addresses_and_set_aside_skipped() {
        let mut s = VSwitchSelector::default();
        let configured = vec!["vsw-a".to_owned(), "vsw-b".to_owned(), "vsw-c".to_owned()];
        let free: HashMap<String, u64> = [("vsw-a".into(), 5), ("vsw-b".into(), 50), ("vsw-c".into(), 0)].into();
        assert_eq!(
            s.candidates(&configured, VSwitchSelectionPolicy::Ordered, &free),
            ["vsw-b", "vsw-a"]
        );
        s.set_aside("vsw-b", Duration::from_secs(60));
        assert_eq!(
            s.candidates(&configured, VSwitchSelectionPolicy::Ordered, &free),
            ["vsw-a"]
        );
        assert_eq!(s.set_aside_now().len(), 1);
        let random = s.candidates(&configured, VSwitchSelectionPolicy::Random, &free);
        assert_eq!(random, ["vsw-a"]);
        s.set_aside("vsw-a", Duration::ZERO);
        assert!(!s.is_set_aside("vsw-a"), "a zero cooldown is over at once");
    }
}
