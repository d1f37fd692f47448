//! depthling end-to-end and hardware-in-the-loop tests live in `tests/`; this library holds what
//! they share.

/// The demo student at `width × height` (seeded weights, calibrated on simulated OOD images) as
/// `.dlm` bytes, and one simulated indoor frame (raw RGB).
pub fn demo_student_and_frame(
    width: usize,
    height: usize,
) -> Result<(Vec<u8>, Vec<u8>), depthling_host::Error> {
    use depthling_host::nets::{preset, Net};
    use depthling_host::quant::{quantize, Calibration, Provenance};
    use depthling_host::sim::{render_many, render_sample, Domain};
    let device = candle_core::Device::Cpu;
    let net = Net::new(preset("demo-student", 1.0)?, &device, 0)?;
    let calib = render_many(Domain::Ood, width, height, 3, 0, 8, false);
    let prov = Provenance {
        name: "demo-student".into(),
        ..Default::default()
    };
    let model = quantize(&net.net, &calib, Calibration::MinMax, &prov, &device)?;
    let frame = render_sample(Domain::Indoor, width, height, 77, 0, false).rgb;
    Ok((model, frame))
}

/// The host int8 engine's checksum of `model` on `frame`: what every board must print.
pub fn host_checksum(model: &[u8], frame: &[u8]) -> Result<u64, Box<dyn std::error::Error>> {
    let m = depthling_model::Model::from_bytes(model)?;
    let mut arena = vec![0u8; m.arena_bytes as usize];
    let mut e = depthling_device::Engine::new(&m, &mut arena)?;
    Ok(e.run(frame)?.checksum())
}
