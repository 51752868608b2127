//! Pool arithmetic, as pure functions: from what the pool holds and its
//! bounds, what to ask the cloud for and what to give back.

/// The pool's bounds and the instance's capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolBounds {
    pub min_idle: u32,
    pub max_idle: u32,
    /// `EniPrivateIpAddressQuantity`: addresses per ENI, its primary included.
    pub ips_per_eni: u32,
    /// Secondary ENIs allowed (quota − 1, with max_eni and the cap ratio applied).
    pub max_secondary_enis: u32,
    /// Most addresses one AssignPrivateIpAddresses call asks for.
    pub batch: u32,
}

/// Most secondary addresses CreateNetworkInterface takes at once
/// (`SecondaryPrivateIpAddressCount`, 1–49): a new ENI comes with all it
/// needs in one call, not topped up batch by batch.
pub const CREATE_MAX_SECONDARIES: u32 = 49;

/// How the pool's addresses stand now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PoolCounts {
    pub idle: u32,
    pub cooling: u32,
    pub bound: u32,
    /// ADD requests waiting for an address.
    pub waiting: u32,
}

/// One attached secondary ENI, as far as growing is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EniRoom {
    pub eni_id: String,
    /// Addresses on it now, its primary included.
    pub ips: u32,
    /// False when the ENI is draining or its vSwitch is set aside.
    pub can_grow: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PoolPlan {
    /// AssignPrivateIpAddresses calls: (ENI, count ≤ batch).
    pub assign: Vec<(String, u32)>,
    /// New ENIs to create, each with this many secondary addresses
    /// (its primary address is one more).
    pub new_enis: Vec<u32>,
    /// Idle addresses to give back.
    pub release: u32,
}

impl PoolPlan {
    pub fn is_empty(&self) -> bool {
        self.assign.is_empty() && self.new_enis.is_empty() && self.release == 0
    }

    /// Addresses the plan adds.
    pub fn added(&self) -> u32 {
        self.assign.iter().map(|(_, n)| n).sum::<u32>() + self.new_enis.iter().map(|n| n + 1).sum::<u32>()
    }
}

/// How many addresses the pool lacks: enough for waiting ADDs now and for
/// `min_idle` spare, never growing the spare past `max_idle`.
pub fn deficit(c: PoolCounts, b: PoolBounds) -> u32 {
    let spare = c.idle + c.cooling;
    let for_min = (b.min_idle + c.waiting).saturating_sub(spare);
    let for_waiting = c.waiting.saturating_sub(c.idle);
    let want = for_min.max(for_waiting);
    // growing never leaves more than max_idle spare once the waiting are served
    let ceiling = (b.max_idle.max(b.min_idle) + c.waiting).saturating_sub(spare);
    want.min(ceiling.max(for_waiting))
}

/// Idle addresses above `max_idle` to give back (none while ADDs wait).
pub fn surplus(c: PoolCounts, b: PoolBounds) -> u32 {
    if c.waiting > 0 {
        return 0;
    }
    c.idle.saturating_sub(b.max_idle.max(b.min_idle))
}

