//! Arbitrary shapes, parameters and pooling geometries must give a result or a typed
//! error from the tensor API, never a panic, an overflow or an out-of-bounds access.
//!
//! `cargo +nightly fuzz run tensor_ops` (from this folder's parent).

#![no_main]

use libfuzzer_sys::fuzz_target;
use tensor::{Kernels, Pool2d, Tensor};

/// Caps the elements a case may allocate, so the fuzzer explores logic, not memory.
const MAX_ELEMENTS: usize = 1 << 16;

fuzz_target!(|bytes: &[u8]| {
    let Some((&op, rest)) = bytes.split_first() else { return };
    let mut it = rest.iter().copied();
    let mut next = || it.next().unwrap_or(0) as usize;
    let rank = next() % 5;
    let shape: Vec<usize> = (0..rank).map(|_| next() % 20).collect();
    let count: usize = shape.iter().product();
    if count > MAX_ELEMENTS {
        return;
    }
    let data: Vec<f32> = (0..count).map(|i| (i as f32 * 0.37).sin() * 4.0).collect();
    let Ok(x) = Tensor::from_vec(&shape, data) else { return };
    let k = Kernels::active().expect("a supported tier");
    let params: Vec<f32> = (0..next() % 8).map(|i| i as f32 - 2.0).collect();
    let pool = Pool2d {
        kernel: [next() % 6, next() % 6],
        stride: [next() % 4, next() % 4],
        padding: [next() % 4, next() % 4],
    };
    let _ = match op % 8 {
        0 => k.scale_shift(&x, &params, &params).map(drop),
        1 => k.scale_shift_relu(&x, &params, &params).map(drop),
        2 => k.channel_stats(&x).map(drop),
        3 => k.softmax(&x).map(drop),
        4 => k.log_softmax(&x).map(drop),
        5 => k.max_pool2d(&x, &pool).map(drop),
        6 => k.global_avg_pool(&x).map(drop),
        _ => x.clone().reshape(&[count, 1]).and_then(|y| k.add(&x, &y)).map(drop),
    };
});
