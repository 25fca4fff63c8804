//! The packed GEMM, in every ISA tier this CPU has, equals the naive triple loop (in
//! `f64`) and `matrixmultiply`, over random `m`, `n`, `k` (0 and 1 included, up to three
//! tiles and past a K block), transposed operands and epilogues.
//!
//! Tolerance: `|ours - exact| <= 1e-5 * sum_k |a_ik b_kj| + 1e-6` per element (plus the
//! bias's and residual's magnitudes): an `f32` sum of `k` products in any order is within
//! `k * 2^-24` of that scale in the worst case, and within about `sqrt(k) * 2^-24` in
//! practice, which at `k <= 600` is far below `1e-5`.

mod common;

use common::{close, fail, prop, Check, CheckResult};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use tensor::gemm::matrixmultiply_gemm;
use tensor::{reference, Epilogue, Kernels, MatMut, MatRef, Tensor};

const CHECKS: &[(&str, Check)] = &[
    ("gemm_equals_reference_and_matrixmultiply", check_random),
    ("gemm_epilogues_equal_reference", check_epilogues),
    ("gemm_prepacked_equals_gemm", check_prepacked),
    (
        "gemm_general_strides_equal_reference",
        check_general_strides,
    ),
    ("gemm_large_crosses_every_block_and_thread", check_large),
    ("gemm_rejects_bad_shapes", check_errors),
    ("linear_equals_reference", check_linear),
];

/// A random case: sizes, whether A and B are transposed views, and the data.
#[derive(Debug, Clone)]
struct Case {
    m: usize,
    n: usize,
    k: usize,
    ta: bool,
    tb: bool,
    a: Vec<f32>,
    b: Vec<f32>,
}

fn case(k: Kernels) -> impl Strategy<Value = Case> {
    let (mr, nr) = k.gemm_tile();
    let sizes = (
        prop_oneof![1 => Just(0usize), 1 => Just(1usize), 6 => 0..=3 * mr + 1],
        prop_oneof![1 => Just(0usize), 1 => Just(1usize), 6 => 0..=3 * nr + 1],
        prop_oneof![1 => Just(0usize), 1 => Just(1usize), 6 => 0usize..=40, 2 => 250usize..=600],
        any::<bool>(),
        any::<bool>(),
    );
    sizes.prop_flat_map(|(m, n, k, ta, tb)| {
        let a = proptest::collection::vec(-1.0f32..1.0, m * k);
        let b = proptest::collection::vec(-1.0f32..1.0, k * n);
        (a, b).prop_map(move |(a, b)| Case {
            m,
            n,
            k,
            ta,
            tb,
            a,
            b,
        })
    })
}

/// A and B as views: stored transposed when asked, then viewed back with `.t()`.
fn views(c: &Case) -> (MatRef<'_>, MatRef<'_>) {
    let a = if c.ta {
        MatRef::row_major(&c.a, c.k, c.m).unwrap().t()
    } else {
        MatRef::row_major(&c.a, c.m, c.k).unwrap()
    };
    let b = if c.tb {
        MatRef::row_major(&c.b, c.n, c.k).unwrap().t()
    } else {
        MatRef::row_major(&c.b, c.k, c.n).unwrap()
    };
    (a, b)
}

fn tolerance(scale: &[f64]) -> impl Fn(usize) -> f32 + '_ {
    |i| (1e-5 * scale[i] + 1e-6) as f32
}

fn check_random(k: Kernels) -> CheckResult {
    prop(case(k), |c| {
        let (a, b) = views(&c);
        let (want, scale) = reference::gemm(a, b);
        let want: Vec<f32> = want.iter().map(|&v| v as f32).collect();
        let mut got = vec![f32::NAN; c.m * c.n];
        k.gemm(
            a,
            b,
            &mut MatMut::row_major(&mut got, c.m, c.n).map_err(fail)?,
            &[],
        )
        .map_err(fail)?;
        close("gemm vs reference", &got, &want, tolerance(&scale))?;
        let mut mm = vec![0.0; c.m * c.n];
        matrixmultiply_gemm(
            a,
            b,
            &mut MatMut::row_major(&mut mm, c.m, c.n).map_err(fail)?,
        )
        .map_err(fail)?;
        close("gemm vs matrixmultiply", &got, &mm, |i| {
            2.0 * tolerance(&scale)(i)
        })
    })
}

