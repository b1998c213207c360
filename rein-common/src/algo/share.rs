//! How a limit is shared among the TCP flows under it, as the kernel computes it.
//!
//! A dropping bucket stalls TCP (a local drop at cgroup egress makes the socket wait for a
//! timer), so TCP flows are not policed: each one paces itself with `SO_MAX_PACING_RATE` at its
//! share of the limit, and sends at exactly that rate with no loss and no queue. The share is
//! the limit divided by the number of *active* flows, and a flow is active while it sends.
//!
//! Flows are counted per epoch of [`EPOCH_NS`]: a flow registers once in each epoch in which it
//! sends a real part of a share ([`register_threshold`]: a control connection or an interactive
//! session that sends a few hundred bytes does not halve a bulk flow's rate), and the active count is the larger of this epoch's and the previous one's
//! registrations. A flow that starts is counted at once; a flow that stops or closes stops
//! counting within two epochs. The whole count lives in one `u64`, so CPUs update it with a
//! single compare-and-swap.
//!
//! Other traffic of the cgroup (UDP, ICMP) draws from the same bucket but cannot be paced, so
//! the flows share only what it leaves: its bytes are counted per epoch in the same way, in
//! 1/1024ths of an epoch's budget ([`other_units`]), and [`tcp_rate`] takes them off the limit.

use crate::algo::bucket::MAX_CHARGED_BYTES;

/// Length of a counting epoch: a flow that sends at least once per epoch stays counted.
pub const EPOCH_NS: u64 = 50_000_000;

/// A flow's epoch before it has registered anywhere.
pub const NO_EPOCH: u32 = u32::MAX;

/// Epochs without a packet under a rule after which a flow's share no longer holds: the rule
/// was removed, or no longer covers the socket. Its cap is then lifted.
pub const STALE_EPOCHS: u32 = 10;

/// Most one epoch's count holds (flows, or units of other traffic); more count as this many.
pub const MAX_EPOCH_COUNT: u32 = 0xffff;

/// Fraction of its share, in parts per 1024, that a flow paces at. TCP's pacing is exact, so
/// pacing a hair under the share keeps the cgroup's bucket (which still backs the limit) from
/// ever running dry and dropping a paced packet.
pub const PACING_HEADROOM_PER_1024: u64 = 1019;

/// Pacing rate that means "no cap" to the kernel (`~0U`).
pub const UNCAPPED: u32 = u32::MAX;

/// The epoch that `now` (CLOCK_MONOTONIC ns) falls in. Wraps after 13 years of uptime, which
/// only matters for equality, and equality across a wrap needs a flow idle for exactly that long.
#[inline(always)]
pub const fn epoch_of(now: u64) -> u32 {
    (now / EPOCH_NS) as u32
}

/// A count per epoch (flows that registered, or units of other traffic) for the current and the
/// previous epoch: `epoch` in the low 32 bits, this epoch's count in the next 16, the previous
/// epoch's in the top 16. Counts saturate at [`MAX_EPOCH_COUNT`].
#[repr(transparent)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EpochCount(pub u64);

impl EpochCount {
    #[inline(always)]
    const fn epoch(self) -> u32 {
        self.0 as u32
    }

    #[inline(always)]
    const fn current(self) -> u32 {
        ((self.0 >> 32) & 0xffff) as u32
    }

    #[inline(always)]
    const fn previous(self) -> u32 {
        (self.0 >> 48) as u32
    }

    #[inline(always)]
    const fn pack(epoch: u32, current: u32, previous: u32) -> Self {
        Self(epoch as u64 | ((current as u64) << 32) | ((previous as u64) << 48))
    }

    /// The epoch a registration at `now` lands in. A packet stamped just before another CPU
    /// opened the next epoch belongs to that newer epoch: the count never steps back.
    #[inline(always)]
    const fn latest(self, now: u32) -> u32 {
        if self.epoch() == now.wrapping_add(1) {
            self.epoch()
        } else {
            now
        }
    }

