//! `resnet train` and `resnet eval`.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use resnet::data::DataSpec;
use resnet::{evaluate, Arch, Freeze, Progress, ResNet, TrainConfig, Trainer};
use tensor::Kernels;

use crate::plot;

/// `resnet train` options (already parsed).
pub struct TrainArgs {
    pub data: DataSpec,
    pub arch: Arch,
    pub epochs: Option<usize>,
    pub batch: Option<usize>,
    pub lr: Option<f32>,
    pub seed: Option<u64>,
    pub resume: Option<PathBuf>,
    /// Weights to fine-tune from.
    pub init: Option<PathBuf>,
    pub freeze: Freeze,
    pub backbone_lr_scale: f32,
    /// Fraction of the training images held out to pick the best model (when the data
    /// has no validation set of its own).
    pub val_fraction: f32,
    pub out: PathBuf,
}

fn config_for(args: &TrainArgs) -> TrainConfig {
    let mut c = TrainConfig::digits();
    if let DataSpec::Cifar10(_) = args.data {
        c.augment = resnet::augment::Augment::CIFAR;
        c.epochs = 30;
        c.batch = 128;
    } else if let DataSpec::Folder { .. } = args.data {
        c.augment = resnet::augment::Augment {
            crop_pad: 0,
            resized_crop: Some((0.35, 1.0)),
            hflip: true,
            rotate_degrees: 0.0,
        };
    }
    c.arch = args.arch;
    c.epochs = args.epochs.unwrap_or(c.epochs);
    c.batch = args.batch.unwrap_or(c.batch);
    c.lr = args.lr.unwrap_or(c.lr);
    c.seed = args.seed.unwrap_or(c.seed);
    c.freeze = args.freeze;
    c.backbone_lr_scale = args.backbone_lr_scale;
    c
}

fn fmt_duration(s: f32) -> String {
    let s = s.max(0.0) as u64;
    format!("{}:{:02}", s / 60, s % 60)
}

pub fn train(k: Kernels, args: TrainArgs) -> Result<(), Box<dyn std::error::Error>> {
    let started = Instant::now();
    eprintln!("loading {} ...", args.data);
    let config = config_for(&args);
    let data = args.data.load()?.hold_out(args.val_fraction, config.seed)?;
    let val = data.val.as_ref().map_or(0, |v| v.len());
    eprintln!(
        "training {} on {}: {} training, {val} validation (picks the best model) and {} test images (only reported) of {:?}, {} classes; {} epochs, batch {}, lr {}, {} threads, kernels {}",
        config.arch,
        args.data,
        data.train.len(),
        data.test.len(),
        data.train.shape,
        data.train.classes.len(),
        config.epochs,
        config.batch,
        config.lr,
        rayon::current_num_threads(),
        k.isa()
    );
    let mut trainer = match &args.resume {
        Some(ckpt) => {
            let t = Trainer::resume(config, &data, k, &args.out, ckpt)?;
            if t.epochs_done >= t.config.epochs {
                return Err(format!(
                    "{} has already finished all {} epochs: nothing to train (raise --epochs to \
                     train further)",
                    ckpt.display(),
                    t.config.epochs
                )
                .into());
            }
            eprintln!(
                "resumed from {} after epoch {}",
                ckpt.display(),
                t.epochs_done
            );
            t
        }
        None => match &args.init {
            Some(weights) => {
                let model = ResNet::from_safetensors(config.arch, weights)?;
                eprintln!(
                    "fine-tuning from {} ({} classes{}), freeze {}, backbone learning rate x{}",
                    weights.display(),
                    model.num_classes(),
                    if model.num_classes() == data.train.classes.len() {
                        ""
                    } else {
                        ": the head is replaced"
                    },
                    config.freeze,
                    config.backbone_lr_scale
                );
                Trainer::from_model(config, model, &data, k, &args.out)?
            }
            None => Trainer::new(config, &data, k, &args.out)?,
        },
    };
    let epochs = trainer.config.epochs;
    let mut epoch_start = Instant::now();
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let mut last_draw = Instant::now();
    let mut progress = |p: Progress| match p {
        Progress::Step {
            epoch,
            epochs,
            batch,
            batches,
            loss,
            images_per_s,
        } => {
            if batch == 1 {
                epoch_start = Instant::now();
            }
            if !tty || (batch < batches && last_draw.elapsed().as_millis() < 100) {
                return;
            }
            last_draw = Instant::now();
            let done = (epoch - 1) as f32 + batch as f32 / batches as f32;
            let elapsed = epoch_start.elapsed().as_secs_f32();
            let per_epoch = elapsed * batches as f32 / batch as f32;
            let eta = per_epoch * (epochs as f32 - done);
            let width = 24;
            let filled = (width * batch) / batches;
            let bar: String = "#".repeat(filled) + &".".repeat(width - filled);
            let _ = write!(
                std::io::stderr(),
                "\repoch {epoch}/{epochs} [{bar}] {batch}/{batches}  loss {loss:.4}  {images_per_s:.0} img/s  ETA {}   ",
                fmt_duration(eta)
            );
        }
        Progress::Epoch(r) => {
            if tty {
                let _ = write!(std::io::stderr(), "\r{:100}\r", "");
            }
            let val = match (r.val_loss, r.val_acc) {
                (Some(l), Some(a)) => format!("  val loss {l:.4} acc {:.2}%", 100.0 * a),
                _ => String::new(),
            };
            eprintln!(
                "epoch {:>3}/{epochs}  lr {:.4}  train loss {:.4} acc {:.2}%{val}  test loss {:.4} acc {:.2}%  {:.1}s",
                r.epoch,
                r.lr,
                r.train_loss,
                100.0 * r.train_acc,
                r.test_loss,
                100.0 * r.test_acc,
                r.seconds
            );
        }
    };
    trainer.run(&mut progress)?;
    let history = trainer.history.clone();
    let plot_path = args.out.join("training.png");
    plot::write_training_plot(&plot_path, &history)?;
    let best = trainer.best_epoch().ok_or("no epoch ran")?;
    let last = history.last().ok_or("no epoch ran")?;
    let chosen = match best.val_acc {
        Some(v) => format!(
            "best.safetensors is epoch {} (best validation accuracy, {:.2}%), test accuracy {:.2}%",
            best.epoch,
            100.0 * v,
            100.0 * best.test_acc
        ),
        None => format!(
            "no validation set: best.safetensors is the last epoch ({})",
            best.epoch
        ),
    };
    crate::emit(&format!(
        "done in {}: final test accuracy {:.2}%; {chosen}",
        fmt_duration(started.elapsed().as_secs_f32()),
        100.0 * last.test_acc,
    ))?;
    for (what, file) in [
        (
            "model picked by validation (torchvision names, with its architecture, classes and preprocessing)",
            "best.safetensors",
        ),
        (
            "checkpoint (resume with --resume)",
            "checkpoint.safetensors",
        ),
        ("metrics", "metrics.csv"),
        ("plot", "training.png"),
    ] {
        // Only what this run really wrote.
        let path = args.out.join(file);
        if path.is_file() {
            crate::emit(&format!("  {what}: {}", path.display()))?;
        }
    }
    Ok(())
}

