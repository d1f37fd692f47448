//! Board profiles (`boards/<board>/board.toml`, DESIGN §9), built into the binary; a path to a
//! `board.toml` works too. A model fits a board when its `.dlm` fits the flash and its arena fits
//! the RAM, after what the firmware itself reserves.

use std::path::Path;

use serde::Deserialize;

pub mod cortex_m7;

use crate::error::{Error, Result};

#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct Board {
    pub name: String,
    pub target: String,
    pub ram_bytes: u64,
    pub flash_bytes: u64,
    pub clock_mhz: u32,
    pub backend: String,
    pub input: String,
    #[serde(default)]
    pub reserved_flash_bytes: u64,
    #[serde(default)]
    pub reserved_ram_bytes: u64,
}

const BUILT_IN: &[(&str, &str)] = &[
    (
        "jetson-orin-nano",
        include_str!("../../../boards/jetson-orin-nano/board.toml"),
    ),
    (
        "raspberry-pi-5",
        include_str!("../../../boards/raspberry-pi-5/board.toml"),
    ),
    (
        "stm32h747",
        include_str!("../../../boards/stm32h747/board.toml"),
    ),
    (
        "mps2-an500",
        include_str!("../../../boards/mps2-an500/board.toml"),
    ),
];

/// Why a model does not fit, with the excess.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Misfit {
    pub flash_excess: u64,
    pub ram_excess: u64,
}

impl Board {
    /// Every built-in profile, in a fixed order.
    pub fn built_in() -> Result<Vec<Board>> {
        BUILT_IN.iter().map(|(name, _)| Board::find(name)).collect()
    }

    /// Whether the board is a Cortex-M microcontroller (runs `boards/cortex-m7`).
    pub fn is_cortex_m(&self) -> bool {
        self.target.starts_with("thumbv")
    }

    /// A built-in board by name, or a `board.toml` by path.
    pub fn find(name_or_path: &str) -> Result<Board> {
        let (origin, text) = match BUILT_IN.iter().find(|(n, _)| *n == name_or_path) {
            Some((_, t)) => (name_or_path.to_string(), t.to_string()),
            None => {
                let p = Path::new(name_or_path);
                if !p.exists() {
                    let known: Vec<&str> = BUILT_IN.iter().map(|(n, _)| *n).collect();
                    return Err(Error::Usage(format!(
                        "unknown board {name_or_path:?}; known: {} (or a path to a board.toml)",
                        known.join(", ")
                    )));
                }
                (
                    p.display().to_string(),
                    std::fs::read_to_string(p).map_err(|e| Error::io(p, e))?,
                )
            }
        };
        toml::from_str(&text)
            .map_err(|e| Error::bad_input(&origin, format!("not a board profile: {e}")))
    }

    /// The kernel table the engine runs with on this board, which sizes its prepared plan:
    /// the DSP one on Cortex-M, NEON with `sdot` on aarch64 (Cortex-A76/A78), AVX-512 VNNI
    /// (the largest x86 plan) elsewhere.
    pub fn kernel_set(&self) -> depthling_device::KernelSet {
        use depthling_device::KernelSet;
        if self.is_cortex_m() {
            KernelSet::CortexMDsp
        } else if self.target.starts_with("aarch64") {
            KernelSet::Aarch64NeonDot
        } else {
            KernelSet::X86Avx512Vnni
        }
    }

    /// `Ok(())` when a model of `flash` bytes with an arena of `arena` bytes fits.
    pub fn check(&self, flash: u64, arena: u64) -> std::result::Result<(), Misfit> {
        let flash_budget = self.flash_bytes.saturating_sub(self.reserved_flash_bytes);
        let ram_budget = self.ram_bytes.saturating_sub(self.reserved_ram_bytes);
        let misfit = Misfit {
            flash_excess: flash.saturating_sub(flash_budget),
            ram_excess: arena.saturating_sub(ram_budget),
        };
        if misfit.flash_excess == 0 && misfit.ram_excess == 0 {
            Ok(())
        } else {
            Err(misfit)
        }
    }

    /// The refusal message for a misfit.
    pub fn explain(&self, m: &Misfit) -> String {
        let mut parts = Vec::new();
        if m.flash_excess > 0 {
            parts.push(format!(
                "the model is {} bytes over the flash budget",
                m.flash_excess
            ));
        }
        if m.ram_excess > 0 {
            parts.push(format!(
                "its arena is {} bytes over the RAM budget",
                m.ram_excess
            ));
        }
        format!("does not fit {}: {}", self.name, parts.join(" and "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_boards_parse_and_budgets_apply() {
        for (name, _) in BUILT_IN {
            let b = Board::find(name).unwrap();
            assert_eq!(&b.name, name);
        }
        let h7 = Board::find("stm32h747").unwrap();
        assert_eq!(h7.check(100_000, 60_000), Ok(()));
        let m = h7.check(2_097_152, 2_000_000).unwrap_err();
        assert_eq!(m.flash_excess, 131_072);
        assert_eq!(m.ram_excess, 2_000_000 - (1_048_576 - 131_072));
        assert!(h7
            .explain(&m)
            .contains("131072 bytes over the flash budget"));
        assert!(Board::find("no-such-board").is_err());
    }
}