    /// The count as seen from epoch `now`: this epoch's registrations, and the previous one's.
    #[inline(always)]
    const fn view(self, now: u32) -> (u32, u32) {
        let now = self.latest(now);
        if self.epoch() == now {
            (self.current(), self.previous())
        } else if self.epoch().wrapping_add(1) == now {
            (0, self.current())
        } else {
            (0, 0)
        }
    }

    /// The larger of this epoch's and the previous one's count, as seen from epoch `now`: for
    /// flows, how many are active.
    #[inline(always)]
    pub const fn peak(self, now: u32) -> u32 {
        let (current, previous) = self.view(now);
        if current > previous {
            current
        } else {
            previous
        }
    }

    /// How many flows are active at `elapsed_ns` into epoch `now`, under a limit of `rate`
    /// bytes/s: the larger of this epoch's and the previous one's count while the flows of the
    /// previous epoch may still be on their way to registering again (see [`departure_grace`]),
    /// then this epoch's alone. A flow that stopped thus stops counting within an epoch and a
    /// grace, not two epochs.
    #[inline(always)]
    pub const fn active(self, now: u32, elapsed_ns: u64, rate: u64) -> u32 {
        let (current, previous) = self.view(now);
        if current >= previous || elapsed_ns >= departure_grace(rate, previous) {
            current
        } else {
            previous
        }
    }

    /// The count after one registration is taken back, as seen from epoch `now`: from this
    /// epoch's count if `current`, from the previous one's if `previous`.
    #[inline(always)]
    pub const fn remove(self, now: u32, current: bool, previous: bool) -> Self {
        let (mut cur, mut prev) = self.view(now);
        if current && cur > 0 {
            cur -= 1;
        }
        if previous && prev > 0 {
            prev -= 1;
        }
        Self::pack(self.latest(now), cur, prev)
    }

    /// The count after `n` more are counted in epoch `now`.
    #[inline(always)]
    pub const fn add(self, now: u32, n: u32) -> Self {
        let (current, previous) = self.view(now);
        let room = MAX_EPOCH_COUNT - current;
        let current = current + if n < room { n } else { room };
        Self::pack(self.latest(now), current, previous)
    }
}

/// How long into an epoch a flow of the previous one still counts before it registers again:
/// half an epoch, or two segments' time at its share (`rate / previous` flows, 1500-byte
/// segments) if longer. A flow sends at least that often: bulk flows continuously, slow ones in
/// trains no longer apart than [`TRAIN_NS`] or, at the two-segment floor of their window, one
/// segment per segment time.
#[inline(always)]
pub const fn departure_grace(rate: u64, previous: u32) -> u64 {
    let half = EPOCH_NS / 2;
    if rate == 0 {
        return EPOCH_NS;
    }
    // previous <= 2^16: the product stays under 2^64.
    let segments = 2 * 1500 * 1_000_000_000 / rate * previous as u64;
    if segments > half { segments } else { half }
}

/// The largest packet (bytes) that counts nothing toward a flow's registration: a pure ACK
/// with the most TCP options (20 + 60 bytes over IPv4, 40 + 60 over IPv6). A connection that
/// only acknowledges in a direction (an upload's ACKs coming in, a download's going out) is not
/// a flow there: its ACKs alone would pass the threshold and halve the real flows' shares (an
/// upload beside a download in one cgroup got 48 of 100 Mbit/s).
pub const PURE_ACK_MAX_BYTES: u64 = 100;

/// Bytes a flow must send within an epoch to count as active: a quarter of what it would be
/// entitled to as one more flow, and never more than two full segments.
#[inline(always)]
pub const fn register_threshold(rate: u64, active: u32) -> u64 {
    let per_epoch = rate / (1_000_000_000 / EPOCH_NS);
    let entitled = per_epoch / (active as u64 + 1) / 4;
    if entitled < 3000 { entitled } else { 3000 }
}

