//! The loader on valid, truncated, bit-flipped, version-bumped and otherwise broken files.

#![allow(clippy::unwrap_used)] // test code: a panic is a failed test

use depthling_model::{crc32, example_model, LoadError, Model, FORMAT_VERSION};

fn sample() -> Vec<u8> {
    example_model(16, 24, 7).expect("example model builds")
}

#[test]
fn round_trip() {
    let bytes = sample();
    let m = Model::from_bytes(&bytes).expect("valid model loads");
    assert_eq!(m.input_size(), Some((16, 24)));
    assert!(m.arena_bytes > 0);
    assert!(m.params() > 0);
    assert!(m.macs() > m.params());
    assert_eq!(m.to_bytes().unwrap(), bytes);
    // weights are borrowed from the file, not copied
    let range = bytes.as_ptr_range();
    assert!(range.contains(&m.weights.as_ptr()));
}

#[test]
fn every_truncation_is_rejected() {
    let bytes = sample();
    for len in 0..bytes.len() {
        assert!(
            Model::from_bytes(&bytes[..len]).is_err(),
            "truncated to {len} loaded"
        );
    }
}

#[test]
fn every_single_bit_flip_is_rejected() {
    let bytes = sample();
    let mut copy = bytes.clone();
    for i in 0..bytes.len() {
        for bit in 0..8 {
            copy[i] ^= 1 << bit;
            assert!(
                Model::from_bytes(&copy).is_err(),
                "flip of bit {bit} in byte {i} loaded"
            );
            copy[i] ^= 1 << bit;
        }
    }
}

#[test]
fn junk_appended_is_rejected() {
    let mut bytes = sample();
    bytes.extend_from_slice(b"junk");
    assert!(Model::from_bytes(&bytes).is_err());
}

/// Re-seals a payload with a correct CRC, as a buggy or future writer would.
fn reseal(mut payload: Vec<u8>) -> Vec<u8> {
    let crc = crc32(&payload);
    payload.extend_from_slice(&crc.to_le_bytes());
    payload
}

#[test]
fn version_bump_is_reported_as_such() {
    let bytes = sample();
    let mut payload = bytes[..bytes.len() - 4].to_vec();
    assert_eq!(payload[4], FORMAT_VERSION as u8);
    payload[4] = FORMAT_VERSION as u8 + 1;
    assert_eq!(
        Model::from_bytes(&reseal(payload)),
        Err(LoadError::UnsupportedVersion {
            found: FORMAT_VERSION + 1,
            supported: FORMAT_VERSION
        })
    );
}

#[test]
fn bad_magic_and_short_files() {
    assert_eq!(Model::from_bytes(b""), Err(LoadError::TooShort { len: 0 }));
    assert_eq!(
        Model::from_bytes(b"\x89PNG\r\n\x1a\n0000"),
        Err(LoadError::BadMagic)
    );
}

#[test]
fn resealed_corruption_is_caught_by_validation_not_a_panic() {
    // Flip bytes but fix the CRC, so the decoder and validator see the damage.
    let bytes = sample();
    let payload_len = bytes.len() - 4;
    let mut rejected = 0;
    for i in 6..payload_len {
        for delta in [1u8, 0x80, 0xff] {
            let mut p = bytes[..payload_len].to_vec();
            p[i] = p[i].wrapping_add(delta);
            match Model::from_bytes(&reseal(p)) {
                Ok(m) => {
                    // Accepted only if still fully valid (e.g. a weight value changed).
                    m.validate().expect("accepted model is valid");
                }
                Err(_) => rejected += 1,
            }
        }
    }
    assert!(rejected > 0);
}

#[test]
fn overlapping_arena_plan_is_rejected() {
    let bytes = sample();
    let m = Model::from_bytes(&bytes).unwrap();
    let mut bad = m.clone();
    // Put the first conv's output on top of the input: both are alive during op 0.
    let out = match &bad.ops[0] {
        depthling_model::Op::Conv2d(c) => c.output,
        _ => unreachable!(),
    };
    bad.tensors[out as usize].offset = bad.tensors[bad.input as usize].offset;
    assert!(matches!(
        bad.validate(),
        Err(LoadError::ArenaOverlap { .. })
    ));
    let mut bad = m.clone();
    bad.arena_bytes = 8;
    assert!(matches!(bad.validate(), Err(LoadError::Tensor { .. })));
}

#[test]
fn messages_name_the_problem() {
    let e = Model::from_bytes(b"DLM1\x01garbage").unwrap_err();
    assert!(e.to_string().contains("checksum"), "{e}");
}

/// Found by the fuzzer: a bias near i32::MIN plus ordinary weights overflowed the engine's int32
/// accumulator. Such a model is now rejected at load.
#[test]
fn accumulator_overflow_is_rejected() {
    let bytes = sample();
    let m = Model::from_bytes(&bytes).unwrap();
    let bias = match &m.ops[0] {
        depthling_model::Op::Conv2d(c) => c.bias,
        _ => unreachable!(),
    };
    let mut weights = m.weights.to_vec();
    let at = bias.offset as usize;
    weights[at..at + 4].copy_from_slice(&(i32::MIN + 10).to_le_bytes());
    let bad = Model {
        weights: &weights,
        ..m.clone()
    };
    let e = bad.validate().unwrap_err();
    assert!(e.to_string().contains("overflow"), "{e}");
}
