//! The ResNet family: parameter counts equal torchvision's and the paper's, names follow
//! torchvision, and the fused inference path equals a slow, unfused forward pass built
//! from the reference operations (direct convolution, batch norm by its formula, in f64
//! where they sum), with non-trivial batch-norm statistics.

use resnet::{Arch, ConvBn, InferenceModel, ResNet, Shortcut};
use tensor::rng::Rng;
use tensor::{reference, Kernels, Pool2d, Tensor};

#[test]
fn parameter_counts_equal_the_references() {
    // torchvision's models (1000 classes) and the CIFAR paper's ResNet-20 (10 classes).
    let expected = [
        (Arch::ResNet18, 1000, 11_689_512),
        (Arch::ResNet34, 1000, 21_797_672),
        (Arch::ResNet50, 1000, 25_557_032),
        (Arch::ResNet101, 1000, 44_549_160),
        (Arch::ResNet152, 1000, 60_192_808),
        (Arch::WideResNet50_2, 1000, 68_883_240),
        (Arch::WideResNet101_2, 1000, 126_886_696),
        (Arch::ResNeXt50_32x4d, 1000, 25_028_904),
        (Arch::ResNeXt101_32x8d, 1000, 88_791_336),
        (Arch::ResNeXt101_64x4d, 1000, 83_455_272),
        // timm 1.0.31's resnet26d / resnet50d / resnet101d.
        (Arch::ResNet26D, 1000, 16_014_408),
        (Arch::ResNet50D, 1000, 25_576_264),
        (Arch::ResNet101D, 1000, 44_568_392),
        (Arch::Cifar { depth: 20 }, 10, 269_722),
    ];
    for (arch, classes, count) in expected {
        let model = ResNet::new(arch, classes, 0).unwrap();
        assert_eq!(model.num_parameters(), count, "{arch}");
    }
    // The CIFAR family grows by 6 layers of 3x3 convolutions per step of depth.
    let sizes: Vec<usize> = [20, 32, 44, 56, 110]
        .iter()
        .map(|&d| {
            ResNet::new(Arch::Cifar { depth: d }, 10, 0)
                .unwrap()
                .num_parameters()
        })
        .collect();
    assert!(sizes.windows(2).all(|w| w[0] < w[1]), "{sizes:?}");
    assert!(
        (1_700_000..1_750_000).contains(&sizes[4]),
        "ResNet-110 has about 1.7M: {}",
        sizes[4]
    );
}

#[test]
fn multiply_adds_match_the_published_figures() {
    // ResNet-50 at 224: 4.09 G multiply-adds (the "4.1 GFLOPs" of the literature);
    // ResNet-18: 1.82 G.
    let m50 = ResNet::new(Arch::ResNet50, 1000, 0)
        .unwrap()
        .forward_macs(224, 224)
        .unwrap();
    assert!((4.05e9..4.15e9).contains(&m50), "{m50}");
    let m18 = ResNet::new(Arch::ResNet18, 1000, 0)
        .unwrap()
        .forward_macs(224, 224)
        .unwrap();
    assert!((1.78e9..1.86e9).contains(&m18), "{m18}");
    // timm's ResNet-50-D: 4.33 G (its deep stem costs 0.24 G more).
    let m50d = ResNet::new(Arch::ResNet50D, 1000, 0)
        .unwrap()
        .forward_macs(224, 224)
        .unwrap();
    assert!((4.31e9..4.35e9).contains(&m50d), "{m50d}");
}

#[test]
fn names_follow_torchvision() {
    let m = ResNet::new(Arch::ResNet50, 1000, 0).unwrap();
    let names: Vec<String> = m.named_tensors().into_iter().map(|n| n.name).collect();
    for expected in [
        "conv1.weight",
        "bn1.running_var",
        "layer1.0.conv1.weight",
        "layer1.0.conv3.weight",
        "layer1.0.downsample.0.weight",
        "layer1.0.downsample.1.bias",
        "layer2.0.downsample.0.weight",
        "layer4.2.bn3.running_mean",
        "fc.weight",
        "fc.bias",
    ] {
        assert!(names.iter().any(|n| n == expected), "missing {expected}");
    }
    assert!(!names.iter().any(|n| n == "layer1.1.downsample.0.weight"));
    // torchvision's ResNet-50 state dict has 320 entries: 53 convolutions x (weight + 4
    // batch-norm tensors) + fc's 2 = 267, plus 53 `num_batches_tracked` (not kept here).
    assert_eq!(names.len(), 267);
    let unique: std::collections::HashSet<_> = names.iter().collect();
    assert_eq!(unique.len(), names.len());
}

