//! Any bytes through the `.dlm` loader and, when they load, one inference: never a panic, never an
//! out-of-bounds access. Seed corpus: `cargo run -p depthling-model --example` is not needed —
//! `fuzz/seed.sh` writes valid models to start from.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(model) = depthling_model::Model::from_bytes(data) else { return };
    // keep memory bounded: a valid model may ask for a huge arena
    if model.arena_bytes > 8 << 20 {
        return;
    }
    let Some((h, w)) = model.input_size() else { return };
    let frame = vec![77u8; h as usize * w as usize * 3];
    let mut arena = vec![0u8; model.arena_bytes as usize];
    if let Ok(mut engine) = depthling_device::Engine::new(&model, &mut arena) {
        let _ = engine.run(&frame).map(|d| d.checksum());
    }
});