fn check_epilogues(k: Kernels) -> CheckResult {
    let strategy = (
        case(k),
        0u8..16,
        proptest::collection::vec(-2.0f32..2.0, 1..4096),
    );
    prop(strategy, |(c, mask, noise)| {
        let (a, b) = views(&c);
        let (m, n) = (c.m, c.n);
        let (prod, scale) = reference::gemm(a, b);
        let at = |i: usize| noise[i % noise.len()];
        let bias: Vec<f32> = (0..m).map(|i| at(i * 7)).collect();
        // The residual and C have a row stride wider than n, to check `ld` is honoured.
        let ld = n + 3;
        let residual: Vec<f32> = (0..m * ld).map(|i| at(i * 13 + 1)).collect();
        let initial: Vec<f32> = (0..m * ld).map(|i| at(i * 5 + 2)).collect();
        let (acc, with_bias, with_res, relu) =
            (mask & 1 != 0, mask & 2 != 0, mask & 4 != 0, mask & 8 != 0);
        let mut steps = Vec::new();
        if acc {
            steps.push(Epilogue::Accumulate);
        }
        if with_bias {
            steps.push(Epilogue::Bias(&bias));
        }
        if with_res {
            steps.push(Epilogue::residual_matrix(&residual, ld));
        }
        if relu {
            steps.push(Epilogue::Relu);
        }
        let mut want = initial.clone();
        let mut tol = vec![0.0f32; m * ld];
        for i in 0..m {
            for j in 0..n {
                let mut v = prod[i * n + j];
                let mut s = scale[i * n + j];
                if acc {
                    v += initial[i * ld + j] as f64;
                    s += initial[i * ld + j].abs() as f64;
                }
                if with_bias {
                    v += bias[i] as f64;
                    s += bias[i].abs() as f64;
                }
                if with_res {
                    v += residual[i * ld + j] as f64;
                    s += residual[i * ld + j].abs() as f64;
                }
                if relu {
                    v = v.max(0.0);
                }
                want[i * ld + j] = v as f32;
                tol[i * ld + j] = (1e-5 * s + 1e-6) as f32;
            }
        }
        let mut got = initial.clone();
        let rows = if m == 0 { 0 } else { m };
        let mut out = MatMut::new(&mut got, rows, n, ld).map_err(fail)?;
        k.gemm(a, b, &mut out, &steps).map_err(fail)?;
        // The padding columns between n and ld must be untouched (tolerance 0 = exact).
        close(&format!("gemm with epilogue {steps:?}"), &got, &want, |i| {
            tol[i]
        })
    })
}

fn check_prepacked(k: Kernels) -> CheckResult {
    prop(case(k), |c| {
        let (a, b) = views(&c);
        let mut direct = vec![0.0; c.m * c.n];
        k.gemm(
            a,
            b,
            &mut MatMut::row_major(&mut direct, c.m, c.n).map_err(fail)?,
            &[],
        )
        .map_err(fail)?;
        let packed = k.pack_a(a);
        let mut pre = vec![0.0; c.m * c.n];
        for _ in 0..2 {
            k.gemm_prepacked(
                &packed,
                b,
                &mut MatMut::row_major(&mut pre, c.m, c.n).map_err(fail)?,
                &[],
            )
            .map_err(fail)?;
            close("prepacked vs direct", &pre, &direct, |_| 0.0)?;
        }
        Ok(())
    })
}

/// Operands with neither stride 1 (every other element of a wider buffer, the gaps
/// holding NaN so that a wrongly read element shows), which the packers copy element
/// by element, and an output whose rows are longer than `n` (its extra columns must be
/// left alone).
fn check_general_strides(k: Kernels) -> CheckResult {
    let (mr, nr) = k.gemm_tile();
    let sizes = (1..=2 * mr + 1, 1..=2 * nr + 1, 1usize..=300, 0usize..4);
    prop(sizes, |(m, n, kk, pad)| {
        // A: element (i, q) at i (2 kk + pad) + 2 q. B: element (q, j) at 2 q + j (2 kk + pad).
        let (ars, acs) = (2 * kk + pad, 2);
        let (brs, bcs) = (2, 2 * kk + pad);
        let value = |i: usize| ((i * 37 % 101) as f32 - 50.0) / 50.0;
        let mut a = vec![f32::NAN; (m - 1) * ars + (kk - 1) * acs + 1];
        let mut b = vec![f32::NAN; (kk - 1) * brs + (n - 1) * bcs + 1];
        for i in 0..m {
            for q in 0..kk {
                a[i * ars + q * acs] = value(i * kk + q);
            }
        }
        for q in 0..kk {
            for j in 0..n {
                b[q * brs + j * bcs] = value(7 + q * n + j);
            }
        }
        let av = MatRef::new(&a, m, kk, ars, acs).map_err(fail)?;
        let bv = MatRef::new(&b, kk, n, brs, bcs).map_err(fail)?;
        let (want, scale) = reference::gemm(av, bv);
        let ld = n + pad;
        let mut got = vec![-7.0f32; m * ld];
        k.gemm(
            av,
            bv,
            &mut MatMut::new(&mut got, m, n, ld).map_err(fail)?,
            &[],
        )
        .map_err(fail)?;
        let mut inside = Vec::with_capacity(m * n);
        for (i, row) in got.chunks(ld).enumerate() {
            inside.extend_from_slice(&row[..n]);
            if row[n..].iter().any(|&v| v != -7.0) {
                return Err(fail(format!("row {i}: a column past n was written")));
            }
        }
        let want: Vec<f32> = want.iter().map(|&v| v as f32).collect();
        close(
            "strided gemm vs reference",
            &inside,
            &want,
            tolerance(&scale),
        )
    })
}

