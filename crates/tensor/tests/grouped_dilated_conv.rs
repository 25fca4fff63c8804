//! Grouped convolution (`Conv2d::groups`, ResNeXt's 3x3 layers) and dilated convolution
//! (`Conv2d::dilation`, torchvision's dilated backbones) against the `f64` reference
//! (`reference::conv2d_with`, `reference::conv2d_backward_with`), in every ISA tier this
//! CPU has: random group counts and channels per group, dilations, kernels, strides and
//! paddings; the forward through every route its group (or phase) plan can run (forced),
//! with bias, residual, ReLU and accumulation; the batch statistics and the normalised
//! input of training; `dX` (new and accumulated) and `dW` through every input-gradient
//! and weight-gradient route. Outputs start as NaNs. Tolerances as in `conv_routes.rs`:
//! `1e-5` of the sum of the products' magnitudes, plus `1e-6`.

mod common;

use common::{close, fail, prop, Check, CheckResult};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use tensor::{
    reference, Conv2d, ConvBackward, ConvPlan, Epilogue, Forward, InputGrad, Kernels, Layout, Mode,
    Tensor, WeightGrad,
};

#[derive(Debug, Clone, Copy)]
struct Case {
    n: usize,
    groups: usize,
    /// Input and output channels per group.
    cg: usize,
    og: usize,
    h: usize,
    w: usize,
    k: usize,
    s: usize,
    pad: usize,
    dilation: usize,
    seed: u64,
}

impl Case {
    fn conv(&self) -> Conv2d {
        Conv2d::new(self.s, self.pad)
            .with_groups(self.groups)
            .with_dilation(self.dilation)
    }
    fn input(&self) -> [usize; 4] {
        [self.n, self.groups * self.cg, self.h, self.w]
    }
    fn weights(&self) -> [usize; 4] {
        [self.groups * self.og, self.cg, self.k, self.k]
    }
}

fn cases() -> impl Strategy<Value = Case> {
    (
        1usize..=3,
        1usize..=5,
        prop::sample::select(vec![1usize, 2, 3, 4, 8]),
        prop::sample::select(vec![1usize, 2, 4, 8, 17]),
        (1usize..=9, 0usize..=3),
        prop::sample::select(vec![1usize, 3, 5]),
        1usize..=2,
        0usize..=2,
        any::<u64>(),
    )
        .prop_map(|(n, groups, cg, og, (size, extra), k, s, pad, seed)| Case {
            n,
            groups,
            cg,
            og,
            h: size.max(k),
            w: size.max(k) + extra,
            k,
            s,
            pad: pad.min(k / 2),
            dilation: 1,
            seed,
        })
}

/// Dilated "same" convolutions (stride 1, padding `d (k - 1) / 2`), grouped or not, on
/// images smaller and larger than the dilation (empty phases, phases of unequal sizes).
fn dilated_cases() -> impl Strategy<Value = Case> {
    (
        1usize..=2,
        1usize..=3,
        1usize..=4,
        1usize..=9,
        (1usize..=13, 0usize..=3),
        prop::sample::select(vec![1usize, 3, 5]),
        2usize..=4,
        any::<u64>(),
    )
        .prop_map(|(n, groups, cg, og, (size, extra), k, d, seed)| Case {
            n,
            groups,
            cg,
            og,
            h: size,
            w: size + extra,
            k,
            s: 1,
            pad: d * (k - 1) / 2,
            dilation: d,
            seed,
        })
}

fn tol(scale: &[f64]) -> impl Fn(usize) -> f32 + '_ {
    |i| (1e-5 * scale[i] + 1e-6) as f32
}

