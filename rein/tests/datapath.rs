//! The kernel programs run through BPF_PROG_TEST_RUN on built packets and held to the Rust
//! reference model of the token bucket.
//!
//! BPF_PROG_TEST_RUN gives the test packet a socket in the cgroup of the calling task, so this
//! binary first moves itself into a throwaway cgroup (`/rein-testrun-PID/inner`) and back out at
//! the end. Each test loads its own copy of the programs with fresh, unpinned maps.
// Test code: a failed expectation is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    sync::{Arc, Barrier},
    thread,
    time::Duration,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{
        Array, HashMap, LpmTrie, MapData, PerCpuArray, PerCpuHashMap, PerCpuValues, RingBuf,
        lpm_trie::Key,
    },
    programs::{CgroupSkb, TestRun, TestRunOptions},
};
use libtest_mimic::{Arguments, Failed, Trial};
use rein::{
    capabilities::cgroup_limit,
    clock::MonotonicClock,
    limit::Limit,
    platform::{
        bpf,
        cgroupfs::{Cgroup, CgroupFs},
    },
};
use rein_common::{
    Action, COUNTERS_MAP, Counters, Direction, EGRESS_PROGRAM, GENERATION_MAP, INGRESS_PROGRAM,
    RULE_COUNTS_MAP, RULE_SHAPED_SUBNETS, RULE_UNSHAPED_SUBNETS, RULES_MAP, Rule, RuleKey,
    SUBNETS_MAP, SubnetKey,
    abi::trace::{
        EVENT_CGROUP_REFUSED, TRACE_BUDGET_MAP, TRACE_EVENTS_MAP, TRACE_FAMILY_IPV4, TRACE_MAP,
        TraceBudget, TraceControl, TraceEvent,
    },
    group_scope, netns_scope,
};
use rein_testkit::model::{TokenBucketModel, Xorshift};

/// The cgroups the test process runs in, and where it came from.
struct TestCgroups {
    home: Cgroup,
    parent: Cgroup,
    inner: Cgroup,
}

impl TestCgroups {
    fn enter() -> Self {
        let fs = CgroupFs::discover().expect("cgroup v2");
        let home = fs.of_pid(std::process::id()).expect("own cgroup");
        let parent = fs
            .root()
            .child(&format!("rein-testrun-{}", std::process::id()));
        let inner = parent.child("inner");
        parent.create().expect("create parent cgroup");
        inner.create().expect("create inner cgroup");
        let cgroups = Self {
            home,
            parent,
            inner,
        };
        cgroups
            .inner
            .add_process(std::process::id())
            .expect("enter the test cgroup");
        cgroups
    }
}

impl Drop for TestCgroups {
    fn drop(&mut self) {
        let _ = self.home.add_process(std::process::id());
        let _ = self.inner.remove();
        let _ = self.parent.remove();
    }
}

fn main() {
    let mut args = Arguments::from_args();
    // One test at a time: a test that nests deeper cgroups moves the whole process.
    args.test_threads = Some(1);
    let cgroups = Arc::new(TestCgroups::enter());
    let ids = Ids {
        parent: cgroups.parent.id().expect("parent id"),
        inner: cgroups.inner.id().expect("inner id"),
    };
    let tests: Vec<(&str, TestFn)> = vec![
        (
            "egress_matches_the_model_while_draining",
            egress_matches_the_model_while_draining,
        ),
        ("refill_matches_the_model", refill_matches_the_model),
        ("ingress_refuses_with_zero", ingress_refuses_with_zero),
        (
            "unlimited_cgroups_pass_untouched",
            unlimited_cgroups_pass_untouched,
        ),
        (
            "a_parent_rule_covers_its_children",
            a_parent_rule_covers_its_children,
        ),
        (
            "nested_rules_refund_the_parent",
            nested_rules_refund_the_parent,
        ),
        (
            "three_and_five_nested_rules_refund_the_rules_above",
            three_and_five_nested_rules_refund_the_rules_above,
        ),
        (
            "gso_packets_count_every_segment_header",
            gso_packets_count_every_segment_header,
        ),
        (
            "a_packet_larger_than_the_burst_passes_from_a_full_bucket",
            a_packet_larger_than_the_burst_passes_from_a_full_bucket,
        ),
        (
            "both_cores_at_once_never_overdraw",
            both_cores_at_once_never_overdraw,
        ),
        (
            "every_cpu_at_once_is_never_refused_by_a_bucket_with_room",
            every_cpu_at_once_is_never_refused_by_a_bucket_with_room,
        ),
        (
            "every_program_keeps_half_the_verifier_limit",
            every_program_keeps_half_the_verifier_limit,
        ),
        (
            "a_refusal_is_traced_only_while_a_trace_holds_the_lease",
            a_refusal_is_traced_only_while_a_trace_holds_the_lease,
        ),
        (
            "a_namespace_rule_matches_the_model_for_its_sockets_only",
            a_namespace_rule_matches_the_model_for_its_sockets_only,
        ),
        (
            "a_namespace_rule_below_a_cgroup_rule_refunds_it",
            a_namespace_rule_below_a_cgroup_rule_refunds_it,
        ),
        (
            "subnets_decide_which_peers_a_namespace_rule_charges",
            subnets_decide_which_peers_a_namespace_rule_charges,
        ),
        (
            "two_members_charge_one_bucket_as_the_model",
            two_members_charge_one_bucket_as_the_model,
        ),
        (
            "a_member_and_its_own_ancestor_rule_are_both_charged",
            a_member_and_its_own_ancestor_rule_are_both_charged,
        ),
        (
            "a_refusal_below_a_member_refunds_the_group",
            a_refusal_below_a_member_refunds_the_group,
        ),
    ];
    let mut trials: Vec<Trial> = tests
        .into_iter()
        .map(|(name, test)| Trial::test(name, move || test(ids)))
        .collect();
    // A measurement, not a check: run with `--ignored per_packet_cost --nocapture`.
    trials
        .push(Trial::test("per_packet_cost", move || per_packet_cost(ids)).with_ignored_flag(true));
    let conclusion = libtest_mimic::run(&args, trials);
    drop(cgroups);
    conclusion.exit();
}

type TestFn = fn(Ids) -> Result<(), Failed>;

#[derive(Clone, Copy)]
struct Ids {
    parent: u64,
    inner: u64,
}

/// A private copy of the programs and maps.
struct Loaded {
    ebpf: Ebpf,
}

impl Loaded {
    fn new() -> Self {
        let mut ebpf = EbpfLoader::new()
            .load(bpf::cgroup_object())
            .expect("load the object");
        cgroup_limit::datapath::load_programs(&mut ebpf).expect("verifier accepts the programs");
        Self { ebpf }
    }

