//! Reference model of how TCP flows share a limit: the steps the kernel programs take for each
//! packet (rein-ebpf's `flow.rs`), on the same arithmetic (`rein_common::share`), driven by a
//! [`Clock`] so tests can play flows starting and stopping in exact time.
use rein::clock::Clock;
use rein_common::{
    EpochCount,
    share::{EPOCH_NS, epoch_of, other_units, register_threshold, share, tcp_rate},
};

/// One rule's flow count and the per-flow state the kernel keeps in socket storage.
#[derive(Debug, Clone)]
pub struct SharingModel {
    rate: u64,
    count: EpochCount,
    others: EpochCount,
    flows: Vec<FlowModel>,
}

#[derive(Debug, Clone, Copy, Default)]
struct FlowModel {
    epoch: Option<u32>,
    sent: u64,
    registered: bool,
    registered_before: bool,
    finished: bool,
    share: u64,
}

impl SharingModel {
    /// A rule of `rate` IP bytes/s with `flows` flows that have not sent yet.
    pub fn new(rate: u64, flows: usize) -> Self {
        Self {
            rate,
            count: EpochCount::default(),
            others: EpochCount::default(),
            flows: vec![FlowModel::default(); flows],
        }
    }

    /// Flow `flow` sends a packet of `bytes` now; returns the share (IP bytes/s) it is given.
    pub fn send(&mut self, flow: usize, bytes: u64, clock: &dyn Clock) -> u64 {
        let now = clock.now_ns();
        let epoch = epoch_of(now);
        let elapsed = now % EPOCH_NS;
        let state = &mut self.flows[flow];
        if state.epoch != Some(epoch) {
            let before = state.registered && state.epoch.map(|e| e + 1) == Some(epoch);
            *state = FlowModel {
                epoch: Some(epoch),
                registered_before: before,
                finished: state.finished,
                share: state.share,
                ..FlowModel::default()
            };
        }
        state.sent += bytes;
        if state.finished {
            return state.share;
        }
        let mut active = self.count.active(epoch, elapsed, self.rate);
        if !state.registered && state.sent >= register_threshold(self.rate, active) {
            self.count = self.count.add(epoch, 1);
            active = self.count.active(epoch, elapsed, self.rate);
            state.registered = true;
        }
        let others = self.others.peak(epoch);
        state.share = share(tcp_rate(self.rate, others), active);
        state.share
    }

    /// Flow `flow` sends its FIN now: it leaves the count at once and never registers again.
    pub fn close(&mut self, flow: usize, clock: &dyn Clock) {
        let epoch = epoch_of(clock.now_ns());
        self.send(flow, 0, clock);
        let state = &mut self.flows[flow];
        self.count = self
            .count
            .remove(epoch, state.registered, state.registered_before);
        state.registered = false;
        state.finished = true;
    }

    /// A packet of `bytes` that is not a TCP flow's (UDP, ICMP) passes now; `dither` stands in
    /// for the kernel's random number.
    pub fn send_other(&mut self, bytes: u64, dither: u32, clock: &dyn Clock) {
        let epoch = epoch_of(clock.now_ns());
        self.others = self
            .others
            .add(epoch, other_units(self.rate, bytes, dither));
    }

    /// The share flow `flow` was last given.
    pub fn share_of(&self, flow: usize) -> u64 {
        self.flows[flow].share
    }

    /// Flows the rule counts as active now.
    pub fn active(&self, clock: &dyn Clock) -> u32 {
        let now = clock.now_ns();
        self.count.active(epoch_of(now), now % EPOCH_NS, self.rate)
    }
}