fn forward(kern: Kernels, c: Case) -> Result<(), TestCaseError> {
    let x = Tensor::randn(&c.input(), 0.0, 1.0, c.seed).map_err(fail)?;
    let w = Tensor::randn(&c.weights(), 0.0, 0.5, c.seed ^ 1).map_err(fail)?;
    let o = c.groups * c.og;
    let bias: Vec<f32> = (0..o).map(|i| (i as f32 * 0.37).sin()).collect();
    let (pre, scale) = reference::conv2d_with(&x, &w, Some(&bias), c.conv()).map_err(fail)?;
    let residual = Tensor::randn(pre.shape(), 0.0, 1.0, c.seed ^ 2).map_err(fail)?;
    let want: Vec<f32> = pre
        .data()
        .iter()
        .zip(residual.data())
        .map(|(p, r)| (p + r).max(0.0))
        .collect();
    let steps = [
        Epilogue::Bias(&bias),
        Epilogue::residual(&residual),
        Epilogue::Relu,
    ];
    let plan = ConvPlan::new(&kern, c.weights(), c.conv(), Mode::Inference).map_err(fail)?;
    let routes = plan.routes(c.input()).map_err(fail)?;
    prop_assert_eq!(routes.groups, c.groups);
    prop_assert_eq!(routes.dilation, if c.k > 1 { c.dilation } else { 1 });
    let mut ran = 0;
    // (Winograd, not exact, is checked at its own tolerance in `conv_routes.rs`.)
    for route in Forward::ALL
        .into_iter()
        .filter(|r| !matches!(r, Forward::Blocked | Forward::Winograd))
    {
        let forced = plan.force_forward(route);
        if forced.routes(c.input()).is_err() {
            continue;
        }
        ran += 1;
        let packed = kern.pack_conv(&forced, &w).map_err(fail)?;
        let mut y = Tensor::full(pre.shape(), f32::NAN).map_err(fail)?;
        kern.conv2d_into(&x, &packed, &steps, &mut y)
            .map_err(fail)?;
        close(
            &format!("grouped {route} {c:?}"),
            y.data(),
            &want,
            tol(&scale),
        )?;
        // Accumulating onto the output's previous contents, group by group.
        let y0 = Tensor::randn(pre.shape(), 0.0, 1.0, c.seed ^ 3).map_err(fail)?;
        let mut y = y0.clone();
        kern.conv2d_into(
            &x,
            &packed,
            &[Epilogue::Accumulate, Epilogue::Bias(&bias)],
            &mut y,
        )
        .map_err(fail)?;
        let want_acc: Vec<f32> = pre
            .data()
            .iter()
            .zip(y0.data())
            .map(|(p, a)| p + a)
            .collect();
        close(
            &format!("grouped {route} accumulating {c:?}"),
            y.data(),
            &want_acc,
            |i| tol(&scale)(i) + 1e-6 * y0.data()[i].abs(),
        )?;
    }
    prop_assert!(ran > 0, "no route ran {:?}", c);
    Ok(())
}

/// Training's forward: the batch statistics of the output, and an input normalised on
/// the way in (`relu(scale x + shift)` per input channel).
fn training_forward(kern: Kernels, c: Case) -> Result<(), TestCaseError> {
    let x = Tensor::randn(&c.input(), 0.0, 1.0, c.seed).map_err(fail)?;
    let w = Tensor::randn(&c.weights(), 0.0, 0.5, c.seed ^ 1).map_err(fail)?;
    let ch = c.groups * c.cg;
    let scale: Vec<f32> = (0..ch)
        .map(|i| 0.5 + (i as f32 * 0.7).cos().abs())
        .collect();
    let shift: Vec<f32> = (0..ch).map(|i| (i as f32 * 0.3).sin() * 0.5).collect();
    let normalised = kern
        .scale_shift(&x, &scale, &shift, &[Epilogue::Relu])
        .map_err(fail)?;
    let (want, tols) = reference::conv2d_with(&normalised, &w, None, c.conv()).map_err(fail)?;
    let plan = ConvPlan::new(&kern, c.weights(), c.conv(), Mode::Training).map_err(fail)?;
    let packed = kern.pack_conv(&plan, &w).map_err(fail)?;
    let (y, stats) = kern
        .conv2d_with_stats(&x, &packed, Some([&scale, &shift]))
        .map_err(fail)?;
    close(
        &format!("normalised {c:?}"),
        y.data(),
        want.data(),
        tol(&tols),
    )?;
    let direct = kern.channel_stats(&y).map_err(fail)?;
    prop_assert_eq!(stats.count, direct.count);
    for (i, (a, b)) in stats.mean.iter().zip(&direct.mean).enumerate() {
        prop_assert!(
            (a - b).abs() <= 1e-5 * (1.0 + b.abs()),
            "mean {}: {} vs {}",
            i,
            a,
            b
        );
    }
    for (i, (a, b)) in stats.var.iter().zip(&direct.var).enumerate() {
        prop_assert!(
            (a - b).abs() <= 1e-4 * (1e-3 + b.abs()),
            "var {}: {} vs {}",
            i,
            a,
            b
        );
    }
    Ok(())
}

