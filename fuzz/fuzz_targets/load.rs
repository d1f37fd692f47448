//! Any bytes through the `.dlm` loader and, when they load, one inference: never a panic, never an
//! out-of-bounds access. `fuzz/seed.sh` writes valid models to start from (strip their last 4
//! bytes to seed the re-sealed path).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    check(data);
    // Also with a valid checksum appended, so the decoder and the validator see the bytes
    // instead of the CRC rejecting almost everything.
    let mut sealed = data.to_vec();
    sealed.extend_from_slice(&depthling_model::crc32(data).to_le_bytes());
    check(&sealed);
});

fn check(data: &[u8]) {
    let Ok(model) = depthling_model::Model::from_bytes(data) else { return };
    // keep memory bounded: a valid model may ask for a huge arena
    if model.arena_bytes > 8 << 20 {
        return;
    }
    let Some((h, w)) = model.input_size() else { return };
    let frame = vec![77u8; h as usize * w as usize * 3];
    let Ok(need) = depthling_device::Engine::arena_needed(&model) else { return };
    let mut arena = vec![0u8; need];
    if let Ok(mut engine) = depthling_device::Engine::new(&model, &mut arena) {
        let _ = engine.run(&frame).map(|d| d.checksum());
    }
}
