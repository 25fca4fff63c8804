//! Arbitrary shapes, parameters and pooling geometries must give a result or a typed
//! error from the tensor API, never a panic, an overflow or an out-of-bounds access.
//!
//! `cargo +nightly fuzz run tensor_ops` (from this folder's parent).

#![no_main]

use libfuzzer_sys::fuzz_target;
use tensor::{Conv2d, Epilogue, ConvPlan, Kernels, MatMut, MatRef, Mode, Pool2d, Tensor};

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
        ceil_mode: next() % 2 == 0,
        dilation: [1 + next() % 3, 1 + next() % 3],
    };
    let (a, b, c) = (next() % 9, next() % 9, next() % 9);
    let _ = match op % 10 {
        0 => k.scale_shift(&x, &params, &params, &[]).map(drop),
        1 => k.scale_shift(&x, &params, &params, &[Epilogue::Relu]).map(drop),
        2 => k.channel_stats(&x).map(drop),
        3 => k.softmax(&x).map(drop),
        4 => k.log_softmax(&x).map(drop),
        5 if next() % 2 == 0 => k.max_pool2d(&x, &pool).map(drop),
        5 => k
            .max_pool2d_with_indices(&x, &pool)
            .and_then(|(y, w)| k.max_pool2d_backward_from_indices(&w, &y))
            .map(drop),
        6 if next() % 2 == 0 => k.global_avg_pool(&x).map(drop),
        6 => k
            .avg_pool2d(&x, &tensor::AvgPool2d::new(pool, next() % 2 == 0))
            .map(drop),
        7 => x.clone().reshape(&[count, 1]).and_then(|y| k.add(&x, &y, &[])).map(drop),
        // A GEMM over views of arbitrary (possibly inconsistent) shapes and strides.
        8 => MatRef::new(x.data(), a, b, b, 1).and_then(|av| {
            let bv = MatRef::new(x.data(), b, c, 1, b.max(1))?;
            let mut out = vec![0.0; a * c];
            let mut cv = MatMut::row_major(&mut out, a, c)?;
            k.gemm(av, bv, &mut cv, &[tensor::Epilogue::Bias(&params), tensor::Epilogue::Relu])
        }),
        // A convolution with weights of an arbitrary shape, stride and padding.
        _ => Tensor::zeros(&[a + 1, b, c, c]).and_then(|w| {
            let p = Conv2d::new(pool.stride[0], pool.padding[0]);
            let plan = ConvPlan::new(&k, w.dims4("fuzz")?, p, Mode::Inference)?;
            let w = k.pack_conv(&plan, &w)?;
            k.conv2d(&x, &w, &[Epilogue::Bias(&params)])
                .map(drop)
        }),
    };
});