pub fn eval(
    k: Kernels,
    weights: PathBuf,
    arch: Arch,
    info: Option<resnet::ModelInfo>,
    data: DataSpec,
    batch: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    let split = data.load()?;
    let model = ResNet::from_safetensors(arch, &weights)?;
    let classes = &split.test.classes;
    // A model that names its classes and normalisation is only scored on data that
    // has the same (a folder with the classes in another order would score nonsense).
    if let Some(info) = &info {
        if &info.classes != classes {
            return Err(format!(
                "{} was trained on the classes {:?}, but {data} has {:?}",
                weights.display(),
                info.classes,
                classes
            )
            .into());
        }
        if info.mean != split.test.mean || info.std != split.test.std {
            return Err(format!(
                "{} was trained on images normalised with mean {:?} and std {:?}, but {data} \
                 is normalised with {:?} and {:?}",
                weights.display(),
                info.mean,
                info.std,
                split.test.mean,
                split.test.std
            )
            .into());
        }
    }
    if model.num_classes() != classes.len() {
        return Err(format!(
            "{} has {} classes, but {data} has {}",
            weights.display(),
            model.num_classes(),
            classes.len()
        )
        .into());
    }
    let e = evaluate(&model, &split.test, k, batch)?;
    crate::emit(&format!(
        "{arch} {} on the {} test images of {data}: accuracy {:.2}%, loss {:.4}",
        weights.display(),
        split.test.len(),
        100.0 * e.accuracy,
        e.loss
    ))?;
    crate::emit("confusion matrix (rows: true class, columns: predicted):")?;
    let w = classes
        .iter()
        .map(|c| c.chars().count())
        .max()
        .unwrap_or(1)
        .clamp(4, 12);
    // Class names are cut by characters, not bytes: they are folder names, in any script.
    let clip = |c: &str, n: usize| c.chars().take(n).collect::<String>();
    let mut header = format!("{:>w$} ", "");
    for c in classes {
        header.push_str(&format!("{:>5}", clip(c, 5)));
    }
    crate::emit(&header)?;
    for (c, row) in classes.iter().zip(&e.confusion) {
        let mut line = format!("{:>w$} ", clip(c, w));
        for v in row {
            line.push_str(&format!("{v:>5}"));
        }
        crate::emit(&line)?;
    }
    Ok(())
}
