//! Token Bucket Filter parameters as raw netlink attributes (rtnetlink has no
//! typed TBF): `TCA_TBF_PARMS`, `TCA_TBF_RATE64` and `TCA_TBF_BURST`.

use rtnetlink::packet_core::Nla;
use rtnetlink::packet_route::tc::TcOption;

const TCA_TBF_PARMS: u16 = 1;
const TCA_TBF_RATE64: u16 = 4;
const TCA_TBF_BURST: u16 = 6;
const TC_LINKLAYER_ETHERNET: u8 = 1;

/// Shaping of one direction, as upstream does it: burst = max(rate/1000,
/// MTU + 1500) bytes, queue = 25 ms of traffic plus the burst.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tbf {
    /// bytes per second
    pub rate: u64,
    /// bytes
    pub burst: u32,
    /// bytes the queue holds
    pub limit: u32,
}

const LATENCY_MS: u64 = 25;

impl Tbf {
    /// From a rate in bits per second (CNI `runtimeConfig.bandwidth`).
    pub fn from_bits_per_second(bits: u64, mtu: u32) -> Self {
        let rate = (bits / 8).max(1);
        let burst = (rate / 1000).max(u64::from(mtu) + 1500).min(u64::from(u32::MAX)) as u32;
        let limit = (rate * LATENCY_MS / 1000 + u64::from(burst)).min(u64::from(u32::MAX)) as u32;
        Self { rate, burst, limit }
    }

    /// The `TCA_OPTIONS` of the qdisc.
    pub fn options(&self) -> Vec<TcOption> {
        let mut parms = Vec::with_capacity(36);
        // struct tc_ratespec rate: cell_log, linklayer, overhead, cell_align, mpu, rate
        parms.push(0u8);
        parms.push(TC_LINKLAYER_ETHERNET);
        parms.extend_from_slice(&0u16.to_ne_bytes());
        parms.extend_from_slice(&0i16.to_ne_bytes());
        parms.extend_from_slice(&0u16.to_ne_bytes());
        parms.extend_from_slice(&(self.rate.min(u64::from(u32::MAX)) as u32).to_ne_bytes());
        // struct tc_ratespec peakrate: unused
        parms.extend_from_slice(&[0u8; 12]);
        // limit, buffer (computed by the kernel from TCA_TBF_BURST), mtu
        parms.extend_from_slice(&self.limit.to_ne_bytes());
        parms.extend_from_slice(&0u32.to_ne_bytes());
        parms.extend_from_slice(&0u32.to_ne_bytes());
        let mut opts = vec![crate::netlink::raw_option(TCA_TBF_PARMS, parms)];
        if self.rate >= u64::from(u32::MAX) {
            opts.push(crate::netlink::raw_option(
                TCA_TBF_RATE64,
                self.rate.to_ne_bytes().to_vec(),
            ));
        }
        opts.push(crate::netlink::raw_option(
            TCA_TBF_BURST,
            self.burst.to_ne_bytes().to_vec(),
        ));
        opts
    }
}

/// The rate (bytes/s) in a dumped TBF option: `TCA_TBF_PARMS` itself, or
/// (as dumps arrive) nested inside the whole `TCA_OPTIONS` blob.
pub(crate) fn rate_from_option(o: &TcOption) -> Option<u64> {
    let TcOption::Other(nla) = o else { return None };
    let mut buf = vec![0u8; nla.value_len()];
    nla.emit_value(&mut buf);
    if nla.kind() == TCA_TBF_PARMS {
        return rate_of_parms(&buf);
    }
    // walk nested attributes: u16 length (header included), u16 type, value, 4-byte aligned
    let mut at = 0;
    while at + 4 <= buf.len() {
        let len = usize::from(u16::from_ne_bytes([buf[at], buf[at + 1]]));
        let kind = u16::from_ne_bytes([buf[at + 2], buf[at + 3]]) & 0x3fff;
        if len < 4 || at + len > buf.len() {
            return None;
        }
        if kind == TCA_TBF_PARMS {
            return rate_of_parms(&buf[at + 4..at + len]);
        }
        at += (len + 3) & !3;
    }
    None
}

fn rate_of_parms(parms: &[u8]) -> Option<u64> {
    let rate = parms.get(8..12)?;
    Some(u64::from(u32::from_ne_bytes([rate[0], rate[1], rate[2], rate[3]])))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_follow_upstream() {
        let t = Tbf::from_bits_per_second(10_000_000, 1500);
        assert_eq!(t.rate, 1_250_000);
        assert_eq!(t.burst, 3000, "MTU + 1500 beats rate/1000 at 10 Mbit/s");
        assert_eq!(t.limit, 1_250_000 * 25 / 1000 + 3000);
        let fast = Tbf::from_bits_per_second(80_000_000_000, 1500);
        assert_eq!(fast.burst, 10_000_000, "rate/1000 at 80 Gbit/s");
    }

    #[test]
    fn encodes_parms_burst_and_rate64() {
        let opts = Tbf::from_bits_per_second(8_000_000, 1500).options();
        assert_eq!(opts.len(), 2);
        assert_eq!(rate_from_option(&opts[0]), Some(1_000_000));
        let TcOption::Other(parms) = &opts[0] else { panic!() };
        assert_eq!(parms.value_len(), 36);
        let TcOption::Other(burst) = &opts[1] else { panic!() };
        assert_eq!((burst.kind(), burst.value_len()), (TCA_TBF_BURST, 4));
        let big = Tbf::from_bits_per_second(100_000_000_000, 1500).options();
        assert_eq!(big.len(), 3, "rates past 4 GB/s need TCA_TBF_RATE64");
    }

    #[test]
    fn reads_the_rate_back_from_a_dump() {
        // TCA_OPTIONS as the kernel dumps a 50 Mbit/s TBF: one nested TCA_TBF_PARMS
        let mut nested = vec![40, 0, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 16, 94, 95, 0];
        nested.extend_from_slice(&[0; 16]);
        nested.extend_from_slice(&[196, 122, 2, 0, 9, 61, 0, 0, 0, 0, 0, 0]);
        let dumped = crate::netlink::raw_option(2, nested);
        assert_eq!(rate_from_option(&dumped), Some(6_250_000));
        assert_eq!(rate_from_option(&crate::netlink::raw_option(2, vec![1, 2])), None);
    }
}