    fn set_rule(&mut self, cgroup_id: u64, direction: Direction, limit: Limit) {
        let key = RuleKey::new(cgroup_id, direction);
        let bucket = limit.bucket(rein::clock::Clock::now_ns(&MonotonicClock));
        let rule = Rule::new(bucket, limit.rate.bytes_per_second(), Action::Drop);
        let mut rules: HashMap<_, RuleKey, Rule> =
            HashMap::try_from(self.ebpf.map_mut(RULES_MAP).unwrap()).unwrap();
        rules.insert(key, rule, 0).unwrap();
        let cpus = aya::util::nr_cpus().unwrap();
        let mut counters: PerCpuHashMap<_, RuleKey, Counters> =
            PerCpuHashMap::try_from(self.ebpf.map_mut(COUNTERS_MAP).unwrap()).unwrap();
        let zero = PerCpuValues::try_from(vec![Counters::default(); cpus]).unwrap();
        counters.insert(key, zero, 0).unwrap();
        let [rules, rule_counts] = self
            .ebpf
            .maps_disjoint_mut([RULES_MAP, RULE_COUNTS_MAP])
            .map(Option::unwrap);
        let rules: HashMap<_, RuleKey, Rule> = HashMap::try_from(rules).unwrap();
        let mut rule_counts: Array<_, u32> = Array::try_from(rule_counts).unwrap();
        cgroup_limit::datapath::sync_rule_counts(&rules, &mut rule_counts).unwrap();
        let mut generation: Array<_, u64> =
            Array::try_from(self.ebpf.map_mut(GENERATION_MAP).unwrap()).unwrap();
        cgroup_limit::datapath::bump_generation(&mut generation).unwrap();
    }

    /// Gives the rule of `scope` `flags`, and adds `subnets` (IPv4 address, prefix length).
    fn set_subnets(&mut self, scope: u64, flags: u32, subnets: &[([u8; 4], u32)]) {
        for direction in [Direction::Egress, Direction::Ingress] {
            let mut rules: HashMap<_, RuleKey, Rule> =
                HashMap::try_from(self.ebpf.map_mut(RULES_MAP).unwrap()).unwrap();
            let key = RuleKey::new(scope, direction);
            if let Ok(mut rule) = rules.get(&key, 0) {
                rule.flags = flags;
                rules.insert(key, rule, 0).unwrap();
            }
        }
        let mut map: LpmTrie<_, SubnetKey, u32> =
            LpmTrie::try_from(self.ebpf.map_mut(SUBNETS_MAP).unwrap()).unwrap();
        for (address, len) in subnets {
            let mapped = std::net::Ipv4Addr::from(*address).to_ipv6_mapped().octets();
            let key = Key::new(
                SubnetKey::SCOPE_BITS + 96 + len,
                SubnetKey::new(scope, mapped),
            );
            map.insert(&key, 1, 0).unwrap();
        }
    }

    /// Makes `scope` a member of the shared limit whose group scope is `group`.
    fn set_member(&mut self, scope: u64, group: u64, direction: Direction) {
        let mut rules: HashMap<_, RuleKey, Rule> =
            HashMap::try_from(self.ebpf.map_mut(RULES_MAP).unwrap()).unwrap();
        rules
            .insert(RuleKey::new(scope, direction), Rule::member(group), 0)
            .unwrap();
        let cpus = aya::util::nr_cpus().unwrap();
        let mut counters: PerCpuHashMap<_, RuleKey, Counters> =
            PerCpuHashMap::try_from(self.ebpf.map_mut(COUNTERS_MAP).unwrap()).unwrap();
        let zero = PerCpuValues::try_from(vec![Counters::default(); cpus]).unwrap();
        counters
            .insert(RuleKey::new(scope, direction), zero, 0)
            .unwrap();
        let mut generation: Array<_, u64> =
            Array::try_from(self.ebpf.map_mut(GENERATION_MAP).unwrap()).unwrap();
        cgroup_limit::datapath::bump_generation(&mut generation).unwrap();
    }

    fn rule(&self, cgroup_id: u64, direction: Direction) -> Rule {
        let rules: HashMap<_, RuleKey, Rule> =
            HashMap::try_from(self.ebpf.map(RULES_MAP).unwrap()).unwrap();
        rules.get(&RuleKey::new(cgroup_id, direction), 0).unwrap()
    }

    fn counters(&self, cgroup_id: u64, direction: Direction) -> Option<Counters> {
        let counters: PerCpuHashMap<_, RuleKey, Counters> =
            PerCpuHashMap::try_from(self.ebpf.map(COUNTERS_MAP).unwrap()).unwrap();
        counters
            .get(&RuleKey::new(cgroup_id, direction), 0)
            .ok()
            .map(|values| values.iter().fold(Counters::default(), |a, c| a.plus(*c)))
    }

    /// Writes the trace control: a lease until `until_ns`, `cap` events per second and CPU.
    fn set_trace(&mut self, until_ns: u64, cap: u32) {
        let mut control: Array<_, TraceControl> =
            Array::try_from(self.ebpf.map_mut(TRACE_MAP).unwrap()).unwrap();
        let value = TraceControl {
            until_ns,
            events_per_second: cap,
            pid: std::process::id(),
        };
        control.set(0, value, 0).unwrap();
    }

    /// Events skipped, summed over the CPUs.
    fn trace_skipped(&self) -> u64 {
        let budget: PerCpuArray<_, TraceBudget> =
            PerCpuArray::try_from(self.ebpf.map(TRACE_BUDGET_MAP).unwrap()).unwrap();
        budget.get(&0, 0).unwrap().iter().map(|b| b.skipped).sum()
    }

    fn program(&self, direction: Direction) -> &CgroupSkb {
        let name = match direction {
            Direction::Egress => EGRESS_PROGRAM,
            Direction::Ingress => INGRESS_PROGRAM,
        };
        self.ebpf.program(name).unwrap().try_into().unwrap()
    }

    /// Runs the program on `packet`; returns its verdict code.
    fn offer(&self, direction: Direction, packet: &Packet) -> u32 {
        self.offer_repeated(direction, packet, 1)
    }

    fn offer_repeated(&self, direction: Direction, packet: &Packet, repeat: u32) -> u32 {
        self.run_repeated(direction, packet, repeat).0
    }

    /// Runs the program `repeat` times on `packet`: its last verdict, and the kernel's average
    /// time of one run.
    fn run_repeated(&self, direction: Direction, packet: &Packet, repeat: u32) -> (u32, Duration) {
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(&packet.frame);
        opts.ctx_in = packet.context.as_ref().map(|c| c.as_slice());
        opts.repeat = repeat;
        let result = self
            .program(direction)
            .test_run(opts)
            .expect("BPF_PROG_TEST_RUN");
        (result.return_value, result.duration)
    }
}

/// An Ethernet frame carrying an IPv4 TCP packet of `ip_bytes`, and an optional __sk_buff
/// context (for GSO fields).
struct Packet {
    frame: Vec<u8>,
    context: Option<[u8; 192]>,
}

impl Packet {
    fn tcp(ip_bytes: usize) -> Self {
        assert!((40..=3000).contains(&ip_bytes));
        let mut frame = vec![0u8; 14 + ip_bytes];
        frame[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        let ip = &mut frame[14..];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&(ip_bytes as u16).to_be_bytes());
        ip[8] = 64;
        ip[9] = 6;
        ip[12..16].copy_from_slice(&[198, 18, 0, 1]);
        ip[16..20].copy_from_slice(&[198, 18, 0, 2]);
        // TCP data offset: 5 words.
        ip[20 + 12] = 5 << 4;
        Self {
            frame,
            context: None,
        }
    }

