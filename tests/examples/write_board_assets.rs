//! Writes a board's default assets: the demo student (seeded weights, calibrated on simulated OOD
//! images) as `model.dlm` and one simulated indoor frame as `frame.rgb`, at WIDTHxHEIGHT.
//! Usage: write_board_assets DIR [WIDTHxHEIGHT]
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::path::PathBuf::from(
        std::env::args()
            .nth(1)
            .ok_or("usage: write_board_assets DIR [WxH]")?,
    );
    let size = std::env::args().nth(2).unwrap_or_else(|| "64x48".into());
    let (w, h) = depthling_host::app::parse_size(&size)?;
    let (model, frame) = depthling_tests::demo_student_and_frame(w, h)?;
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("model.dlm"), model)?;
    std::fs::write(dir.join("frame.rgb"), frame)?;
    Ok(())
}
