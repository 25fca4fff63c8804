//! `resnet train` and `resnet eval`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use resnet::data::DataSpec;
use resnet::{evaluate, Arch, Freeze, Progress, ResNet, TrainConfig, Trainer};
use tensor::Kernels;

use crate::plot;

/// `resnet train` options as given: `None` where the flag was not given (a resumed run
/// takes those from its checkpoint, a new one the defaults).
pub struct TrainArgs {
    pub data: Option<String>,
    pub arch: Option<String>,
    pub epochs: Option<usize>,
    pub batch: Option<usize>,
    pub lr: Option<f32>,
    pub seed: Option<u64>,
    pub resume: Option<PathBuf>,
    /// Weights to fine-tune from.
    pub init: Option<PathBuf>,
    pub freeze: Option<String>,
    pub backbone_lr_scale: Option<f32>,
    /// Fraction of the training images held out to pick the best model (when the data
    /// has no validation set of its own).
    pub val_fraction: Option<f32>,
    pub out: Option<PathBuf>,
    pub overwrite: bool,
    pub size: Option<usize>,
    /// Data-parallel settings (under MPI only).
    pub sync_bn: bool,
    pub bucket_mib: Option<f32>,
    pub no_overlap: bool,
}

/// A new run's settings: the defaults for its data set, and the flags given.
fn config_for(
    args: &TrainArgs,
    data: &DataSpec,
) -> Result<TrainConfig, Box<dyn std::error::Error>> {
    let mut c = TrainConfig::digits();
    if let DataSpec::Cifar10(_) = data {
        c.augment = resnet::augment::Augment::CIFAR;
        c.epochs = 30;
        c.batch = 128;
    } else if let DataSpec::Folder { .. } = data {
        c.augment = resnet::augment::Augment {
            crop_pad: 0,
            resized_crop: Some((0.35, 1.0)),
            hflip: true,
            rotate_degrees: 0.0,
        };
    }
    if let Some(a) = &args.arch {
        c.arch = a.parse()?;
    }
    c.epochs = args.epochs.unwrap_or(c.epochs);
    c.batch = args.batch.unwrap_or(c.batch);
    c.lr = args.lr.unwrap_or(c.lr);
    c.seed = args.seed.unwrap_or(c.seed);
    if let Some(f) = &args.freeze {
        c.freeze = f.parse()?;
    }
    c.backbone_lr_scale = args.backbone_lr_scale.unwrap_or(c.backbone_lr_scale);
    Ok(c)
}

/// The notes `resnet train` leaves in its checkpoints, so that `--resume` needs no flag.
const NOTE_DATA: &str = "data";
const NOTE_SIZE: &str = "size";
const NOTE_VAL: &str = "val_fraction";
const NOTE_RANKS: &str = "ranks";

/// What a run trains on and how: the data set, its image side, the validation
/// fraction and the trainer's settings.
struct Plan {
    data: DataSpec,
    size: usize,
    val_fraction: f32,
    config: TrainConfig,
}