    /// The packet as a GSO packet of `segments` segments of `segment_size` payload bytes.
    fn with_gso(mut self, segments: u32, segment_size: u32) -> Self {
        let mut context = [0u8; 192];
        // struct __sk_buff: gso_segs at 164, gso_size at 176.
        context[164..168].copy_from_slice(&segments.to_ne_bytes());
        context[176..180].copy_from_slice(&segment_size.to_ne_bytes());
        self.context = Some(context);
        self
    }
}

impl Packet {
    /// To another destination.
    fn to(mut self, destination: [u8; 4]) -> Self {
        self.frame[30..34].copy_from_slice(&destination);
        self
    }

    /// With ports in its TCP header.
    fn with_ports(mut self, source: u16, destination: u16) -> Self {
        self.frame[34..36].copy_from_slice(&source.to_be_bytes());
        self.frame[36..38].copy_from_slice(&destination.to_be_bytes());
        self
    }
}

/// Every event waiting in the ring buffer.
fn drain(events: &mut RingBuf<MapData>) -> Vec<TraceEvent> {
    let mut drained = Vec::new();
    while let Some(item) = events.next() {
        assert_eq!(item.len(), std::mem::size_of::<TraceEvent>());
        // SAFETY: a whole TraceEvent of plain integers, read unaligned.
        drained.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) });
    }
    drained
}

const PASS: u32 = 1;
const EGRESS_REFUSED: u32 = 2;
const INGRESS_REFUSED: u32 = 0;

fn limit(rate: &str, burst: &str) -> Limit {
    Limit {
        rate: rate.parse().unwrap(),
        burst: burst.parse().unwrap(),
    }
}

fn ensure(condition: bool, message: impl FnOnce() -> String) -> Result<(), Failed> {
    if condition {
        Ok(())
    } else {
        Err(message().into())
    }
}

/// At 8 kbit/s the bucket refills one byte a millisecond: the few milliseconds a test takes
/// cannot move a verdict whose margin is tens of bytes, so kernel and model must agree exactly.
/// Sizes are multiples of 50 bytes to keep every margin that wide.
fn egress_matches_the_model_while_draining(ids: Ids) -> Result<(), Failed> {
    let mut loaded = Loaded::new();
    let limit = limit("8kbit", "20000");
    loaded.set_rule(ids.inner, Direction::Egress, limit);
    let mut model = TokenBucketModel::new(limit, &MonotonicClock);
    let mut random = Xorshift(0x2545_f491_4f6c_dd1d);
    let (mut passed, mut refused, mut passed_bytes) = (0u64, 0u64, 0u64);
    for i in 0..300 {
        let bytes = 50 * (1 + random.next_u64() % 30) as usize;
        let expected = model.offer(bytes as u64, &MonotonicClock);
        let verdict = loaded.offer(Direction::Egress, &Packet::tcp(bytes));
        let expected_code = if expected { PASS } else { EGRESS_REFUSED };
        ensure(verdict == expected_code, || {
            format!("packet {i} ({bytes} B): kernel {verdict}, model {expected_code}")
        })?;
        if expected {
            passed += 1;
            passed_bytes += bytes as u64;
        } else {
            refused += 1;
        }
    }
    ensure(passed > 10 && refused > 100, || {
        format!("{passed} passed, {refused} refused")
    })?;
    let counters = loaded.counters(ids.inner, Direction::Egress).unwrap();
    ensure(
        counters.passed_packets == passed
            && counters.passed_bytes == passed_bytes
            && counters.dropped_packets == refused,
        || {
            format!(
                "counters {counters:?}, expected {passed} passed ({passed_bytes} B), {refused} dropped"
            )
        },
    )
}

/// After draining, the bucket refills at the rate: at 80 kbit/s (10 bytes/ms), 300 ms bring
/// back about 3000 bytes. The model, on the same clock, says how many 500-byte packets pass.
fn refill_matches_the_model(ids: Ids) -> Result<(), Failed> {
    let mut loaded = Loaded::new();
    let limit = limit("80kbit", "10000");
    loaded.set_rule(ids.inner, Direction::Egress, limit);
    let mut model = TokenBucketModel::new(limit, &MonotonicClock);
    let packet = Packet::tcp(500);
    let mut offer = || {
        let expected = model.offer(500, &MonotonicClock);
        let verdict = loaded.offer(Direction::Egress, &packet) == PASS;
        (verdict, expected)
    };
    while offer().0 {}
    thread::sleep(Duration::from_millis(300));
    let mut refilled = 0;
    for _ in 0..20 {
        let (kernel, model) = offer();
        // Within a packet of the boundary the two clocks may disagree by microseconds.
        if kernel != model {
            return Err(format!("after refill: kernel {kernel}, model {model}").into());
        }
        refilled += u32::from(kernel);
    }
    ensure((5..=7).contains(&refilled), || {
        format!("{refilled} packets after 300 ms")
    })
}

fn ingress_refuses_with_zero(ids: Ids) -> Result<(), Failed> {
    let mut loaded = Loaded::new();
    loaded.set_rule(ids.inner, Direction::Ingress, limit("8kbit", "3000"));
    let packet = Packet::tcp(1000);
    let verdicts: Vec<u32> = (0..5)
        .map(|_| loaded.offer(Direction::Ingress, &packet))
        .collect();
    ensure(
        verdicts == [PASS, PASS, PASS, INGRESS_REFUSED, INGRESS_REFUSED],
        || format!("{verdicts:?}"),
    )?;
    // The egress direction of the same cgroup has no rule.
    ensure(loaded.offer(Direction::Egress, &packet) == PASS, || {
        "egress limited".into()
    })
}

fn unlimited_cgroups_pass_untouched(ids: Ids) -> Result<(), Failed> {
    let mut loaded = Loaded::new();
    // A rule on some other cgroup must not apply.
    loaded.set_rule(
        ids.inner + 1_000_000,
        Direction::Egress,
        limit("8kbit", "1500"),
    );
    for _ in 0..50 {
        ensure(
            loaded.offer(Direction::Egress, &Packet::tcp(1500)) == PASS,
            || "an unlimited cgroup was limited".into(),
        )?;
    }
    ensure(
        loaded.counters(ids.inner, Direction::Egress).is_none(),
        || "counters appeared for a cgroup without a rule".into(),
    )
}

fn a_parent_rule_covers_its_children(ids: Ids) -> Result<(), Failed> {
    let mut loaded = Loaded::new();
    loaded.set_rule(ids.parent, Direction::Egress, limit("8kbit", "5000"));
    let packet = Packet::tcp(1000);
    let passed = (0..10)
        .filter(|_| loaded.offer(Direction::Egress, &packet) == PASS)
        .count();
    ensure(passed == 5, || {
        format!("{passed} of 10 passed a 5000-byte burst")
    })?;
    let counters = loaded.counters(ids.parent, Direction::Egress).unwrap();
    ensure(
        counters.passed_packets == 5 && counters.dropped_packets == 5,
        || format!("{counters:?}"),
    )
}

