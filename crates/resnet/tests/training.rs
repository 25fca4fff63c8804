//! Training behaviour that needs no fixture: freezing, head replacement, running
//! statistics, agreement of the training graph with the inference model, and that a few
//! SGD steps fit a small batch.

use autograd::{Sgd, SgdConfig, Tape};
use resnet::{train_step, Arch, Freeze, InferenceModel, ResNet};
use tensor::{Kernels, Tensor};

fn kernels() -> Kernels {
    Kernels::active().unwrap()
}

fn snapshot(model: &ResNet) -> Vec<(String, Tensor)> {
    model
        .named_tensors()
        .into_iter()
        .map(|n| (n.name, n.tensor.clone()))
        .collect()
}

fn sgd(model: &mut ResNet) -> Sgd {
    let config = SgdConfig {
        lr: 0.05,
        momentum: 0.9,
        weight_decay: 5e-4,
        ..Default::default()
    };
    Sgd::new(config, model.parameters_mut().len()).unwrap()
}

#[test]
fn a_frozen_backbone_does_not_change_and_the_head_does() {
    let mut model = ResNet::new(Arch::Cifar { depth: 20 }, 10, 3).unwrap();
    model.replace_head(4, 9).unwrap();
    assert_eq!(model.num_classes(), 4);
    let before = snapshot(&model);
    let mut opt = sgd(&mut model);
    let x = Tensor::randn(&[4, 3, 16, 16], 0.0, 1.0, 1).unwrap();
    for _ in 0..2 {
        train_step(
            &mut model,
            &mut opt,
            kernels(),
            x.clone(),
            &[0, 1, 2, 3],
            Freeze::Backbone,
            0.0,
        )
        .unwrap();
    }
    for ((name, old), now) in before.iter().zip(model.named_tensors()) {
        let changed = old != now.tensor;
        assert_eq!(
            changed,
            name.starts_with("fc."),
            "{name} changed: {changed}"
        );
    }
}

#[test]
fn freezing_all_but_the_last_stage_trains_only_it_and_the_head() {
    let mut model = ResNet::new(Arch::ResNet18, 5, 4).unwrap();
    let before = snapshot(&model);
    let mut opt = sgd(&mut model);
    let x = Tensor::randn(&[2, 3, 32, 32], 0.0, 1.0, 2).unwrap();
    train_step(
        &mut model,
        &mut opt,
        kernels(),
        x,
        &[1, 3],
        Freeze::AllButLastStage,
        0.0,
    )
    .unwrap();
    for ((name, old), now) in before.iter().zip(model.named_tensors()) {
        let trains = name.starts_with("fc.") || name.starts_with("layer4.");
        // Frozen batch norms run on their running statistics and leave them alone.
        assert_eq!(old != now.tensor, trains, "{name}");
    }
}

#[test]
fn a_training_step_updates_running_statistics_like_pytorch() {
    let mut model = ResNet::new(Arch::Cifar { depth: 20 }, 10, 5).unwrap();
    let x = Tensor::randn(&[3, 3, 8, 8], 0.5, 2.0, 3).unwrap();
    let mut tape = Tape::new(kernels());
    let fwd = model
        .forward_train(&mut tape, x.clone(), Freeze::None)
        .unwrap();
    let stem_stats = fwd.batch_stats[0].clone();
    assert_eq!(fwd.batch_stats.len(), 19, "ResNet-20 has 19 batch norms");
    drop(tape);
    // The stem's batch statistics are those of its convolution's output: gathered by
    // the convolution as it runs, equal (to rounding) to a pass over its output.
    let plan = model
        .stem
        .plan(&kernels(), tensor::Mode::Training, tensor::Layout::Nchw)
        .unwrap();
    let (conv, direct) = kernels()
        .conv2d_with_stats(
            &x,
            &kernels().pack_conv(&plan, &model.stem.weight).unwrap(),
            None,
        )
        .unwrap();
    assert_eq!(stem_stats.stats, direct);
    let pass = kernels().channel_stats(&conv).unwrap();
    for (a, b) in direct.mean.iter().zip(&pass.mean) {
        assert!((a - b).abs() <= 1e-6, "mean {a} vs {b}");
    }
    for (a, b) in direct.var.iter().zip(&pass.var) {
        assert!((a - b).abs() <= 1e-5 * b, "variance {a} vs {b}");
    }
    model.update_running_stats(&[stem_stats]).unwrap();
    let m = direct.count as f32;
    for c in 0..16 {
        let want_mean = 0.1 * direct.mean[c];
        let want_var = 0.9 + 0.1 * direct.var[c] * m / (m - 1.0);
        assert!((model.stem.bn.running_mean.data()[c] - want_mean).abs() < 1e-6);
        assert!((model.stem.bn.running_var.data()[c] - want_var).abs() < 1e-5);
    }
}