/// Units of other traffic in one epoch's budget: [`other_units`] counts in 1/1024ths of it.
pub const UNITS_PER_EPOCH: u64 = 1024;

/// The part of `rate` TCP flows are never denied, however much other traffic the cgroup offers:
/// 1/16 (the bucket still holds the sum to the limit).
pub const MIN_TCP_PART: u64 = 16;

/// `bytes` of other traffic, in 1/1024ths of an epoch's budget at `rate` bytes/s, rounded up
/// or down at random (`dither`, uniform over `u32`), so that small packets at a high rate are
/// neither lost to rounding nor each counted as a whole unit: the expected count is exact.
#[inline(always)]
pub const fn other_units(rate: u64, bytes: u64, dither: u32) -> u32 {
    let per_epoch = rate / (1_000_000_000 / EPOCH_NS);
    let per_epoch = if per_epoch == 0 { 1 } else { per_epoch };
    let bytes = if bytes > MAX_CHARGED_BYTES {
        MAX_CHARGED_BYTES
    } else {
        bytes
    };
    // bytes < 2^21, so the scaled value stays under 2^47.
    let scaled = bytes * UNITS_PER_EPOCH * 65_536 / per_epoch;
    let units = (scaled + (dither & 0xffff) as u64) >> 16;
    if units > MAX_EPOCH_COUNT as u64 {
        MAX_EPOCH_COUNT
    } else {
        units as u32
    }
}

/// What of `rate` the TCP flows share when other traffic takes `other` units per epoch.
#[inline(always)]
pub const fn tcp_rate(rate: u64, other: u32) -> u64 {
    let floor = rate / MIN_TCP_PART;
    let other = other as u64;
    let taken = if other >= UNITS_PER_EPOCH {
        rate
    } else {
        // rate < 2^40 in practice; a larger one is capped so the product fits.
        let capped = if rate > 1 << 50 { 1 << 50 } else { rate };
        capped / UNITS_PER_EPOCH * other
    };
    let left = rate.saturating_sub(taken);
    if left > floor { left } else { floor }
}

/// Each active flow's share of `rate` bytes/s (IP bytes). A lone flow (or a count of zero, seen
/// before the first registration lands) gets the whole rate.
#[inline(always)]
pub const fn share(rate: u64, active: u32) -> u64 {
    if active <= 1 {
        rate
    } else {
        rate / active as u64
    }
}

/// The `SO_MAX_PACING_RATE` (payload bytes/s) that makes a flow put `share` IP bytes/s on the
/// wire. TCP paces its payload; each segment of `mss` payload bytes also carries IP and TCP
/// headers (with timestamps, as Linux sends by default). A share of 0 means "no rule": uncapped.
#[inline(always)]
pub const fn pacing_rate(share: u64, mss: u32, ipv6: bool) -> u32 {
    if share == 0 {
        return UNCAPPED;
    }
    let headers: u64 = if ipv6 { 40 + 32 } else { 20 + 32 };
    let mss = sane_mss(mss, headers);
    // share is at most 1.25e11 (1 tbit/s, < 2^37) and mss < 2^16: no product overflows.
    let share = if share > 1 << 40 { 1 << 40 } else { share };
    let payload = share * mss / (mss + headers);
    let paced = payload * PACING_HEADROOM_PER_1024 / 1024;
    if paced == 0 {
        1
    } else if paced >= UNCAPPED as u64 {
        // Faster than the kernel's u32 can say: 34 Gbit/s and up. Leave the flow uncapped;
        // the bucket still holds the limit.
        UNCAPPED
    } else {
        paced as u32
    }
}

/// How long the unsent data of a paced flow's socket may last at its share.
pub const NOTSENT_NS: u64 = 10_000_000;
/// The least unsent data a paced flow's socket keeps (an application writes in such chunks).
pub const MIN_NOTSENT_BYTES: u64 = 32 * 1024;

