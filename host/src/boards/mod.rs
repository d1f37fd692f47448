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

    /// The tables the engine may run on this board, whose largest plan it keeps after the
    /// activations (`Engine::arena_needed` takes the largest of the tables the CPU has): the
    /// DSP one on Cortex-M, the NEON ones on aarch64, the x86 ones elsewhere (AVX2's int16
    /// packed weights make its plan the largest for most networks, e.g. `micro`'s 579 KB
    /// against AVX-512 VNNI's 414 KB; VNNI's 16-channel padding for narrow ones).
    pub fn kernel_sets(&self) -> Vec<depthling_device::KernelSet> {
        use depthling_device::KernelSet;
        let arch = |s: &KernelSet| match s {
            KernelSet::CortexMDsp => self.is_cortex_m(),
            KernelSet::Aarch64Neon | KernelSet::Aarch64NeonDot | KernelSet::Aarch64NeonI8mm => {
                !self.is_cortex_m() && self.target.starts_with("aarch64")
            }
            KernelSet::X86Sse2
            | KernelSet::X86Avx2
            | KernelSet::X86AvxVnni
            | KernelSet::X86Avx512Vnni => {
                !self.is_cortex_m() && !self.target.starts_with("aarch64")
            }
            KernelSet::Reference | KernelSet::Portable => false,
        };
        KernelSet::ALL.into_iter().filter(arch).collect()
    }

    /// Bytes of the largest prepared plan for `model` among [`Board::kernel_sets`]: what the
    /// engine keeps after the activations on this board.
    pub fn plan_bytes(&self, model: &depthling_model::Model<'_>) -> Result<u64> {
        let mut most = 0;
        for set in self.kernel_sets() {
            let bytes = depthling_device::plan::bytes(model, set)
                .map_err(|e| Error::Runtime(format!("int8 plan for {}: {e}", set.name())))?;
            most = most.max(bytes as u64);
        }
        Ok(most)
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

    /// A board's plan is the largest of its architecture's tables (the board checks once
    /// counted AVX-512 VNNI's alone on x86, where AVX2's int16 packing can be larger).
    #[test]
    fn a_boards_plan_is_its_largest_tables() {
        use depthling_device::{plan, KernelSet};
        let bytes = depthling_model::example_model(32, 48, 3).unwrap();
        let m = depthling_model::Model::from_bytes(&bytes).unwrap();
        let board = |target: &str| {
            let mut b = Board::find("raspberry-pi-5").unwrap();
            b.target = target.into();
            b
        };
        let x86 = board("x86_64-unknown-linux-gnu");
        let most = [
            KernelSet::X86Sse2,
            KernelSet::X86Avx2,
            KernelSet::X86AvxVnni,
            KernelSet::X86Avx512Vnni,
        ]
        .map(|s| plan::bytes(&m, s).unwrap() as u64);
        assert_eq!(x86.plan_bytes(&m).unwrap(), *most.iter().max().unwrap());
        // which table's is largest depends on the model (AVX-512 VNNI pads to 16 channels,
        // AVX2 packs int16): every x86 table counts
        assert_eq!(
            x86.kernel_sets(),
            [
                KernelSet::X86Sse2,
                KernelSet::X86Avx2,
                KernelSet::X86AvxVnni,
                KernelSet::X86Avx512Vnni
            ]
        );
        let pi = Board::find("raspberry-pi-5").unwrap();
        assert_eq!(
            pi.plan_bytes(&m).unwrap(),
            plan::bytes(&m, KernelSet::Aarch64NeonDot).unwrap() as u64
        );
        let h7 = Board::find("stm32h747").unwrap();
        assert_eq!(h7.kernel_sets(), [KernelSet::CortexMDsp]);
        assert_eq!(
            h7.plan_bytes(&m).unwrap(),
            plan::bytes(&m, KernelSet::CortexMDsp).unwrap() as u64
        );
    }
}