/// The longest a stopped flow keeps its share from the others (at the rates of the tests,
/// where the grace is half an epoch).
pub const STOPPED_FLOW_GRACE_NS: u64 = EPOCH_NS + EPOCH_NS / 2;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::FakeClock;

    const RATE: u64 = 2_500_000; // 20 Mbit/s
    const MS: u64 = 1_000_000;

    /// Flows that send paced at their share, in trains of `train` bytes, from `start` to `stop`
    /// (ms); returns the bytes each flow sent in each 100 ms slot.
    fn simulate(flows: &[(u64, u64)], train: u64, total_ms: u64) -> Vec<Vec<u64>> {
        let clock = FakeClock::new(1_000 * EPOCH_NS + 3 * MS);
        let start_ns = clock.now_ns();
        let mut model = SharingModel::new(RATE, flows.len());
        let mut next_send = vec![0u64; flows.len()];
        let slots = (total_ms / 100) as usize;
        let mut sent = vec![vec![0u64; slots]; flows.len()];
        for tick in 0..total_ms * 10 {
            // 100 us steps.
            let elapsed = tick * MS / 10;
            for (flow, &(start, stop)) in flows.iter().enumerate() {
                let running = elapsed >= start * MS && elapsed < stop * MS;
                if running && next_send[flow] <= elapsed {
                    let share = model.send(flow, train, &clock);
                    sent[flow][(elapsed / (100 * MS)) as usize] += train;
                    next_send[flow] = elapsed.max(next_send[flow]) + train * 1_000_000_000 / share;
                }
            }
            clock.advance(MS / 10);
        }
        assert!(clock.now_ns() > start_ns);
        sent
    }

    fn rate_in(sent: &[u64], from_slot: usize, to_slot: usize) -> f64 {
        let bytes: u64 = sent[from_slot..to_slot].iter().sum();
        bytes as f64 / ((to_slot - from_slot) as f64 * 0.1) / RATE as f64
    }

    #[test]
    fn a_lone_flow_gets_the_whole_rate() {
        let sent = simulate(&[(0, 3000)], 3000, 3000);
        let rate = rate_in(&sent[0], 5, 30);
        assert!((0.98..=1.0).contains(&rate), "{rate}");
    }

    #[test]
    fn equal_flows_share_equally_and_never_beat_the_rate() {
        let flows = [(0, 3000); 4];
        let sent = simulate(&flows, 3000, 3000);
        let rates: Vec<f64> = sent.iter().map(|s| rate_in(s, 5, 30)).collect();
        let total: f64 = rates.iter().sum();
        assert!((0.97..=1.0).contains(&total), "{rates:?}");
        let jain = total * total / (rates.len() as f64 * rates.iter().map(|r| r * r).sum::<f64>());
        assert!(jain > 0.99, "{rates:?}");
        for slot in 5..30 {
            let in_slot: u64 = sent.iter().map(|s| s[slot]).sum();
            assert!(
                in_slot as f64 <= RATE as f64 * 0.1 + 4.0 * 3000.0,
                "slot {slot}"
            );
        }
    }

    #[test]
    fn a_flow_that_joins_takes_half_at_once_and_gives_it_back_when_it_stops() {
        // The first flow runs throughout; the second from 1 s to 2 s.
        let sent = simulate(&[(0, 3000), (1000, 2000)], 3000, 3000);
        let first_alone = rate_in(&sent[0], 5, 10);
        let first_shared = rate_in(&sent[0], 11, 20);
        let second = rate_in(&sent[1], 11, 20);
        let first_after = rate_in(&sent[0], 23, 30);
        assert!(first_alone > 0.97, "{first_alone}");
        assert!((0.47..=0.51).contains(&first_shared), "{first_shared}");
        assert!((0.47..=0.51).contains(&second), "{second}");
        assert!(first_after > 0.97, "{first_after}");
        // The whole hand-over, both ways, fits in the slot it happens in and the next.
        for slot in [10, 20, 21] {
            let total = sent[0][slot] + sent[1][slot];
            assert!(
                total as f64 <= RATE as f64 * 0.1 * 1.1,
                "slot {slot}: {total}"
            );
        }
    }

    #[test]
    fn a_stopped_flow_stops_counting_within_an_epoch_and_a_half() {
        let clock = FakeClock::new(50 * EPOCH_NS);
        let mut model = SharingModel::new(RATE, 2);
        model.send(0, 5000, &clock);
        model.send(1, 5000, &clock);
        assert_eq!(model.active(&clock), 2);
        // Flow 1 stops; flow 0 keeps sending.
        for _ in 0..20 {
            clock.advance(STOPPED_FLOW_GRACE_NS / 20);
            model.send(0, 5000, &clock);
        }
        assert_eq!(model.active(&clock), 1);
        assert_eq!(model.share_of(0), RATE);
    }

    #[test]
    fn flows_leave_room_for_other_traffic() {
        let clock = FakeClock::new(90 * EPOCH_NS);
        let mut model = SharingModel::new(RATE, 2);
        let mut dither = 0x1234_5678u32;
        let mut tcp = [0u64; 2];
        let mut next_send = [0u64; 2];
        // 3 s: other traffic at a quarter of the rate in 200-byte datagrams, two paced flows.
        let datagram_every = 200 * 1_000_000_000 / (RATE / 4);
        let mut next_datagram = 0;
        for tick in 0..30_000u64 {
            let now = tick * MS / 10;
            while next_datagram <= now {
                dither = dither.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                model.send_other(200, dither, &clock);
                next_datagram += datagram_every;
            }
            for flow in 0..2 {
                if next_send[flow] <= now {
                    let share = model.send(flow, 3000, &clock);
                    if now >= 500 * MS {
                        tcp[flow] += 3000;
                    }
                    next_send[flow] = now.max(next_send[flow]) + 3000 * 1_000_000_000 / share;
                }
            }
            clock.advance(MS / 10);
        }
        let rates: Vec<f64> = tcp.iter().map(|b| *b as f64 / 2.5 / RATE as f64).collect();
        let total: f64 = rates.iter().sum();
        assert!((0.72..=0.76).contains(&total), "{rates:?}");
        assert!((rates[0] - rates[1]).abs() < 0.01, "{rates:?}");
    }

    #[test]
    fn a_flow_that_closes_gives_its_share_back_at_once() {
        let clock = FakeClock::new(30 * EPOCH_NS + 50 * MS);
        let mut model = SharingModel::new(RATE, 2);
        for _ in 0..25 {
            model.send(0, 5000, &clock);
            model.send(1, 5000, &clock);
            clock.advance(10 * MS);
        }
        assert_eq!(model.active(&clock), 2);
        model.close(1, &clock);
        assert_eq!(model.active(&clock), 1);
        assert_eq!(model.send(0, 5000, &clock), RATE);
        // Its last packets (the FIN's ACK) do not count it again.
        clock.advance(EPOCH_NS);
        model.send(1, 5000, &clock);
        assert_eq!(model.active(&clock), 1);
    }

    #[test]
    fn a_control_connection_does_not_take_a_share() {
        let clock = FakeClock::new(7 * EPOCH_NS);
        let mut model = SharingModel::new(RATE, 2);
        // A bulk flow and a connection that sends a few hundred bytes an epoch.
        for _ in 0..30 {
            model.send(0, 1500, &clock);
            model.send(1, 20, &clock);
            clock.advance(10 * MS);
        }
        assert_eq!(model.active(&clock), 1);
        assert_eq!(model.share_of(0), RATE);
    }
}
