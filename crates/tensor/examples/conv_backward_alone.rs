//! A convolution's `dX` and `dW` timed alone (the ladder's routes, and `dW` forced to
//! `gemm-images`, with its largest difference from the ladder's `dW`), on the layer shapes
//! whose `dW` route the ladder picks by batch and plane size: ResNet-50's, ResNet-18's
//! and ResNet-20's. Both read a normalised input (a fused batch norm + ReLU), as in
//! training.
//!
//! `N=8 cargo run --release -p resnet-tensor --example conv_backward_alone [FILTER]`
//! (`N`: the batch, default 8; 2 threads; `FILTER`: only layers whose name contains it).
//! Best of 8 calls each, on a rayon worker as the trainer runs them.

use std::time::Instant;
use tensor::{Conv2d, ConvBackward, ConvPlan, Kernels, Mode, Tensor, WeightGrad};

fn best<F: FnMut()>(mut f: F, n: usize) -> f64 {
    let mut b = f64::MAX;
    for _ in 0..n {
        let t = Instant::now();
        f();
        b = b.min(t.elapsed().as_secs_f64() * 1e3);
    }
    b
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let k = Kernels::active()?;
    let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build()?;
    let n: usize = std::env::var("N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    let only: Option<String> = std::env::args().nth(1);
    for (name, c, o, kk, s, hw) in [
        ("l1 64->256 1x1", 64, 256, 1, 1, 56),
        ("l1 256->64 1x1", 256, 64, 1, 1, 56),
        ("l2.0 ds 256->512 s2", 256, 512, 1, 2, 56),
        ("l3.0 ds 512->1024 s2", 512, 1024, 1, 2, 28),
        ("l2.0 conv2 3x3 s2", 128, 128, 3, 2, 56),
        ("l4.0 conv2 3x3 s2", 512, 512, 3, 2, 14),
        ("l4.1 conv2 3x3 s1", 512, 512, 3, 1, 7),
        ("l3 3x3 s1", 256, 256, 3, 1, 14),
        ("p 1x1 2048->512 at 7", 2048, 512, 1, 1, 7),
        ("p 1x1 512->2048 at 7", 512, 2048, 1, 1, 7),
        ("p 1x1 1024->2048 s2", 1024, 2048, 1, 2, 14),
        ("l3.0 conv2 3x3 s2", 256, 256, 3, 2, 28),
        ("r20 l3 3x3 64", 64, 64, 3, 1, 8),
        ("r20 l3.0 3x3 s2", 32, 64, 3, 2, 16),
        ("r20 l2 3x3 32", 32, 32, 3, 1, 16),
        ("r20 l1 3x3 16", 16, 16, 3, 1, 32),
        ("x 3x3 256 at 7", 256, 256, 3, 1, 7),
        ("x 3x3 128 at 7", 128, 128, 3, 1, 7),
        ("x 3x3 128 at 8", 128, 128, 3, 1, 8),
        ("x 3x3 256 at 8", 256, 256, 3, 1, 8),
    ] {
        if let Some(o) = &only {
            if !name.contains(o.as_str()) {
                continue;
            }
        }
        let p = kk / 2;
        let x = Tensor::randn(&[n, c, hw, hw], 0.0, 1.0, 3)?;
        let w = Tensor::randn(&[o, c, kk, kk], 0.0, 0.1, 4)?;
        let conv = Conv2d::new(s, p);
        let [oh, ow] = conv.output_size(hw, hw, kk, kk)?;
        let plan = ConvPlan::new(&k, [o, c, kk, kk], conv, Mode::Training)?;
        let gy = Tensor::randn(&[n, o, oh, ow], 0.0, 1.0, 5)?;
        let sc = vec![1.1f32; c];
        let sh = vec![0.05f32; c];
        let aff = [&sc[..], &sh[..]];
        let flops = 2.0 * (n * o * oh * ow * c * kk * kk) as f64;
        let gp = plan.force_weight_grad(WeightGrad::Gemm);
        // One backward on a rayon worker, as the trainer runs it.
        let run = |plan: &ConvPlan, dx: bool, dw: bool| {
            pool.install(|| {
                k.conv2d_backward(&x, &w, &gy, plan, ConvBackward::new(dx, dw).normalised(aff))
                    .unwrap()
            })
        };
        let time = |plan: &ConvPlan, dx: bool, dw: bool| {
            best(
                || {
                    run(plan, dx, dw);
                },
                8,
            )
        };
        let dx = time(&plan, true, false);
        let dw = time(&plan, false, true);
        let both = time(&plan, true, true);
        let dwg = time(&gp, false, true);
        let (a, b) = (
            run(&plan, false, true).dw.unwrap(),
            run(&gp, false, true).dw.unwrap(),
        );
        let err = a
            .data()
            .iter()
            .zip(b.data())
            .map(|(p, q)| (p - q).abs())
            .fold(0f32, f32::max);
        let mx = a.data().iter().map(|p| p.abs()).fold(0f32, f32::max);
        println!(
            "{name:<24} dW gemm {dwg:7.2} ms ({:5.1} GF/s) err {:.2e}",
            flops / dwg / 1e6,
            err / mx
        );
        println!("{name:<24} dX {dx:7.2} ms ({:5.1} GF/s)  dW {dw:7.2} ms ({:5.1} GF/s)  both {both:7.2}", flops / dx / 1e6, flops / dw / 1e6);
    }
    Ok(())
}