/// Parent and child both limited: the tighter bucket decides, and when the child refuses,
/// what the parent was charged for that packet is given back.
fn nested_rules_refund_the_parent(ids: Ids) -> Result<(), Failed> {
    let mut loaded = Loaded::new();
    loaded.set_rule(ids.parent, Direction::Egress, limit("8kbit", "20000"));
    loaded.set_rule(ids.inner, Direction::Egress, limit("8kbit", "3000"));
    let parent_before = loaded.rule(ids.parent, Direction::Egress).bucket;
    let packet = Packet::tcp(1000);
    let passed = (0..10)
        .filter(|_| loaded.offer(Direction::Egress, &packet) == PASS)
        .count();
    ensure(passed == 3, || {
        format!("{passed} passed the child's 3000-byte burst")
    })?;
    let parent_after = loaded.rule(ids.parent, Direction::Egress).bucket;
    // 3 packets of 1000 bytes at 1 ms a byte: the parent's clock moved 3 s, not 10.
    let charged_ns = charged_ns(parent_before.tat, parent_after.tat);
    ensure(
        (2_900_000_000..=3_100_000_000).contains(&charged_ns),
        || format!("parent charged {charged_ns} ns for 3 passed packets"),
    )?;
    let parent = loaded.counters(ids.parent, Direction::Egress).unwrap();
    let child = loaded.counters(ids.inner, Direction::Egress).unwrap();
    ensure(
        parent.passed_packets == 3 && parent.dropped_packets == 0 && child.dropped_packets == 7,
        || format!("parent {parent:?}, child {child:?}"),
    )
}

/// What a bucket was charged between two reads of its clock (`tat`), in ns. A clock behind
/// now is credit, not charge: only its last 10 s count, the most the tests' 10 packets of 1000
/// bytes at 1 ms a byte can charge.
fn charged_ns(before: u64, after: u64) -> u64 {
    after - before.max(after - 10_000_000_000)
}

/// Deeper nests: three rules (the levels below the test's cgroup, charged in line) and five
/// (every level, more than the programs charge in line: through their loop). The deepest
/// refuses past its burst; every rule above is charged for the passed packets only.
fn three_and_five_nested_rules_refund_the_rules_above(ids: Ids) -> Result<(), Failed> {
    let deeper = Deeper::enter(3);
    let below: Vec<u64> = deeper.chain.iter().map(|c| c.id().unwrap()).collect();
    let five = [&[ids.parent, ids.inner][..], &below].concat();
    for cgroups in [&below[..], &five[..]] {
        let mut loaded = Loaded::new();
        let (deepest, above) = cgroups.split_last().unwrap();
        for &cgroup in above {
            loaded.set_rule(cgroup, Direction::Egress, limit("8kbit", "20000"));
        }
        loaded.set_rule(*deepest, Direction::Egress, limit("8kbit", "3000"));
        let before: Vec<u64> = above
            .iter()
            .map(|&c| loaded.rule(c, Direction::Egress).bucket.tat)
            .collect();
        let packet = Packet::tcp(1000);
        let passed = (0..10)
            .filter(|_| loaded.offer(Direction::Egress, &packet) == PASS)
            .count();
        let n = cgroups.len();
        ensure(passed == 3, || {
            format!("{n} rules: {passed} passed the deepest's 3000-byte burst")
        })?;
        for (&cgroup, before) in above.iter().zip(before) {
            let after = loaded.rule(cgroup, Direction::Egress).bucket.tat;
            // 3 packets of 1000 bytes at 1 ms a byte: 3 s, not 10.
            let charged_ns = charged_ns(before, after);
            ensure(
                (2_900_000_000..=3_100_000_000).contains(&charged_ns),
                || format!("{n} rules: cgroup {cgroup} charged {charged_ns} ns for 3 packets"),
            )?;
            let counters = loaded.counters(cgroup, Direction::Egress).unwrap();
            ensure(
                counters.passed_packets == 3 && counters.dropped_packets == 0,
                || format!("{n} rules: cgroup {cgroup} counted {counters:?}"),
            )?;
        }
        let counters = loaded.counters(*deepest, Direction::Egress).unwrap();
        ensure(
            counters.passed_packets == 3 && counters.dropped_packets == 7,
            || format!("{n} rules: the deepest counted {counters:?}"),
        )?;
    }
    Ok(())
}

/// A GSO packet of 10 segments carries 10 IP+TCP headers on the wire, not one.
fn gso_packets_count_every_segment_header(ids: Ids) -> Result<(), Failed> {
    let mut loaded = Loaded::new();
    loaded.set_rule(ids.inner, Direction::Egress, limit("1gbit", "1m"));
    let packet = Packet::tcp(2040).with_gso(10, 200);
    ensure(loaded.offer(Direction::Egress, &packet) == PASS, || {
        "refused".into()
    })?;
    let counters = loaded.counters(ids.inner, Direction::Egress).unwrap();
    ensure(counters.passed_bytes == 2040 + 9 * 40, || {
        format!(
            "{} bytes charged, expected {}",
            counters.passed_bytes,
            2040 + 9 * 40
        )
    })
}

fn a_packet_larger_than_the_burst_passes_from_a_full_bucket(ids: Ids) -> Result<(), Failed> {
    let mut loaded = Loaded::new();
    loaded.set_rule(ids.inner, Direction::Egress, limit("8kbit", "1500"));
    let big = Packet::tcp(3000);
    ensure(loaded.offer(Direction::Egress, &big) == PASS, || {
        "a full bucket refused a packet larger than its burst".into()
    })?;
    // The bucket is now 1500 bytes in debt: even a small packet waits.
    ensure(
        loaded.offer(Direction::Egress, &Packet::tcp(100)) == EGRESS_REFUSED,
        || "the debt was not kept".into(),
    )
}

/// A refused packet becomes an event only while the trace control holds a live lease: not with
/// none, not with one that ran out (a trace that died without clearing it); and past the
/// per-CPU budget, events are counted as skipped, not sent.
fn a_refusal_is_traced_only_while_a_trace_holds_the_lease(ids: Ids) -> Result<(), Failed> {
    let mut loaded = Loaded::new();
    loaded.set_rule(ids.inner, Direction::Egress, limit("8kbit", "1500"));
    let mut events = RingBuf::try_from(loaded.ebpf.take_map(TRACE_EVENTS_MAP).unwrap()).unwrap();
    let packet = Packet::tcp(1000).with_ports(40000, 5201);
    // The first packet empties the bucket; at a byte a millisecond, the next ones are refused.
    loaded.offer(Direction::Egress, &packet);
    let refuse = |loaded: &Loaded| {
        let verdict = loaded.offer(Direction::Egress, &packet);
        ensure(verdict == EGRESS_REFUSED, || format!("verdict {verdict}"))
    };
    refuse(&loaded)?;
    ensure(drain(&mut events).is_empty(), || {
        "an event without a trace".into()
    })?;

    let now = rein::clock::Clock::now_ns(&MonotonicClock);
    loaded.set_trace(now + 10_000_000_000, 1000);
    refuse(&loaded)?;
    let traced = drain(&mut events);
    ensure(traced.len() == 1, || format!("{} events", traced.len()))?;
    let event = traced[0];
    ensure(
        event.kind == EVENT_CGROUP_REFUSED
            && event.cgroup_id == ids.inner
            && event.hook == Direction::Egress as u8
            && event.value == 1000
            && event.family == TRACE_FAMILY_IPV4
            && event.protocol == 6
            && event.source[..4] == [198, 18, 0, 1]
            && event.destination[..4] == [198, 18, 0, 2]
            && event.source_port == 40000
            && event.destination_port == 5201
            && event.time_ns >= now,
        || format!("{event:?}"),
    )?;

    loaded.set_trace(now - 1, 1000);
    refuse(&loaded)?;
    ensure(drain(&mut events).is_empty(), || {
        "an event after the lease ran out".into()
    })?;

    // A budget of 2 a second: of 6 refusals, most are skipped (2 more may pass if a second
    // begins halfway), and every one is either sent or counted.
    loaded.set_trace(
        rein::clock::Clock::now_ns(&MonotonicClock) + 10_000_000_000,
        2,
    );
    let skipped_before = loaded.trace_skipped();
    for _ in 0..6 {
        refuse(&loaded)?;
    }
    let sent = drain(&mut events).len() as u64;
    let skipped = loaded.trace_skipped() - skipped_before;
    ensure(sent + skipped == 6 && sent <= 4 && skipped >= 2, || {
        format!("{sent} sent, {skipped} skipped")
    })
}