#[test]
fn resnet_d_names_follow_timm() {
    let m = ResNet::new(Arch::ResNet26D, 1000, 0).unwrap();
    let names: Vec<String> = m.named_tensors().into_iter().map(|n| n.name).collect();
    // timm 1.0.31's `resnet26d().state_dict()` keys, in its order, less
    // `num_batches_tracked`: 157 of them.
    assert_eq!(
        &names[..16],
        &[
            "conv1.0.weight",
            "conv1.1.weight",
            "conv1.1.bias",
            "conv1.1.running_mean",
            "conv1.1.running_var",
            "conv1.3.weight",
            "conv1.4.weight",
            "conv1.4.bias",
            "conv1.4.running_mean",
            "conv1.4.running_var",
            "conv1.6.weight",
            "bn1.weight",
            "bn1.bias",
            "bn1.running_mean",
            "bn1.running_var",
            "layer1.0.conv1.weight",
        ]
    );
    for expected in [
        "layer1.0.downsample.1.weight",
        "layer1.0.downsample.2.running_var",
        "layer2.0.downsample.1.weight",
        "layer4.0.downsample.2.bias",
    ] {
        assert!(names.iter().any(|n| n == expected), "missing {expected}");
    }
    assert!(!names.iter().any(|n| n.contains("downsample.0")));
    assert_eq!(names.len(), 157);
    // timm's zero_init_last: every block's last batch norm starts at gamma = 0.
    assert!(m.stages.iter().flatten().all(|b| b.convs[2]
        .bn
        .weight
        .data()
        .iter()
        .all(|&g| g == 0.0)));
}

#[test]
fn architecture_names_parse() {
    for arch in Arch::every() {
        assert_eq!(arch.to_string().parse::<Arch>().unwrap(), arch);
    }
    assert_eq!(
        "Wide-ResNet50-2".parse::<Arch>().unwrap(),
        Arch::WideResNet50_2
    );
    assert_eq!("ResNet-50".parse::<Arch>().unwrap(), Arch::ResNet50);
    for bad in [
        "resnet",
        "resnet21",
        "vgg16",
        "resnet2",
        "cifar-resnet18",
        "cifar-resnet21",
    ] {
        let e = bad.parse::<Arch>().unwrap_err();
        assert!(e.to_string().contains("resnet18/34/50/101/152"), "{e}");
    }
    // The CIFAR family has its own prefix; a CIFAR depth under the ImageNet prefix is
    // refused with the right name (timm's resnet26 is an ImageNet bottleneck net).
    assert_eq!(
        "cifar-resnet20".parse::<Arch>().unwrap(),
        Arch::Cifar { depth: 20 }
    );
    assert_eq!(
        "CIFAR_ResNet-56".parse::<Arch>().unwrap(),
        Arch::Cifar { depth: 56 }
    );
    for (bad, hint) in [
        ("resnet26", "cifar-resnet26"),
        ("resnet20", "cifar-resnet20"),
    ] {
        let e = bad.parse::<Arch>().unwrap_err().to_string();
        assert!(e.contains(hint) && e.contains("timm"), "{e}");
    }
}

/// Gives every batch norm non-trivial statistics, so that folding is really exercised.
fn perturb_batch_norms(model: &mut ResNet, seed: u64) {
    let mut rng = Rng::seed_from_u64(seed);
    let mut touch = |c: &mut ConvBn| {
        let bn = &mut c.bn;
        bn.weight
            .data_mut()
            .iter_mut()
            .for_each(|v| *v = rng.uniform(0.5, 1.5));
        bn.bias
            .data_mut()
            .iter_mut()
            .for_each(|v| *v = 0.1 * rng.normal());
        bn.running_mean
            .data_mut()
            .iter_mut()
            .for_each(|v| *v = 0.1 * rng.normal());
        bn.running_var
            .data_mut()
            .iter_mut()
            .for_each(|v| *v = rng.uniform(0.5, 1.5));
    };
    model.deep_stem.iter_mut().for_each(&mut touch);
    touch(&mut model.stem);
    for block in model.stages.iter_mut().flatten() {
        block.convs.iter_mut().for_each(&mut touch);
        if let Some(c) = block.shortcut.projection_mut() {
            touch(c);
        }
    }
}