fn backward(kern: Kernels, c: Case) -> Result<(), TestCaseError> {
    let x = Tensor::randn(&c.input(), 0.0, 1.0, c.seed).map_err(fail)?;
    let w = Tensor::randn(&c.weights(), 0.0, 0.5, c.seed ^ 1).map_err(fail)?;
    let plan = ConvPlan::new(&kern, c.weights(), c.conv(), Mode::Training).map_err(fail)?;
    let [oh, ow] = c.conv().output_size(c.h, c.w, c.k, c.k).map_err(fail)?;
    let dy = Tensor::randn(&[c.n, c.groups * c.og, oh, ow], 0.0, 1.0, c.seed ^ 4).map_err(fail)?;
    let (want_dx, want_dw) =
        reference::conv2d_backward_with(&x, &w, &dy, c.conv()).map_err(fail)?;
    // Magnitude bounds: each dX element sums og k^2 / s^2 products, each dW element
    // N OH OW; 1e-5 of a generous bound of their sums of magnitudes.
    let dx_tol = 1e-5 * (c.og * c.k * c.k) as f32 * 2.0 + 1e-6;
    let dw_tol = 1e-5 * (c.n * oh * ow) as f32 * 2.0 + 1e-6;
    let mut ran = 0;
    // (Winograd, not exact, is checked at its own tolerance in `conv_routes.rs`.)
    for dx_route in InputGrad::ALL
        .into_iter()
        .filter(|r| *r != InputGrad::Winograd)
    {
        for dw_route in WeightGrad::ALL {
            let forced = plan.force_input_grad(dx_route).force_weight_grad(dw_route);
            if forced.routes(c.input()).is_err() {
                continue;
            }
            ran += 1;
            let g = kern
                .conv2d_backward(&x, &w, &dy, &forced, ConvBackward::default())
                .map_err(fail)?;
            let name = format!("{dx_route} / {dw_route} {c:?}");
            let dx = g.dx.expect("dX asked for");
            let dw = g.dw.expect("dW asked for");
            close(&format!("dX {name}"), dx.data(), want_dx.data(), |_| dx_tol)?;
            close(&format!("dW {name}"), dw.data(), want_dw.data(), |_| dw_tol)?;
            // Added into another consumer's gradient.
            let acc0 = Tensor::randn(x.shape(), 0.0, 1.0, c.seed ^ 5).map_err(fail)?;
            let g = kern
                .conv2d_backward(
                    &x,
                    &w,
                    &dy,
                    &forced,
                    ConvBackward::default().adding_dx_into(acc0.clone()),
                )
                .map_err(fail)?;
            let want_sum: Vec<f32> = want_dx
                .data()
                .iter()
                .zip(acc0.data())
                .map(|(a, b)| a + b)
                .collect();
            let got = g.dx.expect("dX asked for");
            close(&format!("dX added {name}"), got.data(), &want_sum, |_| {
                dx_tol
            })?;
        }
    }
    prop_assert!(ran > 0, "no backward route ran {:?}", c);
    Ok(())
}

fn check_forward(k: Kernels) -> CheckResult {
    prop(cases(), |c| forward(k, c))
}

fn check_training_forward(k: Kernels) -> CheckResult {
    prop(cases(), |c| training_forward(k, c))
}

fn check_backward(k: Kernels) -> CheckResult {
    prop(cases(), |c| backward(k, c))
}

fn check_dilated_forward(k: Kernels) -> CheckResult {
    prop(dilated_cases(), |c| forward(k, c))
}