/// Both CPUs hammer one bucket with 5000 packets each. Exactly the burst's worth may pass: a
/// lost update between the CPUs would let more through.
fn both_cores_at_once_never_overdraw(ids: Ids) -> Result<(), Failed> {
    let mut loaded = Loaded::new();
    loaded.set_rule(ids.inner, Direction::Egress, limit("8kbit", "100000"));
    let loaded = Arc::new(loaded);
    let cpus = thread::available_parallelism()
        .map_or(2, |n| n.get())
        .max(2);
    let start = Arc::new(Barrier::new(cpus));
    let workers: Vec<_> = (0..cpus)
        .map(|_| {
            let loaded = Arc::clone(&loaded);
            let start = Arc::clone(&start);
            thread::spawn(move || {
                let packet = Packet::tcp(100);
                start.wait();
                loaded.offer_repeated(Direction::Egress, &packet, 5000);
            })
        })
        .collect();
    for worker in workers {
        worker.join().map_err(|_| Failed::from("worker panicked"))?;
    }
    let counters = loaded.counters(ids.inner, Direction::Egress).unwrap();
    let offered = 5000 * cpus as u64;
    // 100000 bytes of burst is 1000 packets; the run takes milliseconds, refilling a few bytes.
    ensure(
        (1000..=1002).contains(&counters.passed_packets)
            && counters.passed_packets + counters.dropped_packets == offered,
        || format!("{counters:?} for {offered} offered"),
    )
}

/// Fault 7: contention alone must never refuse a packet. One thread pinned to each CPU runs
/// the egress program into one bucket that has room for every packet: a packet whose
/// compare-and-swap kept losing to the other CPUs was refused.
fn every_cpu_at_once_is_never_refused_by_a_bucket_with_room(ids: Ids) -> Result<(), Failed> {
    let mut loaded = Loaded::new();
    // 1 GB of burst; 200k packets of 100 bytes per CPU is a fraction of it.
    loaded.set_rule(ids.inner, Direction::Egress, limit("1tbit", "1g"));
    let loaded = Arc::new(loaded);
    let cpus = aya::util::online_cpus().map_err(|(_, e)| Failed::from(e.to_string()))?;
    let start = Arc::new(Barrier::new(cpus.len()));
    let workers: Vec<_> = cpus
        .iter()
        .map(|&cpu| {
            let loaded = Arc::clone(&loaded);
            let start = Arc::clone(&start);
            thread::spawn(move || -> Result<(), String> {
                pin_to(cpu)?;
                let packet = Packet::tcp(100);
                start.wait();
                for _ in 0..20 {
                    loaded.offer_repeated(Direction::Egress, &packet, 10_000);
                }
                Ok(())
            })
        })
        .collect();
    for worker in workers {
        worker
            .join()
            .map_err(|_| Failed::from("worker panicked"))??;
    }
    let counters = loaded.counters(ids.inner, Direction::Egress).unwrap();
    let offered = 200_000 * cpus.len() as u64;
    ensure(
        counters.dropped_packets == 0 && counters.passed_packets == offered,
        || format!("{counters:?} for {offered} offered"),
    )
}