/// Past NC columns, several K blocks, several row blocks, with threads; B packed whole
/// (all of K at once) and, past 2 Mi floats of it, one K block at a time, or (at most
/// MC rows: 7 and 40) panel by panel by the task that uses it.
fn check_large(k: Kernels) -> CheckResult {
    let run = || -> Result<(), TestCaseError> {
        for (m, n, kk) in [
            (150, 2100, 300),
            (512, 49, 700),
            (7, 3000, 5),
            (40, 2100, 1100),
        ] {
            let a: Vec<f32> = (0..m * kk)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
                .collect();
            let b: Vec<f32> = (0..kk * n)
                .map(|i| ((i * 53 % 97) as f32 - 48.0) / 48.0)
                .collect();
            let (av, bv) = (
                MatRef::row_major(&a, m, kk).map_err(fail)?,
                MatRef::row_major(&b, kk, n).map_err(fail)?,
            );
            let (want, scale) = reference::gemm(av, bv);
            let want: Vec<f32> = want.iter().map(|&v| v as f32).collect();
            let mut got = vec![0.0; m * n];
            k.gemm(
                av,
                bv,
                &mut MatMut::row_major(&mut got, m, n).map_err(fail)?,
                &[Epilogue::Relu],
            )
            .map_err(fail)?;
            let want: Vec<f32> = want.iter().map(|v| v.max(0.0)).collect();
            close(
                &format!("large gemm {m}x{n}x{kk}"),
                &got,
                &want,
                tolerance(&scale),
            )?;
        }
        Ok(())
    };
    run().map_err(|e| e.to_string())
}

fn check_errors(k: Kernels) -> CheckResult {
    let a = vec![0.0; 6];
    let b = vec![0.0; 12];
    let mut c = vec![0.0; 8];
    let av = MatRef::row_major(&a, 2, 3).unwrap();
    let bv = MatRef::row_major(&b, 3, 4).unwrap();
    let bad = MatRef::row_major(&b, 4, 3).unwrap();
    let checks = [
        k.gemm(av, bad, &mut MatMut::row_major(&mut c, 2, 4).unwrap(), &[])
            .is_err(),
        k.gemm(
            av,
            bv,
            &mut MatMut::row_major(&mut c, 2, 4).unwrap(),
            &[Epilogue::Bias(&[1.0])],
        )
        .is_err(),
        k.gemm(
            av,
            bv,
            &mut MatMut::row_major(&mut c, 2, 4).unwrap(),
            &[Epilogue::Relu, Epilogue::Accumulate],
        )
        .is_err(),
        // Batch statistics are the NCHW convolution's step, not a GEMM's.
        k.gemm(
            av,
            bv,
            &mut MatMut::row_major(&mut c, 2, 4).unwrap(),
            &[Epilogue::Statistics(&tensor::StatsSink::new())],
        )
        .is_err(),
        k.gemm(
            av,
            bv,
            &mut MatMut::row_major(&mut c, 2, 4).unwrap(),
            &[Epilogue::residual_matrix(&a, 4)],
        )
        .is_err(),
        MatRef::row_major(&a, 3, 3).is_err(),
        MatMut::new(&mut c, 2, 4, 5).is_err(),
    ];
    match checks.iter().position(|ok| !ok) {
        None => Ok(()),
        Some(i) => Err(format!("bad input {i} was accepted")),
    }
}

fn check_linear(k: Kernels) -> CheckResult {
    let strategy = (
        0usize..=5,
        1usize..=70,
        0usize..=60,
        any::<bool>(),
        any::<u64>(),
    );
    prop(strategy, |(n, inp, out, with_bias, seed)| {
        let x = Tensor::randn(&[n, inp], 0.0, 1.0, seed).map_err(fail)?;
        let w = Tensor::randn(&[out, inp], 0.0, 0.3, seed ^ 1).map_err(fail)?;
        let bias: Vec<f32> = (0..out).map(|o| 0.1 * o as f32 - 1.0).collect();
        let b = with_bias.then_some(&bias[..]);
        let want = reference::linear(&x, &w, b).map_err(fail)?;
        let packed = k.pack_linear_weights(&w).map_err(fail)?;
        let got = k.linear(&x, &packed, b).map_err(fail)?;
        prop_assert_eq!(got.shape(), want.shape());
        // |x| <= ~5, |w| <= ~1.5: the error scale is below 10 per product.
        close("linear", got.data(), want.data(), |_| {
            1e-5 * (10.0 * inp as f32 + 1.0)
        })?;
        // A wrong input width is an error, not a panic.
        let bad = Tensor::zeros(&[n.max(1), inp + 1]).map_err(fail)?;
        prop_assert!(k.linear(&bad, &packed, b).is_err());
        Ok(())
    })
}

fn main() {
    common::run("gemm_matches_reference", CHECKS);
}