#[test]
fn the_frozen_training_graph_equals_the_inference_model() {
    // ResNet-26-D at 37 x 37: its deep stem, and average-pooling shortcuts on odd sizes
    // (`ceil_mode`), recorded on the tape.
    // ResNeXt-50 (grouped) and a dilated ResNet-50 (output stride 8) too.
    for (arch, side, dilate) in [
        (Arch::ResNet18, 40, false),
        (Arch::ResNet26D, 37, false),
        (Arch::ResNeXt50_32x4d, 32, false),
        (Arch::ResNet50, 32, true),
    ] {
        let mut model = ResNet::new(arch, 7, 6).unwrap();
        if dilate {
            model
                .replace_stride_with_dilation([false, true, true])
                .unwrap();
        }
        // timm's zero-initialised last batch norms would hide each block's convolutions.
        for (name, t) in model.named_tensors_mut() {
            if name.ends_with("bn3.weight") {
                t.data_mut().fill(0.7);
            }
        }
        let x = Tensor::randn(&[2, 3, side, side], 0.0, 1.0, 4).unwrap();
        let want = InferenceModel::new(&model, kernels())
            .unwrap()
            .forward(&x)
            .unwrap();
        let mut tape = Tape::new(kernels());
        let fwd = model.forward_train(&mut tape, x, Freeze::Backbone).unwrap();
        let got = tape.value(fwd.logits).unwrap();
        for (a, b) in got.data().iter().zip(want.data()) {
            assert!(
                (a - b).abs() <= 1e-4 * (1.0 + b.abs()),
                "{arch}: {a} vs {b}"
            );
        }
    }
}

#[test]
fn a_resnet_d_training_step_reaches_every_parameter() {
    // Every parameter gets a gradient through the deep stem and the pooled shortcuts
    // (no weight decay, so a change is the gradient's doing).
    let mut model = ResNet::new(Arch::ResNet26D, 3, 8).unwrap();
    for (name, t) in model.named_tensors_mut() {
        if name.ends_with("bn3.weight") {
            t.data_mut().fill(0.7);
        }
    }
    let before = snapshot(&model);
    let config = SgdConfig {
        lr: 0.1,
        ..Default::default()
    };
    let mut opt = Sgd::new(config, model.parameters_mut().len()).unwrap();
    let x = Tensor::randn(&[2, 3, 37, 37], 0.0, 1.0, 9).unwrap();
    train_step(
        &mut model,
        &mut opt,
        kernels(),
        x,
        &[0, 2],
        Freeze::None,
        0.0,
    )
    .unwrap();
    for ((name, old), now) in before.iter().zip(model.named_tensors()) {
        assert!(old != now.tensor, "{name} did not change");
    }
}

#[test]
fn sgd_fits_a_small_batch() {
    let mut model = ResNet::new(Arch::Cifar { depth: 20 }, 4, 7).unwrap();
    let mut opt = sgd(&mut model);
    let x = Tensor::randn(&[8, 3, 12, 12], 0.0, 1.0, 8).unwrap();
    let targets = [0, 1, 2, 3, 3, 2, 1, 0];
    let first = train_step(
        &mut model,
        &mut opt,
        kernels(),
        x.clone(),
        &targets,
        Freeze::None,
        0.0,
    )
    .unwrap();
    let mut last = first;
    for _ in 0..30 {
        last = train_step(
            &mut model,
            &mut opt,
            kernels(),
            x.clone(),
            &targets,
            Freeze::None,
            0.0,
        )
        .unwrap();
    }
    assert!(
        last.loss < 0.5 * first.loss,
        "loss {} -> {}",
        first.loss,
        last.loss
    );
    assert_eq!(last.correct, 8, "the batch is memorised");
}

#[test]
fn a_profiled_step_is_the_same_step_and_names_every_op_by_its_layer() {
    let x = Tensor::randn(&[2, 3, 16, 16], 0.0, 1.0, 1).unwrap();
    let targets = [3, 7];
    let mut plain = ResNet::new(Arch::Cifar { depth: 20 }, 10, 3).unwrap();
    let mut profiled = ResNet::new(Arch::Cifar { depth: 20 }, 10, 3).unwrap();
    let (mut opt_a, mut opt_b) = (sgd(&mut plain), sgd(&mut profiled));
    train_step(
        &mut plain,
        &mut opt_a,
        kernels(),
        x.clone(),
        &targets,
        Freeze::None,
        0.0,
    )
    .unwrap();
    let p = resnet::profile_step(&mut profiled, &mut opt_b, kernels(), x, &targets).unwrap();
    assert_eq!(
        snapshot(&plain),
        snapshot(&profiled),
        "the profiled step updated differently"
    );
    let layers: Vec<&str> = p.ops.iter().map(|o| o.layer.as_str()).collect();
    assert_eq!(layers[..2], ["conv1", "bn1"]);
    assert!(layers.contains(&"layer3.2.conv2"), "{layers:?}");
    assert!(layers.contains(&"layer1.0.bn2 > add+relu"), "{layers:?}");
    assert_eq!(*layers.last().unwrap(), "fc > cross_entropy");
    // ResNet-20: 19 convolutions; every op's time is part of the step's.
    let convs = p
        .ops
        .iter()
        .filter(|o| o.time.op.starts_with("conv2d"))
        .count();
    assert_eq!(convs, 19);
    let ops: std::time::Duration = p.ops.iter().map(|o| o.time.forward + o.time.backward).sum();
    assert!(
        ops + p.update <= p.total,
        "{ops:?} + {:?} > {:?}",
        p.update,
        p.total
    );
}
