//! Per-source limits in sketch mode: a count-min sketch shared by the sources of a rule, walked
//! with `bpf_loop`.

use core::ffi::c_void;

use aya_ebpf::{helpers::bpf_loop, macros::map, maps::Array};
use rein_common::{
    net::{
        ALGORITHM_FIXED_WINDOW, ALGORITHM_TOKEN_BUCKET, MAX_SKETCH_CELLS, MAX_SKETCH_DEPTH,
        SourceKey, sketch_column,
    },
    window::{WindowKind, WindowState, cost_units},
};
use rein_ebpf::atomic::Word;

use crate::rules::{Amount, Config, REIN_NET_HEAVY, bucket_cost, count, quantity, source_state};

#[map(name = "REIN_NET_SKETCH")]
static REIN_NET_SKETCH: Array<u64> = Array::with_max_entries(MAX_SKETCH_CELLS, 0);

/// Sketch mode: the source's use is estimated as the least of its cells, one per row (a cell
/// counts every source hashed to it, so each over-counts and the least over-counts least).
/// A passing packet raises each cell to the new estimate, no further (conservative update).
/// The rows are walked with `bpf_loop`, whose callback the verifier checks once rather than
/// once per row and path.
#[inline(always)]
pub fn charge_sketch(rule: &Config, key: &SourceKey, now: u64, amount: Amount) -> bool {
    let quantity = quantity(rule, amount);
    let bucket = rule.algorithm == ALGORITHM_TOKEN_BUCKET;
    let depth = if rule.sketch_depth < MAX_SKETCH_DEPTH {
        rule.sketch_depth
    } else {
        MAX_SKETCH_DEPTH
    };
    let mut walk = SketchWalk {
        offset: rule.sketch_offset,
        width: rule.sketch_width,
        rule: key.rule,
        fixed: (rule.algorithm == ALGORITHM_FIXED_WINDOW) as u32,
        bucket: bucket as u64,
        now,
        window_ns: rule.window_ns,
        addr: key.addr,
        least: u64::MAX,
        raised: 0,
    };
    // SAFETY: the callbacks read and write only the walk, which outlives the loop.
    unsafe { bpf_loop(depth, sketch_least as *mut c_void, walk.as_context(), 0) };
    let least = walk.least;
    if least == u64::MAX {
        return true;
    }
    // The estimate every cell is raised to, and how heavy the source is: over half its burst
    // or capacity in use marks it for `list`.
    let (passed, raised, heavy) = if bucket {
        let burst_ns = rule.bucket.burst_ns;
        match rein_common::Bucket::decide(least, now, bucket_cost(rule, quantity), burst_ns) {
            rein_common::Verdict::Pass { tat } => {
                (true, tat, tat.saturating_sub(now) > burst_ns / 2)
            }
            rein_common::Verdict::Refuse => (false, 0, true),
        }
    } else {
        let target = least + cost_units(quantity, rule.unit) as u64;
        if target > rule.capacity as u64 {
            (false, 0, true)
        } else {
            (true, target, target > rule.capacity as u64 / 2)
        }
    };
    if passed {
        walk.raised = raised;
        // SAFETY: as above.
        unsafe { bpf_loop(depth, sketch_raise as *mut c_void, walk.as_context(), 0) };
    }
    if heavy && let Some(source) = source_state(&REIN_NET_HEAVY, key) {
        // What `list` shows of the source; racy stores are fine.
        source.state().store(if bucket {
            least.saturating_sub(now)
        } else {
            least
        });
        count(source.counters(), passed, amount);
    }
    passed
}

/// What the sketch callbacks need, by value (a callback sees only this).
#[repr(C)]
struct SketchWalk {
    offset: u32,
    width: u32,
    rule: u32,
    fixed: u32,
    bucket: u64,
    now: u64,
    window_ns: u64,
    addr: [u8; 16],
    /// Out of `sketch_least`: the least cell (a `tat`, or a window count).
    least: u64,
    /// Into `sketch_raise`: what each cell is raised to.
    raised: u64,
}

impl SketchWalk {
    /// The walk as bpf_loop's context, derived afresh for each loop so that the compiler sees
    /// the loop read what was written before it.
    #[inline(always)]
    fn as_context(&mut self) -> *mut c_void {
        self as *mut SketchWalk as *mut c_void
    }

    #[inline(always)]
    fn cell(&self, row: u32) -> Option<Word> {
        let column = sketch_column(self.rule, row, &self.addr, self.width);
        let cell = REIN_NET_SKETCH.get_ptr_mut(self.offset + row * self.width + column)?;
        // SAFETY: an array element, valid for the program's run; changed by CAS only.
        Some(unsafe { Word::new(cell) })
    }

    #[inline(always)]
    fn kind(&self) -> WindowKind {
        if self.fixed != 0 {
            WindowKind::Fixed
        } else {
            WindowKind::Sliding
        }
    }
}

extern "C" fn sketch_least(row: u32, ctx: *mut c_void) -> i64 {
    // SAFETY: bpf_loop passes the walk given to it.
    let walk = unsafe { &mut *(ctx as *mut SketchWalk) };
    let Some(cell) = walk.cell(row) else {
        return 1;
    };
    let cell = cell.load();
    let value = if walk.bucket != 0 {
        cell
    } else {
        WindowState(cell).count(walk.kind(), walk.now, walk.now, walk.window_ns) as u64
    };
    if value < walk.least {
        walk.least = value;
    }
    0
}

/// Raises one cell to the walk's `raised`; one compare-and-swap: a cell another CPU moves
/// meanwhile under-counts this one packet, which only errs towards passing.
extern "C" fn sketch_raise(row: u32, ctx: *mut c_void) -> i64 {
    // SAFETY: bpf_loop passes the walk given to it.
    let walk = unsafe { &mut *(ctx as *mut SketchWalk) };
    let Some(cell) = walk.cell(row) else {
        return 1;
    };
    let value = cell.load();
    let next = if walk.bucket != 0 {
        if value >= walk.raised {
            return 0;
        }
        walk.raised
    } else {
        WindowState(value)
            .raise_to(walk.kind(), walk.now, walk.window_ns, walk.raised as u32)
            .0
    };
    if next != value {
        let _ = cell.compare_exchange(value, next);
    }
    0
}