/// The whole plan: fill existing ENIs first (fullest first, so ENIs drain
/// evenly the other way), then create ENIs while the quota allows.
pub fn plan(c: PoolCounts, b: PoolBounds, enis: &[EniRoom]) -> PoolPlan {
    let mut out = PoolPlan {
        release: surplus(c, b),
        ..PoolPlan::default()
    };
    let mut need = deficit(c, b);
    let batch = b.batch.max(1);
    let mut growable: Vec<&EniRoom> = enis.iter().filter(|e| e.can_grow && e.ips < b.ips_per_eni).collect();
    growable.sort_by(|a, b| b.ips.cmp(&a.ips).then_with(|| a.eni_id.cmp(&b.eni_id)));
    for eni in growable {
        let mut room = b.ips_per_eni - eni.ips;
        while need > 0 && room > 0 {
            let n = need.min(room).min(batch);
            out.assign.push((eni.eni_id.clone(), n));
            need -= n;
            room -= n;
        }
    }
    let mut enis_now = enis.len() as u32;
    while need > 0 && enis_now < b.max_secondary_enis && b.ips_per_eni > 0 {
        // the new ENI's primary address is usable too
        let secondaries = (need - 1).min(b.ips_per_eni - 1).min(CREATE_MAX_SECONDARIES);
        out.new_enis.push(secondaries);
        need = need.saturating_sub(secondaries + 1);
        enis_now += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: PoolBounds = PoolBounds {
        min_idle: 10,
        max_idle: 25,
        ips_per_eni: 10,
        max_secondary_enis: 3,
        batch: 10,
    };

    fn eni(id: &str, ips: u32) -> EniRoom {
        EniRoom {
            eni_id: id.into(),
            ips,
            can_grow: true,
        }
    }

    #[test]
    fn warm_up_from_nothing_creates_enis() {
        let p = plan(PoolCounts::default(), B, &[]);
        // 10 wanted: one new ENI with its primary + 9 secondaries
        assert_eq!(p.new_enis, vec![9]);
        assert!(p.assign.is_empty());
        assert_eq!(p.added(), 10);
        assert_eq!(p.release, 0);
    }

    #[test]
    fn fills_existing_enis_in_batches_before_creating() {
        let c = PoolCounts {
            idle: 0,
            cooling: 0,
            bound: 4,
            waiting: 0,
        };
        let p = plan(c, B, &[eni("eni-a", 5), eni("eni-b", 2)]);
        // fullest first: a has room 5, b has room 8; 10 wanted
        assert_eq!(p.assign, vec![("eni-a".into(), 5), ("eni-b".into(), 5)]);
        assert!(p.new_enis.is_empty());

        let big = PoolBounds {
            ips_per_eni: 30,
            min_idle: 25,
            max_idle: 25,
            ..B
        };
        let p = plan(PoolCounts::default(), big, &[eni("eni-a", 1)]);
        assert_eq!(
            p.assign,
            vec![("eni-a".into(), 10), ("eni-a".into(), 10), ("eni-a".into(), 5)],
            "batches of at most 10"
        );
    }

    #[test]
    fn waiting_adds_count_and_cooling_counts_as_spare() {
        let c = PoolCounts {
            idle: 2,
            cooling: 8,
            bound: 0,
            waiting: 0,
        };
        assert_eq!(deficit(c, B), 0, "cooling addresses will be idle soon");
        let c = PoolCounts {
            idle: 0,
            cooling: 10,
            bound: 0,
            waiting: 3,
        };
        assert_eq!(deficit(c, B), 3, "waiting ADDs cannot use cooling addresses");
        let c = PoolCounts {
            idle: 1,
            cooling: 0,
            bound: 0,
            waiting: 5,
        };
        assert_eq!(deficit(c, B), 14, "min_idle spare on top of the waiting");
    }

    #[test]
    fn never_grows_past_max() {
        let b = PoolBounds {
            min_idle: 0,
            max_idle: 0,
            ..B
        };
        assert_eq!(deficit(PoolCounts::default(), b), 0, "pure on-demand pool stays empty");
        assert_eq!(
            deficit(
                PoolCounts {
                    waiting: 4,
                    ..Default::default()
                },
                b
            ),
            4
        );
        let c = PoolCounts {
            idle: 24,
            ..Default::default()
        };
        assert_eq!(deficit(c, B), 0);
    }

    #[test]
    fn releases_above_max_only_when_nobody_waits() {
        assert_eq!(
            surplus(
                PoolCounts {
                    idle: 30,
                    ..Default::default()
                },
                B
            ),
            5
        );
        assert_eq!(
            surplus(
                PoolCounts {
                    idle: 30,
                    waiting: 1,
                    ..Default::default()
                },
                B
            ),
            0
        );
        assert_eq!(
            surplus(
                PoolCounts {
                    idle: 25,
                    ..Default::default()
                },
                B
            ),
            0
        );
        assert_eq!(
            plan(
                PoolCounts {
                    idle: 31,
                    ..Default::default()
                },
                B,
                &[]
            )
            .release,
            6
        );
    }

    #[test]
    fn quota_bounds_new_enis() {
        let c = PoolCounts {
            waiting: 50,
            ..Default::default()
        };
        let p = plan(c, B, &[eni("eni-a", 10), eni("eni-b", 10)]);
        assert_eq!(p.new_enis.len(), 1, "three secondary ENIs at most, two exist");
        assert_eq!(p.added(), 10);
        let p = plan(c, B, &[eni("eni-a", 10), eni("eni-b", 10), eni("eni-c", 10)]);
        assert!(p.is_empty(), "full: nothing more to ask for");
    }

    #[test]
    fn set_aside_enis_are_not_grown() {
        let c = PoolCounts {
            waiting: 2,
            ..Default::default()
        };
        let p = plan(
            c,
            B,
            &[EniRoom {
                eni_id: "eni-a".into(),
                ips: 1,
                can_grow: false,
            }],
        );
        assert!(p.assign.is_empty());
        // 2 waiting + 10 spare = 12: a new ENI of 1 + 9, then one of 1 + 1
        assert_eq!(p.new_enis, vec![9, 1], "the rest comes from new ENIs");
    }
}
