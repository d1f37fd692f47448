//! Writes valid example models into the folder given as the first argument (fuzzing seeds).
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args()
        .nth(1)
        .ok_or("usage: write_seed_models DIR")?;
    for (i, (h, w)) in [(8u16, 8u16), (16, 24), (12, 4)].into_iter().enumerate() {
        let bytes = depthling_model::example_model(h, w, i as u64)?;
        std::fs::write(
            std::path::Path::new(&dir).join(format!("example-{h}x{w}.dlm")),
            bytes,
        )?;
    }
    Ok(())
}