/// A resumed run's settings: the checkpoint's, with `--epochs` applied; any other flag
/// given must repeat the checkpoint's value. Checkpoints written before settings were
/// recorded take the flags (and defaults) as before.
fn resumed_plan(args: &TrainArgs, ckpt: &Path) -> Result<Plan, Box<dyn std::error::Error>> {
    let info = resnet::read_checkpoint(ckpt)?;
    let Some(saved) = info.config else {
        let size = args.size.unwrap_or(64);
        let data = crate::parse_data(args.data.as_deref().unwrap_or("digits"), size)?;
        let config = config_for(args, &data)?;
        return Ok(Plan {
            data,
            size,
            val_fraction: args.val_fraction.unwrap_or(0.1),
            config,
        });
    };
    let note = |k: &str| info.notes.get(k).cloned();
    let mut clash = Vec::new();
    let mut check = |flag: &str, given: Option<String>, saved: String| {
        if let Some(g) = given {
            if g != saved {
                clash.push(format!("--{flag} {g} (the run: {saved})"));
            }
        }
    };
    let arch_given = match &args.arch {
        Some(a) => Some(a.parse::<Arch>()?.to_string()),
        None => None,
    };
    let freeze_given = match &args.freeze {
        Some(f) => Some(f.parse::<Freeze>()?.to_string()),
        None => None,
    };
    check("arch", arch_given, saved.arch.to_string());
    check(
        "batch",
        args.batch.map(|b| b.to_string()),
        saved.batch.to_string(),
    );
    check("lr", args.lr.map(|v| v.to_string()), saved.lr.to_string());
    check(
        "seed",
        args.seed.map(|v| v.to_string()),
        saved.seed.to_string(),
    );
    check("freeze", freeze_given, saved.freeze.to_string());
    check(
        "backbone-lr-scale",
        args.backbone_lr_scale.map(|v| v.to_string()),
        saved.backbone_lr_scale.to_string(),
    );
    let size: usize = match note(NOTE_SIZE) {
        Some(s) => s
            .parse()
            .map_err(|_| format!("{}: bad note `size` {s:?}", ckpt.display()))?,
        None => args.size.unwrap_or(64),
    };
    check("size", args.size.map(|v| v.to_string()), size.to_string());
    let val_fraction: f32 = match note(NOTE_VAL) {
        Some(v) => v
            .parse()
            .map_err(|_| format!("{}: bad note `val_fraction` {v:?}", ckpt.display()))?,
        None => args.val_fraction.unwrap_or(0.1),
    };
    check(
        "val-fraction",
        args.val_fraction.map(|v| v.to_string()),
        val_fraction.to_string(),
    );
    let data = match (note(NOTE_DATA), &args.data) {
        (Some(d), given) => {
            if let Some(g) = given {
                let g = crate::parse_data(g, size)?.to_string();
                if g != d {
                    clash.push(format!("--data {g} (the run: {d})"));
                }
            }
            crate::parse_data(&d, size)?
        }
        (None, Some(g)) => crate::parse_data(g, size)?,
        (None, None) => crate::parse_data("digits", size)?,
    };
    if !clash.is_empty() {
        return Err(format!(
            "{} continues a run with other settings: {}. A resumed run keeps its own \
             settings (only --epochs may change): leave these flags out",
            ckpt.display(),
            clash.join(", ")
        )
        .into());
    }
    let mut config = saved;
    config.epochs = args.epochs.unwrap_or(config.epochs);
    Ok(Plan {
        data,
        size,
        val_fraction,
        config,
    })
}

/// True when `dir` holds a file of a run (`best.safetensors`, a checkpoint, metrics or
/// the plot).
fn holds_a_run(dir: &Path) -> bool {
    resnet::trainer::OUTPUTS
        .iter()
        .any(|f| dir.join(f).exists())
}

/// Where the run writes: `--out`, the checkpoint's folder when resuming, or the first
/// of `runs/train`, `runs/train-2`, ... that holds no run. A new run never replaces
/// another unless `--overwrite`.
fn out_folder(args: &TrainArgs) -> Result<PathBuf, Box<dyn std::error::Error>> {
    if let Some(ckpt) = &args.resume {
        let own = ckpt.parent().map(Path::to_path_buf).unwrap_or_default();
        let own = if own.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            own
        };
        return match &args.out {
            Some(out) if !same_dir(out, &own) && holds_a_run(out) && !args.overwrite => {
                Err(format!(
                    "{} holds another run: resume into the checkpoint's own folder (leave out \
                     --out), another --out, or --overwrite",
                    out.display()
                )
                .into())
            }
            Some(out) => Ok(out.clone()),
            None => Ok(own),
        };
    }
    match &args.out {
        Some(out) if holds_a_run(out) && !args.overwrite => Err(format!(
            "{} already holds a run (best.safetensors, checkpoint, metrics): give another \
             --out, continue it with --resume {}, or replace it with --overwrite",
            out.display(),
            out.join("checkpoint.safetensors").display()
        )
        .into()),
        Some(out) => Ok(out.clone()),
        None => {
            let base = Path::new("runs");
            let mut n = 1usize;
            loop {
                let dir = if n == 1 {
                    base.join("train")
                } else {
                    base.join(format!("train-{n}"))
                };
                if !holds_a_run(&dir) || args.overwrite {
                    return Ok(dir);
                }
                n += 1;
            }
        }
    }
}

