//! Runs the embedded `.dlm` on the embedded frame from a static arena, prints the depth checksum
//! and the instructions per inference, and exits with a status (semihosting). The host compares
//! the checksum with its own int8 result bit for bit.
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicU32, Ordering};

use cortex_m::peripheral::syst::SystClkSource;
use cortex_m_rt::{entry, exception};
use cortex_m_semihosting::{debug, hprintln};
use depthling_device::frame::{FrameError, FrameSource, MemoryFrames};
use depthling_device::Engine;
use depthling_model::Model;

static MODEL: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/model.dlm"));
/// The test frames in flash, read through the same `FrameSource` seam a camera implements
/// (`depthling_device::frame::SpiCamera`): swap the source, keep the loop.
static FRAMES: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/frame.rgb"));
const FRAME_BYTES: usize = include_bytes!(concat!(env!("OUT_DIR"), "/frame.rgb")).len();
/// The frame the engine reads, filled by the frame source.
static mut FRAME: [u8; FRAME_BYTES] = [0; FRAME_BYTES];

/// The inference arena: statically allocated, no heap.
const ARENA_BYTES: usize = 512 * 1024;
static mut ARENA: [u8; ARENA_BYTES] = [0; ARENA_BYTES];

/// SysTick wraps (24-bit counter).
static WRAPS: AtomicU32 = AtomicU32::new(0);
const RELOAD: u32 = 0x00FF_FFFF;
/// Instructions per SysTick tick under `-icount shift=0` on mps2-an500.
const INSTRUCTIONS_PER_TICK: u64 = 40;

#[exception]
fn SysTick() {
    WRAPS.fetch_add(1, Ordering::Relaxed);
}

/// SysTick ticks since start (wraps counted by the exception; re-read if one happened between).
fn ticks() -> u64 {
    loop {
        let w = WRAPS.load(Ordering::Relaxed);
        let current = cortex_m::peripheral::SYST::get_current();
        if w == WRAPS.load(Ordering::Relaxed) {
            return w as u64 * (RELOAD as u64 + 1) + (RELOAD - current) as u64;
        }
    }
}

/// A frame source's error, by kind.
struct FrameFailure(depthling_device::frame::FrameErrorKind);

impl core::fmt::Display for FrameFailure {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "frame source: {:?}", self.0)
    }
}

fn fail(msg: &dyn core::fmt::Display) -> ! {
    hprintln!("depthling: error: {}", msg);
    debug::exit(debug::EXIT_FAILURE);
    loop {
        cortex_m::asm::wfi();
    }
}

#[entry]
fn main() -> ! {
    let Some(mut p) = cortex_m::Peripherals::take() else {
        fail(&"peripherals taken")
    };
    p.SYST.set_clock_source(SystClkSource::Core);
    p.SYST.set_reload(RELOAD);
    p.SYST.clear_current();
    p.SYST.enable_interrupt();
    p.SYST.enable_counter();

    let model = match Model::from_bytes(MODEL) {
        Ok(m) => m,
        Err(e) => fail(&e),
    };
    // SAFETY: the only reference to ARENA, taken once in this single-threaded program.
    let arena = unsafe { &mut *core::ptr::addr_of_mut!(ARENA) };
    let mut engine = match Engine::new(&model, arena) {
        Ok(e) => e,
        Err(e) => fail(&e),
    };
    let Some((h, w)) = model.input_size() else {
        fail(&"model has no input")
    };
    let Some(mut source) = MemoryFrames::new(FRAMES, h as usize, w as usize) else {
        fail(&"the embedded frames are not whole frames of the model's input size")
    };
    // SAFETY: the only reference to FRAME, taken once in this single-threaded program.
    let frame = unsafe { &mut *core::ptr::addr_of_mut!(FRAME) };
    if let Err(e) = source.next_frame(frame) {
        fail(&FrameFailure(e.kind()))
    }
    let frame: &[u8] = frame;
    let start = ticks();
    let checksum = match engine.run(frame) {
        Ok(depth) => depth.checksum(),
        Err(e) => fail(&e),
    };
    let elapsed = ticks() - start;
    let instructions = elapsed * INSTRUCTIONS_PER_TICK;
    hprintln!(
        "depthling: checksum=0x{:016x} instructions={} macs={} arena={} plan={} flash_model={}",
        checksum,
        instructions,
        model.macs(),
        model.arena_bytes,
        4 * engine.plan_words(),
        MODEL.len()
    );
    #[cfg(feature = "op-profile")]
    op_profile(&model, &mut engine, frame);
    hprintln!("Test OK");
    debug::exit(debug::EXIT_SUCCESS);
    loop {
        cortex_m::asm::wfi();
    }
}

/// Runs the frame again and prints instructions and MACs per op kind (conv by kernel size).
#[cfg(feature = "op-profile")]
fn op_profile(model: &Model<'_>, engine: &mut Engine<'_, '_>, frame: &[u8]) {
    use depthling_model::Op;
    const KINDS: [&str; 9] = [
        "conv1x1",
        "conv3x3",
        "conv5x5",
        "depthwise",
        "add",
        "concat",
        "upsample",
        "pool",
        "mul",
    ];
    let mut instr = [0u64; KINDS.len()];
    let mut macs = [0u64; KINDS.len()];
    let kind = |op: &Op| match op {
        Op::Conv2d(c) if c.depthwise => 3,
        Op::Conv2d(c) if c.kernel == 1 => 0,
        Op::Conv2d(c) if c.kernel == 3 => 1,
        Op::Conv2d(_) => 2,
        Op::Add { .. } => 4,
        Op::Concat { .. } => 5,
        Op::Upsample { .. } => 6,
        Op::GlobalAvgPool { .. } => 7,
        _ => 8,
    };
    let mut last = ticks();
    let run = engine.run_observed(frame, |i, _, _| {
        let now = ticks();
        if let Some(op) = model.ops.get(i) {
            let k = kind(op);
            instr[k] += (now - last) * INSTRUCTIONS_PER_TICK;
            macs[k] += model.op_macs(i);
        }
        last = ticks();
    });
    if let Err(e) = run {
        fail(&e);
    }
    for k in 0..KINDS.len() {
        if instr[k] > 0 {
            hprintln!(
                "depthling: op {} instructions={} macs={}",
                KINDS[k],
                instr[k],
                macs[k]
            );
        }
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    hprintln!("depthling: panic: {}", info);
    debug::exit(debug::EXIT_FAILURE);
    loop {
        cortex_m::asm::wfi();
    }
}