/// The `TCP_NOTSENT_LOWAT` (bytes) of a flow paced at `share` IP bytes/s: what the share sends
/// in [`NOTSENT_NS`], at least [`MIN_NOTSENT_BYTES`]; 0 (the system's default) without a share.
///
/// A paced flow's backlog waits in its socket, which grows its send buffer to megabytes: data
/// written there waits a quarter of a second at 50 Mbit/s before it leaves, a queue as long as
/// tbf's, only in the socket. Past this many unsent bytes the socket tells its writer to wait.
#[inline(always)]
pub const fn notsent_lowat(share: u64) -> u32 {
    if share == 0 {
        return 0;
    }
    let share = if share > 1 << 40 { 1 << 40 } else { share };
    let bytes = share / 1000 * (NOTSENT_NS / 1_000_000);
    let bytes = if bytes < MIN_NOTSENT_BYTES {
        MIN_NOTSENT_BYTES
    } else {
        bytes
    };
    if bytes > i32::MAX as u64 {
        i32::MAX as u32
    } else {
        bytes as u32
    }
}

/// An unknown mss (0) or a silly one: assume a 1500-byte MTU.
#[inline(always)]
const fn sane_mss(mss: u32, headers: u64) -> u64 {
    if mss < 64 || mss > 65_535 {
        1500 - headers
    } else {
        mss as u64
    }
}

/// `TCP_BPF_SNDCWND_CLAMP` value that lifts the clamp (the option takes a positive `int`).
pub const UNCLAMPED: u32 = i32::MAX as u32;

/// Longest a flow's segment train should last at its share.
pub const TRAIN_NS: u64 = EPOCH_NS / 4;

/// Segments in the largest train TCP sends at once: a 64 KiB GSO packet.
const FULL_TRAIN_SEGMENTS: u64 = 45;

/// The congestion window clamp (segments) that keeps a paced flow's segment trains short.
///
/// When its round trip is under 512 us, TCP's TSO autosizing adds a whole 64 KiB GSO packet to
/// each train whatever the pacing rate, and then waits 64 KiB / share before the next. At a small
/// share that wait spans whole epochs (0.84 s for 16 flows under 10 Mbit/s), so a flow goes
/// uncounted in most epochs, the others are given its part, and the limit is overrun. A train
/// holds at most a congestion window, so the window is clamped to what the share sends in
/// [`TRAIN_NS`], but never below four times the flow's bandwidth-delay product at that share
/// (`srtt_x8_us` is the kernel's smoothed RTT, in eighths of a microsecond), so the clamp never
/// limits the rate, and never below two segments. A clamp that would not shorten a full train
/// is not set.
#[inline(always)]
pub const fn cwnd_clamp(share: u64, srtt_x8_us: u32, mss: u32) -> u32 {
    if share == 0 {
        return UNCLAMPED;
    }
    let mss = sane_mss(mss, 0);
    // share < 2^40 and srtt < 2^29 us: products stay under 2^64.
    let share = if share > 1 << 40 { 1 << 40 } else { share };
    let train = share / (1_000_000_000 / TRAIN_NS) / mss;
    let srtt_us = (srtt_x8_us >> 3) as u64;
    let bdp = share / 1000 * srtt_us / 1000 / mss;
    let mut segments = if train > 2 { train } else { 2 };
    if 4 * bdp + 1 > segments {
        segments = 4 * bdp + 1;
    }
    if segments >= FULL_TRAIN_SEGMENTS {
        UNCLAMPED
    } else {
        segments as u32
    }
}

/// `TCP_WINDOW_CLAMP` value that lifts the receive window clamp: the largest window TCP can
/// advertise (65535 << 14).
pub const UNCLAMPED_WINDOW: u32 = 65_535 << 14;

