//! Max pods per node, from the instance type's ENI quota (seed document):
//! shared ENI serves `(ENIs − 1) × IPs per ENI` pods, exclusive ENI `ENIs − 1`,
//! adjusted by `max_eni`, `eni_cap_ratio` and `eni_cap_shift` as upstream does.

use crate::{Config, DatapathMode};

/// The ENI quotas of an instance type (DescribeInstanceTypes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InstanceLimits {
    /// `EniQuantity`: ENIs including the primary.
    pub enis: u32,
    /// `EniPrivateIpAddressQuantity`: IPv4 addresses per ENI, its primary included.
    pub ipv4_per_eni: u32,
}

/// Secondary ENIs terway-rs may use: `int(enis × ratio) + shift − 1`, at least
/// 0, at most `max_eni` when that is set.
pub fn usable_secondary_enis(limits: InstanceLimits, eni_cap_ratio: f64, eni_cap_shift: i32, max_eni: u32) -> u32 {
    let scaled = (f64::from(limits.enis) * eni_cap_ratio).floor() as i64;
    let usable = (scaled + i64::from(eni_cap_shift) - 1).clamp(0, i64::from(u32::MAX)) as u32;
    if max_eni > 0 {
        usable.min(max_eni)
    } else {
        usable
    }
}

/// Pods one node can serve in shared-ENI mode (each secondary ENI's primary IP is usable).
pub fn max_pods_shared(limits: InstanceLimits, eni_cap_ratio: f64, eni_cap_shift: i32, max_eni: u32) -> u32 {
    usable_secondary_enis(limits, eni_cap_ratio, eni_cap_shift, max_eni).saturating_mul(limits.ipv4_per_eni)
}

/// Pods one node can serve in exclusive-ENI mode: one secondary ENI each.
pub fn max_pods_exclusive(limits: InstanceLimits, eni_cap_ratio: f64, eni_cap_shift: i32, max_eni: u32) -> u32 {
    usable_secondary_enis(limits, eni_cap_ratio, eni_cap_shift, max_eni)
}

impl Config {
    /// Secondary ENIs this configuration allows on an instance with `limits`.
    pub fn usable_secondary_enis(&self, limits: InstanceLimits) -> u32 {
        usable_secondary_enis(limits, self.eni_cap_ratio, self.eni_cap_shift, self.max_eni)
    }

    /// The pool's bounds as upstream computes them (`getPoolConfig`): the
    /// maximum capped by what the instance can hold; the minimum is
    /// `min_eni` ENIs' worth of addresses when `min_eni` is set (it replaces
    /// `min_pool_size`), never above the maximum.
    pub fn idle_bounds(&self, limits: InstanceLimits) -> (u32, u32) {
        let capacity = max_pods_shared(limits, self.eni_cap_ratio, self.eni_cap_shift, self.max_eni);
        let max_idle = self.max_pool_size.min(capacity);
        let min_idle = if self.min_eni > 0 {
            self.min_eni.saturating_mul(limits.ipv4_per_eni)
        } else {
            self.min_pool_size
        };
        (min_idle.min(max_idle), max_idle)
    }

    /// Max pods on an instance with `limits` in this configuration's datapath mode.
    pub fn max_pods(&self, limits: InstanceLimits) -> u32 {
        match self.datapath_mode {
            DatapathMode::ExclusiveEni => {
                max_pods_exclusive(limits, self.eni_cap_ratio, self.eni_cap_shift, self.max_eni)
            }
            DatapathMode::Veth | DatapathMode::Ipvlan => {
                max_pods_shared(limits, self.eni_cap_ratio, self.eni_cap_shift, self.max_eni)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // ecs.g6.2xlarge: 4 ENIs of 10 IPv4 addresses each.
    const G6_2XL: InstanceLimits = InstanceLimits {
        enis: 4,
        ipv4_per_eni: 10,
    };
    // ecs.g6.8xlarge: 8 ENIs of 20.
    const G6_8XL: InstanceLimits = InstanceLimits {
        enis: 8,
        ipv4_per_eni: 20,
    };

    #[test]
    fn seed_formulas() {
        assert_eq!(max_pods_shared(G6_2XL, 1.0, 0, 0), (4 - 1) * 10);
        assert_eq!(max_pods_exclusive(G6_2XL, 1.0, 0, 0), 4 - 1);
        assert_eq!(max_pods_shared(G6_8XL, 1.0, 0, 0), 7 * 20);
        assert_eq!(max_pods_exclusive(G6_8XL, 1.0, 0, 0), 7);
    }

    #[test]
    fn max_eni_caps() {
        assert_eq!(max_pods_shared(G6_8XL, 1.0, 0, 2), 2 * 20);
        assert_eq!(max_pods_exclusive(G6_8XL, 1.0, 0, 2), 2);
        // A cap above the quota changes nothing.
        assert_eq!(max_pods_exclusive(G6_2XL, 1.0, 0, 10), 3);
    }

    #[test]
    fn ratio_and_shift() {
        // int(8 × 0.5) + 0 − 1 = 3
        assert_eq!(usable_secondary_enis(G6_8XL, 0.5, 0, 0), 3);
        // int(8 × 0.5) + 2 − 1 = 5
        assert_eq!(usable_secondary_enis(G6_8XL, 0.5, 2, 0), 5);
        // never below zero
        assert_eq!(usable_secondary_enis(G6_2XL, 0.1, -3, 0), 0);
        assert_eq!(
            max_pods_shared(
                InstanceLimits {
                    enis: 1,
                    ipv4_per_eni: 10
                },
                1.0,
                0,
                0
            ),
            0
        );
    }

    #[test]
    fn idle_bounds_follow_upstream() {
        let mut cfg = Config::defaults();
        cfg.max_pool_size = 25;
        cfg.min_pool_size = 5;
        assert_eq!(cfg.idle_bounds(G6_2XL), (5, 25));
        // min_eni replaces min_pool_size (not the larger of the two), clamped to the max
        cfg.min_eni = 1;
        cfg.min_pool_size = 8;
        assert_eq!(cfg.idle_bounds(G6_2XL), (10, 25));
        cfg.min_eni = 3;
        assert_eq!(cfg.idle_bounds(G6_2XL), (25, 25));
        // the max is capped by what the instance holds: 3 ENIs × 10
        cfg.max_pool_size = 100;
        cfg.min_eni = 0;
        assert_eq!(cfg.idle_bounds(G6_2XL), (8, 30));
    }

    #[test]
    fn config_picks_the_mode() {
        let mut cfg = Config::defaults();
        assert_eq!(cfg.max_pods(G6_2XL), 30);
        cfg.datapath_mode = DatapathMode::ExclusiveEni;
        assert_eq!(cfg.max_pods(G6_2XL), 3);
    }
}