fn check_dilated_training_forward(k: Kernels) -> CheckResult {
    prop(dilated_cases(), |c| training_forward(k, c))
}

fn check_dilated_backward(k: Kernels) -> CheckResult {
    prop(dilated_cases(), |c| backward(k, c))
}

/// The dilated 3x3 layers of torchvision's `replace_stride_with_dilation` ResNet-50
/// (dilation 2 and 4, padding the same), and one grouped as ResNeXt's would be.
fn check_dilated_resnet_layers(k: Kernels) -> CheckResult {
    for (i, &(groups, cg, d, size)) in [(1, 8, 2, 9), (1, 8, 4, 9), (4, 4, 2, 7)]
        .iter()
        .enumerate()
    {
        let c = Case {
            n: 2,
            groups,
            cg,
            og: cg,
            h: size,
            w: size,
            k: 3,
            s: 1,
            pad: d,
            dilation: d,
            seed: i as u64,
        };
        forward(k, c).map_err(|e| format!("{c:?}: {e}"))?;
        training_forward(k, c).map_err(|e| format!("{c:?}: {e}"))?;
        backward(k, c).map_err(|e| format!("{c:?}: {e}"))?;
    }
    Ok(())
}

/// ResNeXt's grouped 3x3 layers (`32x4d`, `32x8d`, `64x4d`: 4 to 64 channels a group,
/// stride 1 and 2), at small sizes.
fn check_resnext_layers(k: Kernels) -> CheckResult {
    let layers = [
        (32, 4, 1, 6),
        (32, 4, 2, 7),
        (32, 8, 1, 5),
        (64, 4, 2, 5),
        (32, 16, 1, 3),
        (32, 32, 2, 3),
    ];
    for (i, &(groups, cg, s, size)) in layers.iter().enumerate() {
        let c = Case {
            n: 2,
            groups,
            cg,
            og: cg,
            h: size,
            w: size,
            k: 3,
            s,
            pad: 1,
            dilation: 1,
            seed: i as u64,
        };
        forward(k, c).map_err(|e| format!("{c:?}: {e}"))?;
        backward(k, c).map_err(|e| format!("{c:?}: {e}"))?;
    }
    Ok(())
}

/// Bad geometry is refused by name: output channels that do not split into the
/// groups, an input of the wrong channel count, zero groups, the blocked layout.
fn check_refusals(k: Kernels) -> CheckResult {
    let err = |r: Result<ConvPlan, tensor::TensorError>| match r {
        Ok(_) => Err("accepted".to_string()),
        Err(e) => Ok(e.to_string()),
    };
    let e = err(ConvPlan::new(
        &k,
        [6, 2, 3, 3],
        Conv2d::new(1, 1).with_groups(4),
        Mode::Inference,
    ))?;
    if !e.contains("4 equal groups") {
        return Err(e);
    }
    let e = err(ConvPlan::new(
        &k,
        [6, 2, 3, 3],
        Conv2d::new(1, 1).with_groups(0),
        Mode::Inference,
    ))?;
    if !e.contains("groups") {
        return Err(e);
    }
    let plan = ConvPlan::new(
        &k,
        [6, 2, 3, 3],
        Conv2d::new(1, 1).with_groups(3),
        Mode::Inference,
    )
    .map_err(|e| e.to_string())?;
    if plan.routes([1, 5, 4, 4]).is_ok() {
        return Err("an input of 5 channels for 3 groups of 2 was accepted".into());
    }
    let e = err(plan.in_layout(Layout::Blocked))?;
    if !e.contains("blocked layout") {
        return Err(e);
    }
    // Dilation: only "same" layers (stride 1, padding d (k - 1) / 2) for now.
    for conv in [
        Conv2d::new(2, 2).with_dilation(2),
        Conv2d::new(1, 1).with_dilation(2),
        Conv2d::new(1, 0).with_dilation(0),
    ] {
        let e = err(ConvPlan::new(&k, [4, 4, 3, 3], conv, Mode::Inference))?;
        if !e.contains("dilat") {
            return Err(e);
        }
    }
    Ok(())
}

