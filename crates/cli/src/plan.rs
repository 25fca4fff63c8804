//! `resnet info --plan ARCH`: the convolution plan of every layer of a network, as the
//! library makes it (`ConvBn::plan`, the same call `InferenceModel` and the training
//! tape make), resolved for the input shape asked for.

use resnet::{Arch, InferenceModel, ResNet};
use tensor::{Kernels, Layout, Mode};

use crate::emit;

/// The input a plan is listed for, and the backbone's output stride.
pub struct Shape {
    /// Images per batch.
    pub batch: usize,
    /// Image side (default: the architecture's own).
    pub size: Option<usize>,
    /// 32 (plain), 16 or 8 (dilated stages).
    pub output_stride: usize,
}

/// Prints the plan of `arch` for a batch of `shape.batch` images of `shape.size`, for
/// training or inference.
pub fn print(
    k: &Kernels,
    arch: Arch,
    shape: Shape,
    train: bool,
    json: bool,
) -> Result<(), Box<dyn std::error::Error>> {
    let batch = shape.batch;
    let size = shape.size.unwrap_or(if arch.is_cifar() { 32 } else { 224 });
    let classes = if arch.is_cifar() { 10 } else { 1000 };
    let mut model = ResNet::new(arch, classes, 0)?;
    if shape.output_stride != 32 {
        model.set_output_stride(shape.output_stride)?;
    }
    let (mode, layout) = if train {
        (Mode::Training, Layout::Nchw)
    } else {
        (Mode::Inference, InferenceModel::default_layout(&model))
    };
    let what = if train { "training" } else { "inference" };
    if !json {
        emit(&format!(
            "convolution plan of {arch}, {what}, batch {batch}, {size}x{size} input, tier {} \
             ({} lanes), {layout} layout asked",
            k.isa(),
            k.lanes()
        ))?;
        let mut header = format!(
            "{:<22} {:>16} {:>16} {:>7}  {:<7} {:<16} {:<22}",
            "layer", "input", "weights", "s/pad", "layout", "forward", "microkernel"
        );
        if train {
            header += &format!(
                " {:<26} {:<22} {:<14} {}",
                "dX", "microkernel", "dW", "microkernel"
            );
        }
        emit(header.trim_end())?;
    }
    // Winograd where it costs memory, as `InferenceModel` decides it for the network by
    // default for this batch (inference only).
    let options = resnet::InferenceOptions {
        layout: Some(layout),
        image_size: [size, size],
        ..resnet::InferenceOptions::for_batch(batch)
    };
    let spend = !train && InferenceModel::winograd_memory_spent(k, &model, options).is_some();
    for layer in model.conv_layers([batch, 3, size, size])? {
        // The stem runs in NCHW in every layout (`ConvLayer::in_stem`).
        let layer_layout = if layer.in_stem { Layout::Nchw } else { layout };
        // Planned for the input it meets here, as `InferenceModel` plans each layer for
        // its image size.
        let plan = layer
            .conv
            .plan(k, mode, layer_layout)?
            .with_planned_input(layer.input[2], layer.input[3])
            .with_winograd_memory(spend);
        let routes = plan.routes(layer.input)?;
        let weights = plan.weights_shape();
        let conv = plan.conv();
        let fwd_kernel = routes.forward.microkernel(k);
        let dx = routes.input_grad.map(|r| (r.to_string(), r.microkernel(k)));
        let dw = routes
            .weight_grad
            .map(|r| (r.to_string(), r.microkernel(k, weights[0])));
        let shape = |s: [usize; 4]| format!("{}x{}x{}x{}", s[0], s[1], s[2], s[3]);
        if json {
            let pick = |v: &Option<(String, String)>, i: usize| {
                v.as_ref()
                    .map(|p| if i == 0 { p.0.clone() } else { p.1.clone() })
            };
            emit(
                &serde_json::json!({
                    "arch": arch.to_string(), "mode": what, "layer": layer.name,
                    "input": layer.input, "weights": weights, "stride": conv.stride,
                    "padding": conv.padding, "groups": routes.groups,
                    "dilation": routes.dilation,
                    "layout": routes.layout.to_string(),
                    "forward": routes.forward.to_string(), "forward_kernel": fwd_kernel.to_string(),
                    "dx": pick(&dx, 0), "dx_kernel": pick(&dx, 1),
                    "dw": pick(&dw, 0), "dw_kernel": pick(&dw, 1),
                })
                .to_string(),
            )?;
        } else {
            let mut line = format!(
                "{:<22} {:>16} {:>16} {:>7}  {:<7} {:<16} {:<22}",
                layer.name,
                shape(layer.input),
                shape(weights),
                format!("{}/{}", conv.stride, conv.padding),
                routes.layout.to_string(),
                // A grouped layer runs its routes once per group, a dilated one once per
                // phase of the image.
                match (routes.groups, routes.dilation) {
                    (1, 1) => routes.forward.to_string(),
                    (g, 1) => format!("{} x{g}", routes.forward),
                    (1, d) => format!("{} x{}ph", routes.forward, d * d),
                    (g, d) => format!("{} x{g}x{}ph", routes.forward, d * d),
                },
                fwd_kernel
            );
            if let (Some(dx), Some(dw)) = (dx, dw) {
                line += &format!(" {:<26} {:<22} {:<14} {}", dx.0, dx.1, dw.0, dw.1);
            }
            emit(line.trim_end())?;
        }
    }
    Ok(())
}
