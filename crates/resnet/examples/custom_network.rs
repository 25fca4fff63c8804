//! A network of your own from the engine's operations (`resnet::tensor`): a small
//! convolutional classifier, run forward with batch norm folded into the convolutions
//! and the ReLU fused into their epilogue, as the ResNets run.
//!
//! ```sh
//! cargo run --release -p resnet --example custom_network
//! ```

use resnet::tensor::{fold_batch_norm, Conv2d, ConvPlan, Epilogue, Mode, Pool2d};
use resnet::{Kernels, Tensor};

/// conv 3x3 (3 -> 16) + BN + ReLU, max pool, conv 3x3 (16 -> 32, stride 2) + BN + ReLU,
/// global average pool, linear (32 -> 10).
fn main() -> Result<(), resnet::Error> {
    let k = Kernels::active()?;
    println!("kernels: {}", k.isa());
    let x = Tensor::randn(&[4, 3, 32, 32], 0.0, 1.0, 1)?; // a batch of 4 RGB 32x32 images

    // A convolution with its batch norm (random here; trained weights in practice),
    // folded into the convolution's weights and bias once, then packed for its route.
    let layer = |cin: usize, cout: usize, stride: usize, seed: u64| {
        let w = Tensor::randn(
            &[cout, cin, 3, 3],
            0.0,
            (2.0 / (9 * cin) as f32).sqrt(),
            seed,
        )?;
        let (gamma, beta) = (vec![1.0f32; cout], vec![0.0f32; cout]);
        let (mean, var) = (vec![0.0f32; cout], vec![1.0f32; cout]);
        let (w, b) = fold_batch_norm(&w, None, &gamma, &beta, &mean, &var, 1e-5)?;
        let plan = ConvPlan::new(
            &k,
            w.dims4("conv")?,
            Conv2d::new(stride, 1),
            Mode::Inference,
        )?;
        Ok::<_, resnet::Error>((k.pack_conv(&plan, &w)?, b))
    };
    let (w1, b1) = layer(3, 16, 1, 2)?;
    let (w2, b2) = layer(16, 32, 2, 3)?;
    let fc_w = k.pack_linear_weights(&Tensor::randn(&[10, 32], 0.0, 0.1, 4)?)?;
    let fc_b = vec![0.0f32; 10];

    let y = k.conv2d(&x, &w1, &[Epilogue::Bias(&b1), Epilogue::Relu])?; // [4, 16, 32, 32]
    let y = k.max_pool2d(&y, &Pool2d::square(2, 2, 0))?; // [4, 16, 16, 16]
    let y = k.conv2d(&y, &w2, &[Epilogue::Bias(&b2), Epilogue::Relu])?; // [4, 32, 8, 8]
    let y = k.global_avg_pool(&y)?; // [4, 32]
    let logits = k.linear(&y, &fc_w, Some(&fc_b))?; // [4, 10]
    println!("logits {:?}", logits.shape());
    for (i, row) in logits.data().chunks(10).enumerate() {
        let (class, p) = resnet::top_k(row, 1)[0];
        println!("image {i}: class {class} with probability {p:.3}");
    }
    Ok(())
}
