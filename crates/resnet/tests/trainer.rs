//! The trainer on the shipped digits: it learns, it resumes exactly, and it refuses
//! checkpoints that do not fit, without ever leaving a half-written file.

use resnet::data::digits;
use resnet::{Arch, TrainConfig, Trainer};
use tensor::Kernels;

fn out_dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("resnet-trainer-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn quick(epochs: usize) -> TrainConfig {
    TrainConfig {
        epochs,
        batch: 128,
        warmup_epochs: 0,
        ..TrainConfig::digits()
    }
}

#[test]
fn resnet20_learns_the_digits_in_a_few_epochs() {
    let data = digits().unwrap();
    let out = out_dir("learns");
    let mut t = Trainer::new(quick(3), &data, Kernels::active().unwrap(), &out).unwrap();
    let history = t.run(&mut |_| {}).unwrap().to_vec();
    let last = history.last().unwrap();
    println!(
        "test accuracy after 3 epochs: {:.1}%",
        100.0 * last.test_acc
    );
    // Chance is 10%.
    assert!(last.test_acc > 0.6, "test accuracy {}", last.test_acc);
    assert!(last.train_loss < history[0].train_loss);
    for f in ["best.safetensors", "checkpoint.safetensors", "metrics.csv"] {
        assert!(out.join(f).is_file(), "{f} written");
    }
    let csv = std::fs::read_to_string(out.join("metrics.csv")).unwrap();
    assert_eq!(csv.lines().count(), 4, "header and 3 epochs");
    assert!(std::fs::read_dir(&out).unwrap().all(|e| !e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .ends_with(".tmp")));
    // The exported best model loads back as a torchvision-named ResNet-20.
    let best =
        resnet::ResNet::from_safetensors(Arch::Cifar { depth: 20 }, out.join("best.safetensors"))
            .unwrap();
    assert_eq!(best.num_classes(), 10);
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn resuming_reproduces_the_uninterrupted_run_exactly() {
    let data = digits().unwrap();
    let k = Kernels::active().unwrap();
    let (a_dir, b_dir) = (out_dir("straight"), out_dir("resumed"));
    let mut a = Trainer::new(quick(2), &data, k, &a_dir).unwrap();
    a.run(&mut |_| {}).unwrap();
    let mut b = Trainer::new(quick(2), &data, k, &b_dir).unwrap();
    b.run_epochs(1, &mut |_| {}).unwrap();
    drop(b);
    let mut b = Trainer::resume(
        quick(2),
        &data,
        k,
        &b_dir,
        b_dir.join("checkpoint.safetensors"),
    )
    .unwrap();
    assert_eq!(b.epochs_done, 1);
    b.run(&mut |_| {}).unwrap();
    for (x, y) in a.model.named_tensors().iter().zip(b.model.named_tensors()) {
        assert_eq!(x.tensor, y.tensor, "{} differs after resuming", x.name);
    }
    assert_eq!(a.history.len(), b.history.len());
    let _ = std::fs::remove_dir_all(&a_dir);
    let _ = std::fs::remove_dir_all(&b_dir);
}

#[test]
fn a_checkpoint_of_another_architecture_or_a_broken_one_is_refused() {
    let data = digits().unwrap();
    let k = Kernels::active().unwrap();
    let dir = out_dir("refuse");
    let mut t = Trainer::new(quick(1), &data, k, &dir).unwrap();
    t.run(&mut |_| {}).unwrap();
    let ckpt = dir.join("checkpoint.safetensors");
    let other = TrainConfig {
        arch: Arch::Cifar { depth: 32 },
        ..quick(1)
    };
    let e = Trainer::resume(other, &data, k, &dir, &ckpt)
        .err()
        .expect("refused");
    assert!(e.to_string().contains("resnet20"), "{e}");
    // A weights file is not a checkpoint.
    let e = Trainer::resume(quick(1), &data, k, &dir, dir.join("best.safetensors"))
        .err()
        .unwrap();
    assert!(e.to_string().contains("not a resnet-checkpoint"), "{e}");
    // A truncated checkpoint is an error naming the file.
    let bytes = std::fs::read(&ckpt).unwrap();
    let cut = dir.join("cut.safetensors");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let e = Trainer::resume(quick(1), &data, k, &dir, &cut)
        .err()
        .unwrap();
    assert!(e.to_string().contains("cut.safetensors"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_diverged_epoch_stops_the_run_and_keeps_the_last_good_checkpoint() {
    let data = digits().unwrap();
    let k = Kernels::active().unwrap();
    let out = out_dir("diverged");
    let mut t = Trainer::new(quick(3), &data, k, &out).unwrap();
    t.run_epochs(1, &mut |_| {}).unwrap();
    let good = std::fs::read(out.join("checkpoint.safetensors")).unwrap();
    // A running variance that became infinite (as `--lr 10` made them): the epoch ends
    // with an error naming it, and nothing of it is saved.
    t.model.stem.bn.running_var.data_mut()[3] = f32::INFINITY;
    t.model.stem.bn.weight.data_mut()[3] = f32::NAN;
    let e = t.run_epochs(1, &mut |_| {}).unwrap_err();
    assert!(
        matches!(e, resnet::TrainError::Diverged { epoch: 2, .. }),
        "{e}"
    );
    assert!(e.to_string().contains("epoch 1"), "{e}");
    assert_eq!(t.epochs_done, 1);
    assert_eq!(
        std::fs::read(out.join("checkpoint.safetensors")).unwrap(),
        good
    );
    // Weights with NaN are refused at loading, and so is a checkpoint holding them.
    let mut poisoned = resnet::ResNet::new(Arch::Cifar { depth: 20 }, 10, 1).unwrap();
    poisoned.fc_weight.data_mut()[7] = f32::NAN;
    let path = out.join("nan.safetensors");
    poisoned.save_safetensors(&path).unwrap();
    let e = resnet::ResNet::from_safetensors(Arch::Cifar { depth: 20 }, &path).unwrap_err();
    assert!(e.to_string().contains("fc.weight[7] is NaN"), "{e}");
    // Loading into a model in memory: refused, the model unchanged.
    let mut target = resnet::ResNet::new(Arch::Cifar { depth: 20 }, 10, 2).unwrap();
    let e = target.load_safetensors(&path).unwrap_err();
    assert!(e.to_string().contains("fc.weight[7] is NaN"), "{e}");
    assert_eq!(
        target,
        resnet::ResNet::new(Arch::Cifar { depth: 20 }, 10, 2).unwrap()
    );
    let mut negative = resnet::ResNet::new(Arch::Cifar { depth: 20 }, 10, 1).unwrap();
    negative.stem.bn.running_var.data_mut()[0] = -1.0;
    negative.save_safetensors(&path).unwrap();
    let e = resnet::ResNet::from_safetensors(Arch::Cifar { depth: 20 }, &path).unwrap_err();
    assert!(e.to_string().contains("bn1.running_var[0] is -1"), "{e}");
    let _ = std::fs::remove_dir_all(&out);
}

/// Every tensor (parameters and batch-norm statistics) by name, as bits.
fn snapshot(model: &resnet::ResNet) -> Vec<(String, Vec<u32>)> {
    model
        .named_tensors()
        .into_iter()
        .map(|n| {
            (
                n.name,
                n.tensor.data().iter().map(|v| v.to_bits()).collect(),
            )
        })
        .collect()
}

/// Fine-tunes a "pretrained" CIFAR ResNet-20 (7 classes, so the head is replaced) on the
/// digits for one epoch and returns the names of the tensors that changed, and whether
/// every other one is bit-identical.
fn fine_tune(freeze: resnet::Freeze, backbone_lr_scale: f32, tag: &str) -> Vec<String> {
    let data = digits().unwrap();
    let pretrained = resnet::ResNet::new(resnet::Arch::Cifar { depth: 20 }, 7, 5).unwrap();
    let before = snapshot(&pretrained);
    let config = TrainConfig {
        freeze,
        backbone_lr_scale,
        ..quick(1)
    };
    let out = out_dir(tag);
    let mut t =
        Trainer::from_model(config, pretrained, &data, Kernels::active().unwrap(), &out).unwrap();
    assert_eq!(
        t.model.num_classes(),
        10,
        "the head is replaced to fit the digits"
    );
    t.run(&mut |_| {}).unwrap();
    let after = snapshot(&t.model);
    after
        .iter()
        .filter(|(name, _)| !name.starts_with("fc."))
        .filter(|(name, bits)| before.iter().find(|(n, _)| n == name).map(|(_, b)| b) != Some(bits))
        .map(|(name, _)| name.clone())
        .collect()
}

#[test]
fn a_frozen_backbone_stays_bit_identical_statistics_included() {
    let changed = fine_tune(resnet::Freeze::Backbone, 1.0, "freeze-backbone");
    assert!(changed.is_empty(), "frozen tensors changed: {changed:?}");
}

#[test]
fn freezing_all_but_the_last_stage_trains_only_layer3_and_the_head() {
    let changed = fine_tune(resnet::Freeze::AllButLastStage, 1.0, "freeze-last");
    assert!(!changed.is_empty(), "the last stage trained");
    assert!(
        changed.iter().all(|n| n.starts_with("layer3.")),
        "outside the last stage: {:?}",
        changed
            .iter()
            .filter(|n| !n.starts_with("layer3."))
            .collect::<Vec<_>>()
    );
    // Its batch norms' running statistics move with it.
    assert!(changed.iter().any(|n| n.ends_with(".running_mean")));
}

#[test]
fn a_backbone_learning_rate_of_zero_keeps_its_weights() {
    // Nothing frozen: the backbone's batch norms still update their statistics in
    // training mode, but its weights (rate 0) do not move.
    let changed = fine_tune(resnet::Freeze::None, 0.0, "backbone-lr-0");
    assert!(
        changed
            .iter()
            .all(|n| n.ends_with(".running_mean") || n.ends_with(".running_var")),
        "backbone weights moved: {:?}",
        changed
            .iter()
            .filter(|n| !n.contains("running"))
            .collect::<Vec<_>>()
    );
    assert!(!changed.is_empty(), "the statistics did update");
}

#[test]
fn a_checkpoint_resumes_only_with_its_own_freeze_policy() {
    let data = digits().unwrap();
    let k = Kernels::active().unwrap();
    let dir = out_dir("freeze-resume");
    let frozen = TrainConfig {
        freeze: resnet::Freeze::Backbone,
        ..quick(2)
    };
    let mut t = Trainer::new(
        TrainConfig {
            epochs: 1,
            ..frozen.clone()
        },
        &data,
        k,
        &dir,
    )
    .unwrap();
    t.run(&mut |_| {}).unwrap();
    let ckpt = dir.join("checkpoint.safetensors");
    let e = Trainer::resume(quick(2), &data, k, &dir, &ckpt)
        .err()
        .expect("a different freeze policy is refused")
        .to_string();
    assert!(e.contains("freeze backbone") && e.contains("none"), "{e}");
    let t = Trainer::resume(frozen, &data, k, &dir, &ckpt).unwrap();
    assert_eq!(t.epochs_done, 1);
    // A model of another architecture is refused before anything is trained.
    let other = resnet::ResNet::new(resnet::Arch::Cifar { depth: 32 }, 10, 1).unwrap();
    let e = Trainer::from_model(quick(1), other, &data, k, &dir)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("cifar-resnet32") && e.contains("cifar-resnet20"),
        "{e}"
    );
}

#[test]
fn a_held_out_validation_set_is_per_class_seeded_and_disjoint() {
    let data = digits().unwrap();
    let a = data.clone().hold_out(0.1, 7).unwrap();
    let val = a.val.as_ref().unwrap();
    assert_eq!(a.train.len() + val.len(), data.train.len());
    for c in 0..10 {
        let count = |d: &resnet::data::Dataset| d.labels.iter().filter(|&&l| l == c).count();
        let want = (count(&data.train) as f64 * 0.1).round() as usize;
        assert_eq!(count(val), want, "class {c}");
    }
    // Every training image lands in exactly one of the two (images are distinct rows).
    let rows = |d: &resnet::data::Dataset| -> Vec<Vec<u32>> {
        (0..d.len())
            .map(|i| d.image(i).iter().map(|v| v.to_bits()).collect())
            .collect()
    };
    let (mut all, mut parts) = (rows(&data.train), rows(&a.train));
    parts.extend(rows(val));
    all.sort();
    parts.sort();
    assert_eq!(all, parts);
    // The same seed holds out the same images; another seed others.
    let again = data.clone().hold_out(0.1, 7).unwrap();
    assert_eq!(rows(again.val.as_ref().unwrap()), rows(val));
    let other = data.clone().hold_out(0.1, 8).unwrap();
    assert_ne!(rows(other.val.as_ref().unwrap()), rows(val));
    // 0 holds out nothing; a fraction of 1 or more is refused.
    assert!(data.clone().hold_out(0.0, 7).unwrap().val.is_none());
    assert!(data.clone().hold_out(1.0, 7).is_err());
}

#[test]
fn the_validation_set_picks_best_safetensors_and_the_test_set_is_only_reported() {
    let data = digits().unwrap().hold_out(0.1, 1).unwrap();
    let k = Kernels::active().unwrap();
    let out = out_dir("validation");
    let mut t = Trainer::new(quick(3), &data, k, &out).unwrap();
    let mut snapshots = Vec::new();
    for _ in 0..3 {
        t.run_epochs(1, &mut |_| {}).unwrap();
        snapshots.push(snapshot(&t.model));
    }
    assert!(t
        .history
        .iter()
        .all(|r| r.val_acc.is_some() && r.val_loss.is_some()));
    let best = t.best_epoch().unwrap().clone();
    let top = t
        .history
        .iter()
        .map(|r| r.val_acc.unwrap())
        .fold(-1.0, f32::max);
    assert_eq!(best.val_acc, Some(top));
    let first_top = t
        .history
        .iter()
        .position(|r| r.val_acc == Some(top))
        .unwrap();
    assert_eq!(best.epoch, first_top + 1);
    // best.safetensors holds that epoch's weights, and says what it is.
    let path = out.join("best.safetensors");
    let saved = resnet::ResNet::from_safetensors(Arch::Cifar { depth: 20 }, &path).unwrap();
    assert!(snapshot(&saved) == snapshots[best.epoch - 1]);
    assert_eq!(resnet::ModelInfo::read(&path).unwrap(), Some(t.info()));
    let csv = std::fs::read_to_string(out.join("metrics.csv")).unwrap();
    assert!(csv.starts_with("epoch,lr,train_loss,train_acc,val_loss,val_acc,test_loss"));
    assert_eq!(csv.lines().count(), 4);
    // A run that holds out other images cannot resume this one.
    let other = digits().unwrap().hold_out(0.2, 1).unwrap();
    let e = Trainer::resume(
        quick(4),
        &other,
        k,
        &out,
        out.join("checkpoint.safetensors"),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("validated on"), "{e}");
    // The same split resumes, with its history (validation figures included).
    let r = Trainer::resume(quick(4), &data, k, &out, out.join("checkpoint.safetensors")).unwrap();
    assert_eq!(r.history, t.history);
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn without_a_validation_set_the_last_epoch_is_kept() {
    let data = digits().unwrap();
    let out = out_dir("no-validation");
    let mut t = Trainer::new(quick(2), &data, Kernels::active().unwrap(), &out).unwrap();
    t.run(&mut |_| {}).unwrap();
    assert_eq!(t.best_epoch().unwrap().epoch, 2);
    let saved =
        resnet::ResNet::from_safetensors(Arch::Cifar { depth: 20 }, out.join("best.safetensors"))
            .unwrap();
    assert!(snapshot(&saved) == snapshot(&t.model));
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn a_checkpoint_records_its_settings_and_resumes_only_with_them() {
    let mut cifar = TrainConfig::digits();
    cifar.augment = resnet::augment::Augment::CIFAR;
    cifar.label_smoothing = 0.1;
    for c in [TrainConfig::digits(), cifar] {
        assert_eq!(TrainConfig::from_json(&c.to_json()).unwrap(), c);
    }
    assert!(TrainConfig::from_json("{}")
        .unwrap_err()
        .starts_with("no `"));
    let data = digits().unwrap();
    let k = Kernels::active().unwrap();
    let out = out_dir("settings");
    let mut t = Trainer::new(quick(1), &data, k, &out).unwrap();
    t.set_note("data", "digits");
    t.run(&mut |_| {}).unwrap();
    let ckpt = out.join("checkpoint.safetensors");
    let info = resnet::read_checkpoint(&ckpt).unwrap();
    assert_eq!(info.config, Some(quick(1)));
    assert_eq!(info.epochs_done, 1);
    assert_eq!(info.notes.get("data").map(String::as_str), Some("digits"));
    // More epochs: fine. Another rate or seed: refused, naming the setting.
    assert!(Trainer::resume(quick(2), &data, k, &out, &ckpt).is_ok());
    let other = TrainConfig {
        lr: 0.05,
        seed: 9,
        ..quick(2)
    };
    let e = Trainer::resume(other, &data, k, &out, &ckpt)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("lr: ") && e.contains("seed: 9 vs 1"), "{e}");
    assert!(resnet::read_checkpoint(out.join("best.safetensors")).is_err());
    let _ = std::fs::remove_dir_all(&out);
}