/// Convolution then batch norm by the textbook formula (no folding).
fn conv_bn_reference(x: &Tensor, c: &ConvBn, relu: bool) -> Tensor {
    let (mut y, _) = reference::conv2d_with(x, &c.weight, None, c.conv()).unwrap();
    let [_, ch, h, w] = y.dims4("test").unwrap();
    let bn = &c.bn;
    for (i, v) in y.data_mut().iter_mut().enumerate() {
        let o = (i / (h * w)) % ch;
        let norm = (*v - bn.running_mean.data()[o]) / (bn.running_var.data()[o] + bn.eps).sqrt();
        let out = norm * bn.weight.data()[o] + bn.bias.data()[o];
        *v = if relu { out.max(0.0) } else { out };
    }
    y
}

/// The whole network, unfused, from reference operations.
fn forward_reference(m: &ResNet, x: &Tensor) -> Tensor {
    let mut h = x.clone();
    for c in &m.deep_stem {
        h = conv_bn_reference(&h, c, true);
    }
    let mut h = conv_bn_reference(&h, &m.stem, true);
    if !m.arch.is_cifar() {
        h = reference::max_pool2d(&h, &Pool2d::RESNET_STEM).unwrap();
    }
    for block in m.stages.iter().flatten() {
        let shortcut = match &block.shortcut {
            Shortcut::Identity => h.clone(),
            Shortcut::Projection(c) => conv_bn_reference(&h, c, false),
            Shortcut::AvgProjection { pool, conv } => {
                let pooled = match pool {
                    Some(p) => reference::avg_pool2d(&h, p).unwrap(),
                    None => h.clone(),
                };
                conv_bn_reference(&pooled, conv, false)
            }
            Shortcut::PadChannels { stride, pad } => tensor::Kernels::active()
                .unwrap()
                .pad_channels(&h, *stride, *pad)
                .unwrap(),
        };
        let mut y = h.clone();
        let n = block.convs.len();
        for (i, c) in block.convs.iter().enumerate() {
            y = conv_bn_reference(&y, c, i + 1 < n);
        }
        h = reference::add(&y, &shortcut, true).unwrap();
    }
    let f = reference::global_avg_pool(&h).unwrap();
    reference::linear(&f, &m.fc_weight, Some(m.fc_bias.data())).unwrap()
}

fn check_against_reference(arch: Arch, classes: usize, shape: [usize; 4]) {
    let mut model = ResNet::new(arch, classes, 3).unwrap();
    perturb_batch_norms(&mut model, 4);
    let x = Tensor::randn(&shape, 0.0, 1.0, 5).unwrap();
    let want = forward_reference(&model, &x);
    let fast = InferenceModel::new(&model, Kernels::active().unwrap()).unwrap();
    let got = fast.forward(&x).unwrap();
    assert_eq!(got.shape(), &[shape[0], classes]);
    let scale = want.data().iter().fold(1.0f32, |m, v| m.max(v.abs()));
    for (i, (g, w)) in got.data().iter().zip(want.data()).enumerate() {
        assert!(
            (g - w).abs() <= 1e-4 * scale,
            "{arch}: logit {i}: fused {g}, reference {w} (scale {scale})"
        );
    }
    let features = fast.features(&x).unwrap();
    assert_eq!(features.shape(), &[shape[0], arch.feature_dim()]);
}

#[test]
fn cifar_resnet20_inference_equals_unfused_reference() {
    check_against_reference(Arch::Cifar { depth: 20 }, 10, [2, 3, 32, 32]);
}

#[test]
fn resnet18_inference_equals_unfused_reference() {
    check_against_reference(Arch::ResNet18, 1000, [1, 3, 32, 32]);
}

#[test]
fn resnet50_inference_equals_unfused_reference() {
    check_against_reference(Arch::ResNet50, 1000, [1, 3, 32, 32]);
}

#[test]
fn resnet26d_inference_equals_unfused_reference() {
    // 37 x 37: odd sizes at every stage (19, 10, 5, 3, 2), so the shortcut's pools
    // take `ceil_mode`'s one-column windows.
    check_against_reference(Arch::ResNet26D, 1000, [1, 3, 37, 37]);
}