/// Pins the calling thread to `cpu`.
fn pin_to(cpu: u32) -> Result<(), String> {
    // SAFETY: a zeroed cpu_set_t is the empty set; CPU_SET and sched_setaffinity get a valid
    // set of the size given, for the calling thread (pid 0).
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu as usize, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) != 0 {
            return Err(format!(
                "sched_setaffinity to CPU {cpu}: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    Ok(())
}

/// Runs `f` on a thread of its own in a new network namespace, which goes with the thread;
/// `f` gets the namespace's cookie. BPF_PROG_TEST_RUN gives the test packet a socket in the
/// namespace of the calling thread.
fn in_new_netns<T: Send>(f: impl FnOnce(u64) -> T + Send) -> T {
    thread::scope(|scope| {
        scope
            .spawn(|| {
                // SAFETY: a plain syscall; it moves only this thread, which ends with `f`.
                assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0, "unshare");
                f(rein::platform::netns::cookie().expect("cookie"))
            })
            .join()
            .expect("the namespace thread")
    })
}

/// A namespace's rule holds the packets of its sockets to the model, as a cgroup's does, and
/// never touches the packets of another namespace.
fn a_namespace_rule_matches_the_model_for_its_sockets_only(_ids: Ids) -> Result<(), Failed> {
    let mut loaded = Loaded::new();
    let limit = limit("8kbit", "20000");
    let (passed, refused) = in_new_netns(|cookie| -> Result<(u64, u64), Failed> {
        loaded.set_rule(netns_scope(cookie), Direction::Egress, limit);
        let mut model = TokenBucketModel::new(limit, &MonotonicClock);
        let mut random = Xorshift(0x9e37_79b9_7f4a_7c15);
        let (mut passed, mut refused) = (0u64, 0u64);
        for i in 0..200 {
            let bytes = 50 * (1 + random.next_u64() % 30) as usize;
            let expected = model.offer(bytes as u64, &MonotonicClock);
            let verdict = loaded.offer(Direction::Egress, &Packet::tcp(bytes));
            let expected_code = if expected { PASS } else { EGRESS_REFUSED };
            ensure(verdict == expected_code, || {
                format!("packet {i} ({bytes} B): kernel {verdict}, model {expected_code}")
            })?;
            if expected {
                passed += 1;
            } else {
                refused += 1;
            }
        }
        let counters = loaded
            .counters(netns_scope(cookie), Direction::Egress)
            .unwrap();
        ensure(
            counters.passed_packets == passed && counters.dropped_packets == refused,
            || format!("counters {counters:?}, expected {passed} passed, {refused} dropped"),
        )?;
        Ok((passed, refused))
    })?;
    ensure(passed > 10 && refused > 50, || {
        format!("{passed} passed, {refused} refused")
    })?;
    // This thread's namespace (the test's own) has no rule: its packets pass, uncounted.
    for _ in 0..20 {
        ensure(
            loaded.offer(Direction::Egress, &Packet::tcp(1500)) == PASS,
            || "a packet of another namespace was refused".into(),
        )?;
    }
    Ok(())
}

/// A socket under both its cgroup's rule and its namespace's: the tighter decides, and a
/// refusal by the namespace's gives back what the cgroup's was charged.
fn a_namespace_rule_below_a_cgroup_rule_refunds_it(ids: Ids) -> Result<(), Failed> {
    let mut loaded = Loaded::new();
    loaded.set_rule(ids.inner, Direction::Egress, limit("8kbit", "20000"));
    let passed = in_new_netns(|cookie| {
        loaded.set_rule(
            netns_scope(cookie),
            Direction::Egress,
            limit("8kbit", "5000"),
        );
        (0..10)
            .filter(|_| loaded.offer(Direction::Egress, &Packet::tcp(1000)) == PASS)
            .count()
    });
    ensure(passed == 5, || {
        format!("{passed} of 10 passed a 5000-byte namespace burst")
    })?;
    let cgroup = loaded.counters(ids.inner, Direction::Egress).unwrap();
    ensure(
        cgroup.passed_packets == 5 && cgroup.dropped_packets == 0,
        || format!("the cgroup's counters {cgroup:?}: charged for refused packets"),
    )?;
    // 5000 of its 20000 bytes: its bucket was refunded what the namespace refused.
    let tat = loaded.rule(ids.inner, Direction::Egress).bucket.tat;
    let now = rein::clock::Clock::now_ns(&MonotonicClock);
    let debt_bytes = tat.saturating_sub(now) / 1_000_000;
    ensure(debt_bytes < 5_100, || {
        format!("the cgroup's bucket holds {debt_bytes} bytes of debt, not 5000")
    })
}

/// Unshaped subnets pass without a charge; with shaped subnets only their peers are charged.
fn subnets_decide_which_peers_a_namespace_rule_charges(_ids: Ids) -> Result<(), Failed> {
    for (flags, name) in [
        (RULE_UNSHAPED_SUBNETS, "unshaped"),
        (RULE_SHAPED_SUBNETS, "shaped"),
    ] {
        let mut loaded = Loaded::new();
        let (listed, other) = in_new_netns(|cookie| {
            let scope = netns_scope(cookie);
            for direction in [Direction::Egress, Direction::Ingress] {
                loaded.set_rule(scope, direction, limit("8kbit", "5000"));
            }
            loaded.set_subnets(
                scope,
                flags,
                &[([198, 18, 0, 2], 32), ([198, 19, 0, 0], 16)],
            );
            let count = |loaded: &Loaded, direction, packet: &Packet| {
                (0..10)
                    .filter(|_| loaded.offer(direction, packet) == PASS)
                    .count()
            };
            // Egress looks at the destination, ingress at the source.
            let listed = [
                count(&loaded, Direction::Egress, &Packet::tcp(1000)),
                count(
                    &loaded,
                    Direction::Egress,
                    &Packet::tcp(1000).to([198, 19, 7, 7]),
                ),
            ];
            let mut from_other = Packet::tcp(1000);
            from_other.frame[26..30].copy_from_slice(&[198, 18, 0, 9]);
            let other = [
                count(
                    &loaded,
                    Direction::Egress,
                    &Packet::tcp(1000).to([198, 18, 0, 3]),
                ),
                count(&loaded, Direction::Ingress, &from_other),
            ];
            (listed, other)
        });
        let (charged, free) = if flags == RULE_UNSHAPED_SUBNETS {
            (other, listed)
        } else {
            (listed, other)
        };
        // A fresh 5000-byte bucket per direction: the first charged peer at egress gets 5 of
        // its 10 packets through, and every later one at egress none.
        ensure(free == [10, 10], || {
            format!("{name}: peers the rule must not charge passed {free:?} of 10")
        })?;
        ensure(charged[0] == 5 && charged[1] <= 5, || {
            format!("{name}: peers the rule charges passed {charged:?} of 10")
        })?;
    }
    Ok(())
}

/// Two namespaces, each a member of one shared limit, offer packets in a random order: the
/// group's one bucket passes exactly what the model of one bucket fed both streams passes, and
/// each member counts its own packets.
fn two_members_charge_one_bucket_as_the_model(_ids: Ids) -> Result<(), Failed> {
    use std::sync::mpsc;
    let mut loaded = Loaded::new();
    let limit = limit("8kbit", "20000");
    let group = group_scope(7);
    loaded.set_rule(group, Direction::Egress, limit);
    let loaded = std::sync::Mutex::new(loaded);
    // A thread per namespace, each offering the sizes it is sent and answering with verdicts.
    let (cookies_tx, cookies_rx) = mpsc::channel();
    thread::scope(|scope| -> Result<(), Failed> {
        let mut senders = Vec::new();
        let mut verdicts = Vec::new();
        for _ in 0..2 {
            let (size_tx, size_rx) = mpsc::channel::<Option<usize>>();
            let (verdict_tx, verdict_rx) = mpsc::channel::<u32>();
            let (cookies_tx, loaded) = (cookies_tx.clone(), &loaded);
            scope.spawn(move || {
                // SAFETY: a plain syscall; it moves only this thread, which ends here.
                assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0, "unshare");
                let cookie = rein::platform::netns::cookie().expect("cookie");
                cookies_tx.send(cookie).unwrap();
                while let Ok(Some(bytes)) = size_rx.recv() {
                    let verdict = loaded
                        .lock()
                        .unwrap()
                        .offer(Direction::Egress, &Packet::tcp(bytes));
                    verdict_tx.send(verdict).unwrap();
                }
            });
            senders.push(size_tx);
            verdicts.push(verdict_rx);
        }
        let members: Vec<u64> = (0..2)
            .map(|_| netns_scope(cookies_rx.recv().unwrap()))
            .collect();
        for &member in &members {
            loaded
                .lock()
                .unwrap()
                .set_member(member, group, Direction::Egress);
        }
        // Which thread has which namespace does not matter: each member counts its thread's.
        let mut model = TokenBucketModel::new(limit, &MonotonicClock);
        let mut random = Xorshift(0x51a7_ed11_b0c4_e7a1);
        let mut passed = [0u64; 2];
        let mut refused = [0u64; 2];
        let mut outcome: Result<(), Failed> = Ok(());
        for i in 0..300 {
            let who = (random.next_u64() % 2) as usize;
            let bytes = 50 * (1 + random.next_u64() % 30) as usize;
            let expected = model.offer(bytes as u64, &MonotonicClock);
            senders[who].send(Some(bytes)).unwrap();
            let verdict = verdicts[who].recv().unwrap();
            let expected_code = if expected { PASS } else { EGRESS_REFUSED };
            if verdict != expected_code {
                outcome = Err(format!(
                    "packet {i} ({bytes} B from member {who}): kernel {verdict}, model {expected_code}"
                )
                .into());
                break;
            }
            if expected {
                passed[who] += 1;
            } else {
                refused[who] += 1;
            }
        }
        for sender in &senders {
            let _ = sender.send(None);
        }
        outcome?;
        ensure(
            passed.iter().all(|&p| p > 5) && refused.iter().sum::<u64>() > 100,
            || format!("passed {passed:?}, refused {refused:?}"),
        )?;
        let loaded = loaded.lock().unwrap();
        let mut counted: Vec<(u64, u64)> = members
            .iter()
            .map(|&m| {
                let c = loaded.counters(m, Direction::Egress).unwrap_or_default();
                (c.passed_packets, c.dropped_packets)
            })
            .collect();
        let mut expected: Vec<(u64, u64)> = (0..2).map(|w| (passed[w], refused[w])).collect();
        counted.sort_unstable();
        expected.sort_unstable();
        ensure(counted == expected, || {
            format!("members counted {counted:?}, expected {expected:?}")
        })?;
        let group_counters = loaded
            .counters(group, Direction::Egress)
            .unwrap_or_default();
        ensure(group_counters == Counters::default(), || {
            format!("the group's own key counted {group_counters:?}: members count, not it")
        })
    })
}