/// How long a flow's receive window lasts at its ingress share.
///
/// A receiver cannot pace its sender, so a download is slowed by a queue (the rule's shaper)
/// and the window bounds what waits there: a flow has at most one window in flight, so the
/// queue holds at most a window per flow and delays a packet by at most about this long (a
/// segment's time at the share, when that is longer). The window must still cover the round
/// trip without the queue, or the flow falls short of its share: 100 us covers a round trip
/// between namespaces (20-90 us measured at 1 Gbit/s).
pub const RECEIVE_WINDOW_NS: u64 = 100_000;

/// How long a loaded receiver (2 cores, 16 flows) may take to answer a segment: see
/// [`receive_window`].
pub const RECEIVER_TURNAROUND_NS: u64 = 400_000;
/// The fewest segments a flow with a fast share keeps in flight: see [`receive_window`].
pub const FAST_SHARE_SEGMENTS: u64 = 3;

/// The receive window clamp (bytes) for a flow whose ingress share is `share` IP bytes/s: what
/// the share brings in [`RECEIVE_WINDOW_NS`], in whole segments of `mss` bytes (a part of a
/// segment would only make the sender split its segments), at least one segment, and at least
/// [`FAST_SHARE_SEGMENTS`] when the share brings a segment faster than a loaded receiver
/// answers one.
#[inline(always)]
pub const fn receive_window(share: u64, mss: u32) -> u32 {
    if share == 0 {
        return UNCLAMPED_WINDOW;
    }
    let mss = sane_mss(mss, 0);
    let share = if share > 1 << 40 { 1 << 40 } else { share };
    let bytes = share * RECEIVE_WINDOW_NS / 1_000_000_000;
    let mut segments = bytes.div_ceil(mss);
    if segments < 1 {
        segments = 1;
    }
    // A receiver under load (one process reading 16 sockets on 2 cores) takes up to
    // RECEIVER_TURNAROUND_NS to answer a segment with its ACK. A flow whose share brings a
    // segment sooner keeps FAST_SHARE_SEGMENTS in flight meanwhile: 16 downloads under
    // 1 Gbit/s came to 0.59 of the limit with one segment each, 0.948 with two, 0.966 with
    // three. A lone fast flow's window is larger anyway, so its queue stays as short.
    if share * RECEIVER_TURNAROUND_NS / 1_000_000_000 > mss && segments < FAST_SHARE_SEGMENTS {
        segments = FAST_SHARE_SEGMENTS;
    }
    let window = segments * mss;
    if window >= UNCLAMPED_WINDOW as u64 {
        UNCLAMPED_WINDOW
    } else {
        window as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi::cgroup::FlowState;

    #[test]
    fn a_new_flow_counts_at_once_and_a_stopped_one_within_two_epochs() {
        let count = EpochCount::default();
        let count = count.add(10, 1).add(10, 1);
        assert_eq!(count.peak(10), 2);
        // Epoch 11: only one of the two sends; the previous epoch still vouches for both.
        let count = count.add(11, 1);
        assert_eq!(count.peak(11), 2);
        // Epoch 12: the silent flow is gone.
        let count = count.add(12, 1);
        assert_eq!(count.peak(12), 1);
        // Nobody registers for two epochs: nobody is active.
        assert_eq!(count.peak(14), 0);
        assert_eq!(count.add(14, 1).peak(14), 1);
    }

    #[test]
    fn a_flow_of_the_previous_epoch_counts_until_the_grace_is_over() {
        // Two flows in epoch 10; in epoch 11 only one has registered again.
        let count = EpochCount::default().add(10, 1).add(10, 1).add(11, 1);
        let rate = 1_250_000; // 10 Mbit/s: two segments of a half share take 4.8 ms.
        assert_eq!(count.active(11, 0, rate), 2);
        assert_eq!(count.active(11, EPOCH_NS / 2 - 1, rate), 2);
        assert_eq!(count.active(11, EPOCH_NS / 2, rate), 1);
        // 64 flows under 10 Mbit/s: a segment each every 77 ms; the grace is two of them.
        assert_eq!(
            departure_grace(rate, 64),
            2 * 1500 * 1_000_000_000 / rate * 64
        );
        assert_eq!(departure_grace(rate, 1), EPOCH_NS / 2);
    }

    #[test]
    fn a_packet_stamped_before_the_epoch_turned_counts_in_the_new_epoch() {
        let count = EpochCount::default().add(4, 1).add(5, 1);
        // Epoch 5 was opened by another CPU; a packet stamped in epoch 4 sees epoch 5's count.
        assert_eq!(count.peak(4), 1);
        let count = count.add(4, 1);
        assert_eq!(count.peak(5), 2);
        assert_eq!(count.epoch(), 5);
    }

    #[test]
    fn a_finished_flow_is_taken_back_at_once() {
        let count = EpochCount::default()
            .add(10, 1)
            .add(10, 1)
            .add(11, 1)
            .add(11, 1);
        assert_eq!(count.peak(11), 2);
        // One of the two, registered in both epochs, sends its FIN.
        let count = count.remove(11, true, true);
        assert_eq!(count.peak(11), 1);
        // Seen from the next epoch, its registration in 11 is the previous one's.
        assert_eq!(count.remove(12, false, true).peak(12), 0);
        assert_eq!(EpochCount::default().remove(3, true, true).peak(3), 0);
    }

    #[test]
    fn the_count_saturates() {
        let mut count = EpochCount::default();
        for _ in 0..70_000 {
            count = count.add(3, 1);
        }
        assert_eq!(count.peak(3), MAX_EPOCH_COUNT);
    }

    #[test]
    fn pacing_turns_ip_bytes_into_payload_bytes_under_the_share() {
        // 10 Mbit/s of IP bytes; 1448 of every 1500 bytes is payload.
        let pacing = pacing_rate(1_250_000, 1448, false) as u64;
        let exact = 1_250_000 * 1448 / 1500;
        assert!(
            pacing < exact && pacing * 1024 >= exact * 1018,
            "{pacing} vs {exact}"
        );
        assert_eq!(pacing_rate(0, 1448, false), UNCAPPED);
        assert_eq!(pacing_rate(125_000_000_000, 1448, false), UNCAPPED);
        assert!(pacing_rate(1_250_000, 0, true) > 0);
    }

    #[test]
    fn a_share_lapses_when_no_rule_charged_the_flow_for_a_while() {
        let state = FlowState {
            share: 1000,
            epoch: 20,
            ..FlowState::NEW
        };
        assert_eq!(state.share_at(20), 1000);
        assert_eq!(state.share_at(20 + STALE_EPOCHS), 1000);
        assert_eq!(state.share_at(21 + STALE_EPOCHS), 0);
        assert_eq!(FlowState::NEW.share_at(5), 0);
    }

    #[test]
    fn small_senders_do_not_register() {
        // 20 Mbit/s: 125 kB an epoch; one more flow is entitled to 62.5 kB; two segments suffice.
        assert_eq!(register_threshold(2_500_000, 1), 3000);
        // 1 Mbit/s shared by 16: a flow gets 367 B an epoch; a quarter of it registers.
        assert_eq!(register_threshold(125_000, 16), 91);
    }

    #[test]
    fn the_window_clamp_shortens_trains_of_small_shares_only() {
        // 16 flows under 10 Mbit/s at a veth round trip (50 us): 12.5 ms of the share is 976 B.
        assert_eq!(cwnd_clamp(78_125, 50 << 3, 1448), 2);
        // 1 flow under 10 Mbit/s: 12.5 ms is 10 segments.
        assert_eq!(cwnd_clamp(1_250_000, 50 << 3, 1448), 10);
        // The same share across 200 ms needs 4 x 172 segments in flight: no clamp.
        assert_eq!(cwnd_clamp(1_250_000, 200_000 << 3, 1448), UNCLAMPED);
        // 16 flows under 10 Mbit/s across 20 ms: 4 x BDP (1.08 segments) + 1.
        assert_eq!(cwnd_clamp(78_125, 20_000 << 3, 1448), 5);
        // 1 Gbit/s: a full train lasts 0.5 ms; nothing to shorten.
        assert_eq!(cwnd_clamp(125_000_000, 20 << 3, 1448), UNCLAMPED);
        assert_eq!(cwnd_clamp(0, 50 << 3, 1448), UNCLAMPED);
        assert_eq!(cwnd_clamp(u64::MAX, u32::MAX, 0), UNCLAMPED);
    }

    #[test]
    fn the_receive_window_is_what_the_share_brings_in_100_us_in_whole_segments() {
        // 10 Mbit/s: 125 B in 100 us; one segment.
        assert_eq!(receive_window(1_250_000, 1448), 1448);
        // 1 Gbit/s: 12.5 kB, 9 segments.
        assert_eq!(receive_window(125_000_000, 1448), 9 * 1448);
        // 16 flows under 1 Gbit/s: 781 B, but a segment every 185 us: three segments.
        assert_eq!(receive_window(7_812_500, 1448), 3 * 1448);
        // 4 flows under 100 Mbit/s: a segment takes 463 us, longer than the turnaround.
        assert_eq!(receive_window(3_125_000, 1448), 1448);
        assert_eq!(receive_window(0, 1448), UNCLAMPED_WINDOW);
        // A share past 1 tbit/s is taken as 1 tbit/s: 76k segments, still below the lift.
        let huge = receive_window(u64::MAX, 1448);
        assert!(
            huge.is_multiple_of(1448) && huge < UNCLAMPED_WINDOW,
            "{huge}"
        );
        assert_eq!(receive_window(1, 0), 1500);
    }

    #[test]
    fn a_paced_socket_keeps_10_ms_of_its_share_unsent() {
        // 50 Mbit/s: 62.5 kB in 10 ms.
        assert_eq!(notsent_lowat(6_250_000), 62_500);
        assert_eq!(notsent_lowat(1_250_000), 32 * 1024);
        assert_eq!(notsent_lowat(0), 0);
        assert_eq!(notsent_lowat(u64::MAX), i32::MAX as u32);
    }

    #[test]
    fn other_traffic_is_counted_in_parts_of_the_budget() {
        // 20 Mbit/s: 125 kB an epoch, 122 B a unit.
        assert_eq!(other_units(2_500_000, 125_000, 0), 1024);
        assert_eq!(other_units(2_500_000, 500_000, u32::MAX), 4096);
        // A ping at 1 Gbit/s is 1/73 of a unit: counted as 1 once in about 73 times.
        let ping = (0..14_500u32)
            .map(|i| other_units(125_000_000, 84, i.wrapping_mul(2_654_435_761)))
            .sum::<u32>();
        assert!((150..=250).contains(&ping), "{ping}");
        assert_eq!(other_units(0, 1500, 0), MAX_EPOCH_COUNT);
    }

    #[test]
    fn tcp_shares_what_other_traffic_leaves() {
        assert_eq!(tcp_rate(1_024_000, 0), 1_024_000);
        assert_eq!(tcp_rate(1_024_000, 256), 768_000);
        // Other traffic at or over the limit: TCP keeps 1/16.
        assert_eq!(tcp_rate(1_024_000, 1024), 64_000);
        assert_eq!(tcp_rate(1_024_000, 5000), 64_000);
        assert!(tcp_rate(u64::MAX, 512) > 0);
    }

    #[test]
    fn share_divides_among_active_flows() {
        assert_eq!(share(1000, 0), 1000);
        assert_eq!(share(1000, 1), 1000);
        assert_eq!(share(1000, 4), 250);
    }
}
