//! Property tests over a preprocessing plugin's tensors as they come back across the boundary
//! (`tensor_fault`), and over the daemon's gathering of them into feature rows: arbitrary
//! shapes (overflowing ones among them), data lengths and values are refused or accepted
//! consistently, never a panic.

use proptest::prelude::*;

use super::{first_non_finite, tensor_fault};
use gantry_fuzz as fuzz;

/// Shapes of 0-4 dimensions, small or extreme, with data near what they imply.
fn tensor() -> impl Strategy<Value = (Vec<u32>, Vec<f32>, usize)> {
    let dim = prop_oneof![0u32..6, Just(u32::MAX), Just(1 << 16)];
    (
        prop::collection::vec(dim, 0..4),
        prop::collection::vec(
            prop_oneof![
                8 => -1e6f32..1e6,
                1 => Just(f32::NAN),
                1 => Just(f32::INFINITY),
            ],
            0..40,
        ),
        0usize..6,
    )
}

proptest! {
    #![proptest_config(fuzz::config(512))]

    #[test]
    fn arbitrary_tensors_are_refused_or_exactly_consistent((shape, data, records) in tensor()) {
        match tensor_fault(&shape, &data, records) {
            Some(reason) => prop_assert!(reason.starts_with("tensor")),
            None => {
                let values: u128 = shape.iter().map(|&d| u128::from(d)).product();
                prop_assert_eq!(values, data.len() as u128);
                prop_assert_eq!(shape.first().map(|&d| d as usize), Some(records));
                prop_assert!(data.iter().all(|v| v.is_finite()));
            }
        }
    }

    #[test]
    fn the_blocked_search_finds_the_first_value_that_is_not_finite(
        len in 0usize..1200,
        bad in prop::collection::vec((0usize..1200, 0u8..3), 0..4),
    ) {
        let mut data: Vec<f32> = (0..len).map(|i| i as f32 * 0.5 - 100.0).collect();
        for (at, kind) in bad {
            if at < len {
                data[at] = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY][kind as usize];
            }
        }
        prop_assert_eq!(first_non_finite(&data), data.iter().position(|v| !v.is_finite()));
    }
}