/// A member cgroup whose parent has a limit of its own: each packet is charged to both, the
/// tighter (the group's) decides, and the parent is refunded what the group refused.
fn a_member_and_its_own_ancestor_rule_are_both_charged(ids: Ids) -> Result<(), Failed> {
    let mut loaded = Loaded::new();
    let group = group_scope(3);
    loaded.set_rule(ids.parent, Direction::Egress, limit("8kbit", "20000"));
    loaded.set_rule(group, Direction::Egress, limit("8kbit", "5000"));
    loaded.set_member(ids.inner, group, Direction::Egress);
    let group_before = loaded.rule(group, Direction::Egress).bucket.tat;
    let passed = (0..10)
        .filter(|_| loaded.offer(Direction::Egress, &Packet::tcp(1000)) == PASS)
        .count();
    ensure(passed == 5, || {
        format!("{passed} of 10 passed the group's 5000-byte burst")
    })?;
    let parent = loaded.counters(ids.parent, Direction::Egress).unwrap();
    let member = loaded.counters(ids.inner, Direction::Egress).unwrap();
    ensure(
        parent.passed_packets == 5 && parent.dropped_packets == 0,
        || format!("the parent's counters {parent:?}"),
    )?;
    ensure(
        member.passed_packets == 5 && member.dropped_packets == 5,
        || format!("the member's counters {member:?}"),
    )?;
    let now = rein::clock::Clock::now_ns(&MonotonicClock);
    let parent_debt = loaded
        .rule(ids.parent, Direction::Egress)
        .bucket
        .tat
        .saturating_sub(now)
        / 1_000_000;
    ensure(parent_debt < 5_100, || {
        format!("the parent's bucket holds {parent_debt} bytes of debt, not 5000")
    })?;
    // The group's bucket took the 5 passed packets: its clock moved about 5 s (1 ms a byte).
    let group_after = loaded.rule(group, Direction::Egress).bucket.tat;
    let charged = charged_ns(group_before, group_after);
    ensure((4_900_000_000..=5_100_000_000).contains(&charged), || {
        format!("the group was charged {charged} ns for 5 passed packets")
    })?;
    // The member's own rule is untouched: no bucket of its own.
    let own = loaded.rule(ids.inner, Direction::Egress);
    ensure(own.bucket.tat == 0 && own.group() == Some(group), || {
        format!("the member's rule changed: {own:?}")
    })
}

/// A member parent cgroup above a child with a tighter limit of its own: when the child
/// refuses, the group (not the member's unused rule) gets back what it was charged.
fn a_refusal_below_a_member_refunds_the_group(ids: Ids) -> Result<(), Failed> {
    let mut loaded = Loaded::new();
    let group = group_scope(4);
    loaded.set_rule(group, Direction::Egress, limit("8kbit", "20000"));
    loaded.set_member(ids.parent, group, Direction::Egress);
    loaded.set_rule(ids.inner, Direction::Egress, limit("8kbit", "3000"));
    let before = loaded.rule(group, Direction::Egress).bucket.tat;
    let passed = (0..10)
        .filter(|_| loaded.offer(Direction::Egress, &Packet::tcp(1000)) == PASS)
        .count();
    ensure(passed == 3, || {
        format!("{passed} passed the child's 3000-byte burst")
    })?;
    let after = loaded.rule(group, Direction::Egress).bucket.tat;
    let charged = charged_ns(before, after);
    ensure((2_900_000_000..=3_100_000_000).contains(&charged), || {
        format!("the group was charged {charged} ns for 3 passed packets")
    })?;
    let member = loaded.counters(ids.parent, Direction::Egress).unwrap();
    let child = loaded.counters(ids.inner, Direction::Egress).unwrap();
    ensure(
        member.passed_packets == 3 && member.dropped_packets == 0 && child.dropped_packets == 7,
        || format!("member {member:?}, child {child:?}"),
    )?;
    let own = loaded.rule(ids.parent, Direction::Egress);
    ensure(own.bucket.tat == 0, || {
        format!("the member's own rule was charged: {own:?}")
    })
}

/// The verifier walks every path of a program and gives up at a million instructions: a program
/// near that cannot take one more branch (a test added after the cgroup walk once made
/// rein_ingress "too large"). Each program keeps half the limit as room for later code.
fn every_program_keeps_half_the_verifier_limit(_ids: Ids) -> Result<(), Failed> {
    let sizes = rein::doctor::verified_instructions()?;
    let names: Vec<&str> = sizes.iter().map(|size| size.program.as_str()).collect();
    for wanted in [
        EGRESS_PROGRAM,
        INGRESS_PROGRAM,
        "rein_sock_ops",
        "rein_queue",
        "rein_queue_overflow",
        "rein_conn_connect4",
        "rein_conn_connect6",
    ] {
        ensure(names.contains(&wanted), || {
            format!("{wanted} missing: {names:?}")
        })?;
    }
    ensure(
        names.iter().any(|name| name.starts_with("rein_net_")),
        || format!("no net program: {names:?}"),
    )?;
    for size in &sizes {
        eprintln!(
            "{}: {} verified instructions",
            size.program, size.verified_instructions
        );
    }
    for size in &sizes {
        ensure(
            size.verified_instructions > 0 && size.verified_instructions <= size.limit / 2,
            || {
                format!(
                    "{} took {} verified instructions, over half the limit of {}",
                    size.program, size.verified_instructions, size.limit
                )
            },
        )?;
    }
    Ok(())
}