fn same_dir(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

fn fmt_duration(s: f32) -> String {
    let s = s.max(0.0) as u64;
    format!("{}:{:02}", s / 60, s % 60)
}

pub fn train(k: Kernels, args: TrainArgs) -> Result<(), Box<dyn std::error::Error>> {
    let started = Instant::now();
    let comm = crate::dist::comm();
    let (rank, ranks) = comm.map_or((0, 1), |c| (c.rank(), c.size()));
    // Rank 0 speaks for the job; the others train quietly (their errors still show).
    let lead = rank == 0;
    macro_rules! say {
        ($($t:tt)*) => { if lead { eprintln!($($t)*); } };
    }
    if comm.is_none() && (args.sync_bn || args.bucket_mib.is_some() || args.no_overlap) {
        return Err("--sync-bn, --bucket-mib and --no-overlap are for data-parallel runs:                     `mpirun -np N resnet train ...` with a resnet built with `--features mpi`                     (docs/distributed.md)"
            .into());
    }
    let bucket_bytes = match args.bucket_mib {
        Some(m) if !(m > 0.0 && m <= 4096.0) => {
            return Err(format!("--bucket-mib {m}: must be a positive number of MiB").into())
        }
        Some(m) => (m * (1 << 20) as f32) as usize,
        None => 1 << 20,
    };
    let plan = match &args.resume {
        Some(ckpt) => resumed_plan(&args, ckpt)?,
        None => {
            let size = args.size.unwrap_or(64);
            let data = crate::parse_data(args.data.as_deref().unwrap_or("digits"), size)?;
            let config = config_for(&args, &data)?;
            Plan {
                data,
                size,
                val_fraction: args.val_fraction.unwrap_or(0.1),
                config,
            }
        }
    };
    let out = out_folder(&args)?;
    if args.overwrite && args.resume.is_none() && lead {
        // The old run's files go first: a new run stopped early must not leave the old
        // best model beside its own checkpoint.
        for f in resnet::trainer::OUTPUTS {
            match std::fs::remove_file(out.join(f)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(format!("{}: {e}", out.join(f).display()).into())
                }
                _ => {}
            }
        }
    }
    say!("loading {} ...", plan.data);
    let config = plan.config.clone();
    let data = plan.data.load()?.hold_out(plan.val_fraction, config.seed)?;
    let val = data.val.as_ref().map_or(0, |v| v.len());
    say!(
        "training {} on {}: {} training, {val} validation (picks the best model) and {} test images (only reported) of {:?}, {} classes; {} epochs, batch {}, lr {}, {} threads, kernels {}; writing to {}",
        config.arch,
        plan.data,
        data.train.len(),
        data.test.len(),
        data.train.shape,
        data.train.classes.len(),
        config.epochs,
        config.batch,
        config.lr,
        rayon::current_num_threads(),
        k.isa(),
        out.display()
    );
    if comm.is_some() {
        say!(
            "data-parallel over MPI: {ranks} ranks x {} threads; batch {} per rank, global \
             batch {}; batch norm {}; gradients summed in buckets of {:.2} MiB {}",
            rayon::current_num_threads(),
            config.batch,
            config.batch * ranks,
            if args.sync_bn {
                "synchronised across ranks"
            } else {
                "per rank"
            },
            bucket_bytes as f64 / (1 << 20) as f64,
            if args.no_overlap {
                "after the backward pass"
            } else {
                "during the backward pass"
            }
        );
    }
    let mut trainer = match &args.resume {
        Some(ckpt) => {
            let t = Trainer::resume(config, &data, k, &out, ckpt)?;
            if t.epochs_done >= t.config.epochs {
                return Err(format!(
                    "{} has already finished all {} epochs: nothing to train (raise --epochs to \
                     train further)",
                    ckpt.display(),
                    t.config.epochs
                )
                .into());
            }
            say!(
                "resumed from {} after epoch {}",
                ckpt.display(),
                t.epochs_done
            );
            let before: usize = resnet::read_checkpoint(ckpt)?
                .notes
                .get(NOTE_RANKS)
                .and_then(|n| n.parse().ok())
                .unwrap_or(1);
            if before != ranks {
                say!(
                    "note: the run trained on {before} rank(s), this one on {ranks}: each step's \
                     global batch is now {} images (the batch per rank is kept), so the \
                     continuation is not the step-for-step one {before} rank(s) would take",
                    ranks * t.config.batch
                );
            }
            t
        }
        None => match &args.init {
            Some(weights) => {
                let model = ResNet::from_safetensors(config.arch, weights)?;
                say!(
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
                Trainer::from_model(config, model, &data, k, &out)?
            }
            None => Trainer::new(config, &data, k, &out)?,
        },
    };
    trainer.set_note(NOTE_DATA, &plan.data.to_string());
    trainer.set_note(NOTE_SIZE, &plan.size.to_string());
    trainer.set_note(NOTE_VAL, &plan.val_fraction.to_string());
    trainer.set_note(NOTE_RANKS, &ranks.to_string());
    if let Some(c) = comm {
        let mut dp = resnet::distributed::DataParallel::new(std::sync::Arc::clone(c));
        dp.sync_bn = args.sync_bn;
        dp.bucket_bytes = bucket_bytes;
        dp.overlap = !args.no_overlap;
        trainer.data_parallel(dp)?;
    }
    let epochs = trainer.config.epochs;
    let mut epoch_start = Instant::now();
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let mut last_draw = Instant::now();
    let mut progress = |p: Progress| match p {
        _ if !lead => {}
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
    if !lead {
        return Ok(()); // rank 0 writes and reports
    }
    if let Some(dp) = trainer.parallel() {
        let s = dp.stats;
        let per = |t: f64| 1e3 * t / s.steps.max(1) as f64;
        eprintln!(
            "communication (rank 0, per step): {:.2} MB of gradients; forward {:.1} ms, \
             backward {:.1} ms, then {:.1} ms waiting for the sums not hidden behind it",
            s.gradient_values as f64 * 4e-6,
            per(s.forward_s),
            per(s.backward_s),
            per(s.exposed_s)
        );
    }
    let history = trainer.history.clone();
    let plot_path = out.join("training.png");
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
        let path = out.join(file);
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
    format: crate::classify::Format,
) -> Result<(), Box<dyn std::error::Error>> {
    use crate::classify::{csv_field, Format};
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
    let summary = format!(
        "{arch} {} on the {} test images of {data}: accuracy {:.2}%, loss {:.4}",
        weights.display(),
        split.test.len(),
        100.0 * e.accuracy,
        e.loss
    );
    match format {
        Format::Json => {
            let v = serde_json::json!({
                "weights": weights.display().to_string(),
                "arch": arch.to_string(),
                "data": data.to_string(),
                "images": split.test.len(),
                "accuracy": e.accuracy,
                "loss": e.loss,
                "classes": classes,
                "confusion": e.confusion,
            });
            return Ok(crate::emit(&v.to_string())?);
        }
        Format::Csv => {
            eprintln!("{summary}");
            let mut header = String::from("true\\predicted");
            for c in classes {
                header.push(',');
                header.push_str(&csv_field(c));
            }
            crate::emit(&header)?;
            for (c, row) in classes.iter().zip(&e.confusion) {
                let cells: Vec<String> = row.iter().map(usize::to_string).collect();
                crate::emit(&format!("{},{}", csv_field(c), cells.join(",")))?;
            }
            return Ok(());
        }
        Format::Text => crate::emit(&summary)?,
    }
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