#[test]
fn resnext50_inference_equals_unfused_reference() {
    check_against_reference(Arch::ResNeXt50_32x4d, 1000, [1, 3, 32, 32]);
}

#[test]
fn resnext_grouped_layers_have_torchvision_shapes() {
    // torchvision's `width = planes * width_per_group / 64 * groups`: the first 3x3 of
    // ResNeXt-50 32x4d is 128 -> 128 in 32 groups of 4, ResNeXt-101 64x4d's 256 in 64.
    for (arch, first, last, groups) in [
        (Arch::ResNeXt50_32x4d, [128, 4, 3, 3], [1024, 32, 3, 3], 32),
        (Arch::ResNeXt101_32x8d, [256, 8, 3, 3], [2048, 64, 3, 3], 32),
        (Arch::ResNeXt101_64x4d, [256, 4, 3, 3], [2048, 32, 3, 3], 64),
    ] {
        let m = ResNet::new(arch, 10, 0).unwrap();
        let c1 = &m.stages[0][0].convs[1];
        let c4 = &m.stages[3].last().unwrap().convs[1];
        assert_eq!(c1.weight.shape(), &first[..], "{arch}");
        assert_eq!(c4.weight.shape(), &last[..], "{arch}");
        assert_eq!((c1.groups, c4.groups), (groups, groups), "{arch}");
        assert_eq!(arch.groups(), groups);
    }
}

#[test]
fn replacing_strides_with_dilation_keeps_the_resolution() {
    // torchvision: output stride 8 keeps layer3 and layer4 at layer2's 28 x 28, output
    // stride 16 keeps layer4 at 14 x 14; the 3x3 convolutions' dilation grows 2, 4.
    for (dilate, side, last_dilation) in [
        ([false, false, false], 7, 1),
        ([false, false, true], 14, 2),
        ([false, true, true], 28, 4),
    ] {
        let mut m = ResNet::new(Arch::ResNet50, 10, 0).unwrap();
        m.replace_stride_with_dilation(dilate).unwrap();
        let layers = m.conv_layers([1, 3, 224, 224]).unwrap();
        let last = layers.last().unwrap();
        assert_eq!(&last.output[2..], &[side, side], "{dilate:?}");
        let c = &m.stages[3][2].convs[1];
        assert_eq!((c.dilation, c.padding), (last_dilation, last_dilation));
        // The weights are the same (ResNet-50 with a 10-class head).
        assert_eq!(m.num_parameters(), 25_557_032 - 990 * 2049);
    }
    // And back: the plain network again.
    let mut m = ResNet::new(Arch::ResNet50, 10, 0).unwrap();
    m.replace_stride_with_dilation([false, true, true]).unwrap();
    m.replace_stride_with_dilation([false; 3]).unwrap();
    assert_eq!(m, ResNet::new(Arch::ResNet50, 10, 0).unwrap());
    for arch in [Arch::ResNet18, Arch::Cifar { depth: 20 }, Arch::ResNet50D] {
        let mut m = ResNet::new(arch, 10, 0).unwrap();
        let e = m
            .replace_stride_with_dilation([false, true, true])
            .unwrap_err();
        assert!(e.to_string().contains(&arch.to_string()), "{e}");
        // The plain pattern leaves them as they are (their strides sit elsewhere).
        m.replace_stride_with_dilation([false; 3]).unwrap();
        assert_eq!(m, ResNet::new(arch, 10, 0).unwrap(), "{arch}");
    }
}

#[test]
fn dilated_resnet50_inference_equals_unfused_reference() {
    let mut model = ResNet::new(Arch::ResNet50, 1000, 3).unwrap();
    model
        .replace_stride_with_dilation([false, true, true])
        .unwrap();
    perturb_batch_norms(&mut model, 4);
    let x = Tensor::randn(&[1, 3, 40, 40], 0.0, 1.0, 5).unwrap();
    let want = forward_reference(&model, &x);
    let fast = InferenceModel::new(&model, Kernels::active().unwrap()).unwrap();
    let got = fast.forward(&x).unwrap();
    let scale = want.data().iter().fold(1.0f32, |m, v| m.max(v.abs()));
    for (g, w) in got.data().iter().zip(want.data()) {
        assert!((g - w).abs() <= 1e-4 * scale, "fused {g}, reference {w}");
    }
}