/// ns per packet of the cgroup programs through BPF_PROG_TEST_RUN (the least of 7 calls of
/// 100k runs each), for a packet under a rule on its cgroup, under rules on its cgroup and its
/// parent, and at ingress; then with the socket three levels deeper (depth 5, where the walk
/// goes past the levels it makes in line). Every packet passes (rules of 1 tbit/s with a 1 GB
/// burst); then refused packets with and without a trace (`measure_refusals`).
fn per_packet_cost(ids: Ids) -> Result<(), Failed> {
    let cases: [(&str, Direction, &[u64]); 4] = [
        ("egress, no rule on the path", Direction::Egress, &[]),
        (
            "egress, rule on the cgroup",
            Direction::Egress,
            &[ids.inner],
        ),
        (
            "egress, rules on cgroup and parent",
            Direction::Egress,
            &[ids.inner, ids.parent],
        ),
        (
            "ingress, rule on the cgroup",
            Direction::Ingress,
            &[ids.inner],
        ),
    ];
    for (name, direction, cgroups) in cases {
        measure(&format!("depth 2, {name}"), direction, cgroups, ids)?;
    }
    measure_member("depth 2, egress, member rule on the cgroup", ids)?;
    for (name, flags) in [
        ("egress, rule on the namespace", 0),
        (
            "egress, rule on the namespace with unshaped subnets",
            RULE_UNSHAPED_SUBNETS,
        ),
    ] {
        measure_in_netns(&format!("depth 2, {name}"), flags, ids)?;
    }
    measure_refusals(ids)?;
    let deeper = Deeper::enter(3);
    let deepest = deeper.chain.last().unwrap().id().unwrap();
    measure(
        "depth 5, egress, no rule on the path",
        Direction::Egress,
        &[],
        ids,
    )?;
    measure(
        "depth 5, egress, rules at depths 2 and 5",
        Direction::Egress,
        &[ids.inner, deepest],
        ids,
    )?;
    let below: Vec<u64> = deeper.chain.iter().map(|c| c.id().unwrap()).collect();
    measure(
        "depth 5, egress, rules at depths 2, 4 and 5",
        Direction::Egress,
        &[ids.inner, below[1], below[2]],
        ids,
    )?;
    measure(
        "depth 5, egress, rules at all 5 depths",
        Direction::Egress,
        &[ids.parent, ids.inner, below[0], below[1], below[2]],
        ids,
    )?;
    drop(deeper);
    Ok(())
}

fn measure(name: &str, direction: Direction, cgroups: &[u64], ids: Ids) -> Result<(), Failed> {
    let mut loaded = Loaded::new();
    // A rule elsewhere, so the direction has rules and the walk runs.
    loaded.set_rule(ids.inner + 1_000_000, direction, limit("1tbit", "1g"));
    for &cgroup in cgroups {
        loaded.set_rule(cgroup, direction, limit("1tbit", "1g"));
    }
    let packet = Packet::tcp(1000);
    let mut best = Duration::MAX;
    for _ in 0..7 {
        let (verdict, time) = loaded.run_repeated(direction, &packet, 100_000);
        ensure(verdict == PASS, || format!("{name}: verdict {verdict}"))?;
        best = best.min(time);
    }
    eprintln!("{name}: {} ns per packet", best.as_nanos());
    Ok(())
}

/// As `measure`, with the cgroup a member of a shared limit: one lookup more per packet.
fn measure_member(name: &str, ids: Ids) -> Result<(), Failed> {
    let mut loaded = Loaded::new();
    let group = group_scope(1);
    loaded.set_rule(group, Direction::Egress, limit("1tbit", "1g"));
    loaded.set_member(ids.inner, group, Direction::Egress);
    let packet = Packet::tcp(1000);
    let mut best = Duration::MAX;
    for _ in 0..7 {
        let (verdict, time) = loaded.run_repeated(Direction::Egress, &packet, 100_000);
        ensure(verdict == PASS, || format!("{name}: verdict {verdict}"))?;
        best = best.min(time);
    }
    let counters = loaded
        .counters(ids.inner, Direction::Egress)
        .unwrap_or_default();
    ensure(counters.passed_packets > 0, || {
        format!("{name}: the member counted nothing")
    })?;
    eprintln!("{name}: {} ns per packet", best.as_nanos());
    Ok(())
}

/// As `measure`, for a socket in a namespace of its own under the namespace's rule, with
/// `flags` (and a subnet that is not the packet's peer).
fn measure_in_netns(name: &str, flags: u32, ids: Ids) -> Result<(), Failed> {
    let mut loaded = Loaded::new();
    loaded.set_rule(
        ids.inner + 1_000_000,
        Direction::Egress,
        limit("1tbit", "1g"),
    );
    in_new_netns(|cookie| {
        let scope = netns_scope(cookie);
        loaded.set_rule(scope, Direction::Egress, limit("1tbit", "1g"));
        loaded.set_subnets(scope, flags, &[([198, 19, 0, 0], 16)]);
        let packet = Packet::tcp(1000);
        let mut best = Duration::MAX;
        for _ in 0..7 {
            let (verdict, time) = loaded.run_repeated(Direction::Egress, &packet, 100_000);
            ensure(verdict == PASS, || format!("{name}: verdict {verdict}"))?;
            best = best.min(time);
        }
        let counters = loaded
            .counters(scope, Direction::Egress)
            .unwrap_or_default();
        ensure(counters.passed_packets > 0, || {
            format!("{name}: the namespace's rule charged nothing")
        })?;
        eprintln!("{name}: {} ns per packet", best.as_nanos());
        Ok(())
    })
}

/// ns per refused packet at egress (rule on the cgroup): without a trace, with a trace whose
/// every event is sent (2000 runs a call, which the ring buffer holds between drains), and with
/// a trace over its budget, as under a flood (every event skipped and counted).
fn measure_refusals(ids: Ids) -> Result<(), Failed> {
    let mut loaded = Loaded::new();
    loaded.set_rule(ids.inner, Direction::Egress, limit("1kbit", "1500"));
    // Passes from the full bucket and leaves it 1500 bytes in debt: at 125 bytes a second,
    // every packet after is refused for the rest of the run.
    loaded.offer(Direction::Egress, &Packet::tcp(3000));
    let mut events = RingBuf::try_from(loaded.ebpf.take_map(TRACE_EVENTS_MAP).unwrap()).unwrap();
    let packet = Packet::tcp(1000);
    let cases: [(&str, bool, u32, u32); 3] = [
        ("no trace", false, 0, 100_000),
        ("trace, every event sent", true, u32::MAX, 2000),
        ("trace, over its budget", true, 0, 100_000),
    ];
    for (name, lease, cap, repeat) in cases {
        let until = if lease {
            rein::clock::Clock::now_ns(&MonotonicClock) + 60_000_000_000
        } else {
            0
        };
        loaded.set_trace(until, cap);
        let mut best = Duration::MAX;
        for _ in 0..7 {
            drain(&mut events);
            let (verdict, time) = loaded.run_repeated(Direction::Egress, &packet, repeat);
            ensure(verdict == EGRESS_REFUSED, || {
                format!("{name}: verdict {verdict}")
            })?;
            best = best.min(time);
        }
        let sent = drain(&mut events).len();
        eprintln!(
            "depth 2, egress, refused, {name}: {} ns per packet ({sent} events in the last call)",
            best.as_nanos()
        );
    }
    Ok(())
}

/// A chain of `levels` cgroups below the test's own, with the test process in the last one
/// until dropped (then back, and the chain removed).
struct Deeper {
    home: Cgroup,
    chain: Vec<Cgroup>,
}

impl Deeper {
    fn enter(levels: usize) -> Self {
        let fs = CgroupFs::discover().unwrap();
        let home = fs.of_pid(std::process::id()).unwrap();
        let mut chain: Vec<Cgroup> = Vec::new();
        for level in 0..levels {
            let parent = chain.last().unwrap_or(&home);
            let child = parent.child(&format!("deeper{level}"));
            child.create().unwrap();
            chain.push(child);
        }
        let deeper = Self { home, chain };
        deeper
            .chain
            .last()
            .unwrap()
            .add_process(std::process::id())
            .unwrap();
        deeper
    }
}

impl Drop for Deeper {
    fn drop(&mut self) {
        let _ = self.home.add_process(std::process::id());
        for cgroup in self.chain.iter().rev() {
            let _ = cgroup.remove();
        }
    }
}
