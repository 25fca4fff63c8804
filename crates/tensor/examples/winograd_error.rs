//! Winograd's rounding error, F(4x4, 3x3) (its weights kept, transformed in `f64`, and
//! transformed per call in `f32`: `blocked-winograd-on-the-fly`) and F(2x2, 3x3), on
//! every 3x3, stride-1 layer shape of ResNet-18/50 (64 channels at 56 x 56, 128 at 28,
//! 256 at 14, 512 at 7),
//! against the `f64` reference, next to the direct blocked kernel's on the same
//! operands.
//!
//! `cargo run --release -p resnet-tensor --example winograd_error`
//!
//! Inputs are post-ReLU activations (a standard normal, negatives zeroed), weights He
//! initialised (`N(0, 2 / (9 C))`), as a trained network's are in scale. Errors are
//! relative to the largest output magnitude (max) and to the outputs' RMS (rms).

use tensor::{reference, Conv2d, ConvPlan, Forward, Kernels, Layout, Mode, Tensor};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let k = Kernels::active()?;
    println!("tier {}", k.isa());
    println!(
        "{:<18} {:>12} {:>12} {:>12} {:>12} {:>12} {:>12} {:>12} {:>12}",
        "layer",
        "direct max",
        "direct rms",
        "F4x4 max",
        "F4x4 rms",
        "fly max",
        "fly rms",
        "F2x2 max",
        "F2x2 rms"
    );
    for (c, hw) in [(64, 56), (128, 28), (256, 14), (512, 7)] {
        let mut x = Tensor::randn(&[1, c, hw, hw], 0.0, 1.0, 7)?;
        x.data_mut().iter_mut().for_each(|v| *v = v.max(0.0));
        let w = Tensor::randn(&[c, c, 3, 3], 0.0, (2.0 / (9.0 * c as f32)).sqrt(), 8)?;
        let (want, _) = reference::conv2d(&x, &w, None, 1, 1)?;
        let peak = want
            .data()
            .iter()
            .fold(0.0f64, |m, v| m.max(v.abs() as f64));
        let rms = (want.data().iter().map(|v| (*v as f64).powi(2)).sum::<f64>()
            / want.len() as f64)
            .sqrt();
        let mut row = Vec::new();
        for route in [
            Forward::Blocked,
            Forward::BlockedWinograd,
            Forward::BlockedWinogradOnTheFly,
            Forward::BlockedWinograd2,
        ] {
            let plan = ConvPlan::new(&k, [c, c, 3, 3], Conv2d::new(1, 1), Mode::Inference)?
                .in_layout(Layout::Blocked)?
                .force_forward(route);
            let packed = k.pack_conv(&plan, &w)?;
            let y = k.blocked_conv2d(&k.to_blocked(&x)?, &packed, &[])?;
            let got = k.from_blocked(&y)?;
            let (mut worst, mut sq) = (0.0f64, 0.0f64);
            for (g, r) in got.data().iter().zip(want.data()) {
                let e = (*g as f64 - *r as f64).abs();
                worst = worst.max(e);
                sq += e * e;
            }
            row.push(worst / peak);
            row.push((sq / want.len() as f64).sqrt() / rms);
        }
        print!("{:<18}", format!("{c}ch {hw}x{hw}"));
        for v in row {
            print!(" {v:>12.2e}");
        }
        println!();
    }
    Ok(())
}