/// Dilated layers in the blocked layout, whose kernel reads the dilated taps in place
/// (no phases), grouped too where the groups fit the blocks; against the reference, with
/// bias, residual and ReLU.
fn check_blocked_dilated(k: Kernels) -> CheckResult {
    let l = k.lanes();
    let cases = (
        1usize..=2,
        prop::sample::select(vec![1usize, 2, 4]),
        1usize..=2,
        prop::sample::select(vec![3usize, 5]),
        2usize..=4,
        1usize..=12,
        any::<u64>(),
    );
    prop(cases, |(n, split, blocks, kk, d, size, seed)| {
        // Dense, or `split` groups per block (narrow groups sharing each block).
        let c = blocks * l;
        let cg = if split > 1 && l.is_multiple_of(split) {
            l / split
        } else {
            c
        };
        let groups = c / cg;
        let conv = Conv2d::new(1, d * (kk - 1) / 2)
            .with_groups(groups)
            .with_dilation(d);
        let plan = ConvPlan::new(&k, [c, cg, kk, kk], conv, Mode::Inference)
            .and_then(|p| p.in_layout(Layout::Blocked))
            .map_err(fail)?;
        let input = [n, c, size, size + 1];
        let routes = plan.routes(input).map_err(fail)?;
        prop_assert_eq!(routes.layout, Layout::Blocked);
        prop_assert_eq!(routes.dilation, 1, "no phases in the blocked layout");
        let x = Tensor::randn(&input, 0.0, 1.0, seed).map_err(fail)?;
        let w = Tensor::randn(&[c, cg, kk, kk], 0.0, 0.5, seed ^ 1).map_err(fail)?;
        let bias: Vec<f32> = (0..c).map(|i| (i as f32 * 0.37).sin()).collect();
        let (pre, scale) = reference::conv2d_with(&x, &w, Some(&bias), conv).map_err(fail)?;
        let residual = Tensor::randn(pre.shape(), 0.0, 1.0, seed ^ 2).map_err(fail)?;
        let want: Vec<f32> = pre
            .data()
            .iter()
            .zip(residual.data())
            .map(|(p, r)| (p + r).max(0.0))
            .collect();
        let rb = k.to_blocked(&residual).map_err(fail)?;
        let steps = [
            Epilogue::Bias(&bias),
            Epilogue::residual_blocked(&rb),
            Epilogue::Relu,
        ];
        let packed = k.pack_conv(&plan, &w).map_err(fail)?;
        let xb = k.to_blocked(&x).map_err(fail)?;
        let y = k.blocked_conv2d(&xb, &packed, &steps).map_err(fail)?;
        let got = k.from_blocked(&y).map_err(fail)?;
        close(
            &format!("blocked dilated {groups} groups of {cg}, k{kk} d{d} {input:?}"),
            got.data(),
            &want,
            |i| (1e-5 * (scale[i] + residual.data()[i].abs() as f64) + 1e-6) as f32,
        )
    })
}

const CHECKS: &[(&str, Check)] = &[
    (
        "grouped_forward_every_route_equals_reference",
        check_forward,
    ),
    (
        "grouped_training_forward_normalised_with_statistics",
        check_training_forward,
    ),
    (
        "grouped_backward_every_route_equals_reference",
        check_backward,
    ),
    (
        "resnext_grouped_layers_equal_reference",
        check_resnext_layers,
    ),
    (
        "dilated_forward_every_route_equals_reference",
        check_dilated_forward,
    ),
    (
        "dilated_training_forward_normalised_with_statistics",
        check_dilated_training_forward,
    ),
    (
        "dilated_backward_every_route_equals_reference",
        check_dilated_backward,
    ),
    (
        "dilated_resnet_layers_equal_reference",
        check_dilated_resnet_layers,
    ),
    (
        "dilated_in_the_blocked_layout_equals_reference",
        check_blocked_dilated,
    ),
    (
        "grouped_and_dilated_geometry_refused_by_name",
        check_refusals,
    ),
];

fn main() {
    common::run("grouped_dilated_conv", CHECKS);
}
