//! Writes a board's default assets: a student (the demo student, or ARCH such as `micro`; seeded
//! weights, calibrated on simulated OOD images) as `model.dlm` and one simulated indoor frame as
//! `frame.rgb`, at WIDTHxHEIGHT.
//! Usage: write_board_assets DIR [WIDTHxHEIGHT] [ARCH]
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::path::PathBuf::from(
        std::env::args()
            .nth(1)
            .ok_or("usage: write_board_assets DIR [WxH] [ARCH]")?,
    );
    let size = std::env::args().nth(2).unwrap_or_else(|| "64x48".into());
    let (w, h) = depthling_host::app::parse_size(&size)?;
    let arch = std::env::args()
        .nth(3)
        .unwrap_or_else(|| "demo-student".into());
    let (model, frame) = depthling_tests::student_and_frame(&arch, w, h)?;
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("model.dlm"), model)?;
    std::fs::write(dir.join("frame.rgb"), frame)?;
    Ok(())
}