#[test]
fn reused_activation_buffers_never_leak_into_results() {
    // The model keeps activation buffers between calls; a call with another input (and
    // another batch size) in between must not change a result.
    // ResNet-50 too: `from_model` folds its bottlenecks and projections in place.
    for arch in [Arch::Cifar { depth: 20 }, Arch::ResNet18, Arch::ResNet50] {
        let model = ResNet::new(arch, 10, 1).unwrap();
        let fast = InferenceModel::new(&model, Kernels::active().unwrap()).unwrap();
        let a = Tensor::randn(&[2, 3, 32, 32], 0.0, 1.0, 1).unwrap();
        let b = Tensor::randn(&[3, 3, 32, 32], 0.0, 5.0, 2).unwrap();
        let first = fast.forward(&a).unwrap();
        fast.forward(&b).unwrap();
        let again = fast.forward(&a).unwrap();
        assert_eq!(first, again, "{arch}");
        let fresh = InferenceModel::new(&model, Kernels::active().unwrap()).unwrap();
        assert_eq!(fresh.forward(&a).unwrap(), first, "{arch}");
        let consumed = InferenceModel::from_model(model, Kernels::active().unwrap()).unwrap();
        assert_eq!(consumed.forward(&a).unwrap(), first, "{arch}");
    }
}

#[test]
fn option_a_shortcut_subsamples_and_pads_both_sides() {
    let x = Tensor::from_vec(&[1, 1, 3, 3], (1..=9).map(|v| v as f32).collect()).unwrap();
    let y = tensor::Kernels::active()
        .unwrap()
        .pad_channels(&x, 2, 1)
        .unwrap();
    assert_eq!(y.shape(), &[1, 3, 2, 2]);
    assert_eq!(&y.data()[..4], &[0.0; 4]);
    assert_eq!(&y.data()[4..8], &[1.0, 3.0, 7.0, 9.0]);
    assert_eq!(&y.data()[8..], &[0.0; 4]);
}

/// What Winograd's memory-for-speed layers (256-channel 3x3 layers at 14 x 14) would
/// cost each network beyond the direct kernel's weights, and which networks the
/// default budget lets spend it: ResNet-18's three layers, not ResNet-50's five at
/// batch 1, ResNet-50's too from batch 5.
#[test]
fn winograd_memory_is_spent_only_within_the_budget() {
    use resnet::{ConvLayout, InferenceOptions};
    let k = Kernels::active().unwrap();
    let layer = 27 * 256 * 256 * 4;
    let needed = |arch: Arch, layout| {
        let model = ResNet::new(arch, 1000, 0).unwrap();
        InferenceModel::winograd_memory_needed(&k, &model, layout, [224, 224]).unwrap()
    };
    let budget = InferenceOptions::default().winograd_budget();
    assert_eq!(budget, InferenceOptions::for_batch(1).winograd_budget());
    assert_eq!(needed(Arch::ResNet18, ConvLayout::Blocked), 3 * layer);
    assert_eq!(needed(Arch::ResNet50, ConvLayout::Blocked), 5 * layer);
    assert!(3 * layer <= budget && 5 * layer > budget);
    let at = |batch| InferenceOptions::for_batch(batch).winograd_budget();
    assert!(5 * layer > at(4) && 5 * layer <= at(5) && 5 * layer <= at(16));
    // A budget asked for in full does not grow with the batch; it saturates, not wraps.
    let fixed = InferenceOptions {
        winograd_memory_per_image: 0,
        ..InferenceOptions::for_batch(16)
    };
    assert_eq!(fixed.winograd_budget(), fixed.winograd_memory);
    let huge = InferenceOptions {
        winograd_memory: usize::MAX,
        ..InferenceOptions::for_batch(usize::MAX)
    };
    assert_eq!(huge.winograd_budget(), usize::MAX);
    // NCHW inference has no such layers (its Winograd rule does not depend on memory),
    // and an image too small for the net lists none.
    assert_eq!(needed(Arch::ResNet18, ConvLayout::Nchw), 0);
    let model = ResNet::new(Arch::ResNet18, 1000, 0).unwrap();
    assert_eq!(
        InferenceModel::winograd_memory_needed(&k, &model, ConvLayout::Blocked, [112, 112]),
        Some(0)
    );
}
