//! The training loop: epochs of SGD over a data set with a warm-up + cosine schedule,
//! evaluation after each epoch, metrics, atomic checkpoints, resume, and export of the
//! best model in torchvision naming.
//!
//! Model selection is honest: the data's validation set ([`Split::val`], an image
//! folder's `val/` or images held out of the training set by [`Split::hold_out`]) picks
//! `best.safetensors`; the test set is only reported. Without a validation set the
//! latest epoch is kept.
//!
//! Output folder contents (each written atomically: `best.safetensors` after an epoch
//! that improves the validation accuracy, the others after every epoch):
//!
//! - `checkpoint.safetensors`: the model (torchvision keys under `model.`), SGD's
//!   momentum buffers (under `momentum.`), and in the metadata the architecture, the
//!   number of classes, the epochs done, the seed (from which every shuffle and
//!   augmentation is derived), the freeze policy, the number of validation images, the
//!   history of metrics and the [`crate::ModelInfo`];
//! - `best.safetensors`: the weights with the best validation accuracy so far, loadable
//!   by PyTorch (`model.load_state_dict(safetensors.torch.load_file(...))`), with the
//!   [`crate::ModelInfo`] in its metadata;
//! - `metrics.csv`: one line per epoch.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use autograd::{Schedule, Sgd, SgdConfig};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use tensor::{Kernels, TensorError, Workspace};

use crate::arch::Arch;
use crate::augment::Augment;
use crate::data::{DataError, Dataset, Split};
use crate::distributed::{Communicator, DataParallel, Shards};
use crate::inference::InferenceModel;
use crate::loader::Loader;
use crate::model::ResNet;
use crate::train::{argmax, train_step, train_step_parallel, Freeze};
use crate::weights::{write_atomic, write_safetensors, SaveView, WeightsError};

/// How to train.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainConfig {
    /// The network to train, initialised from `seed` (a checkpoint to resume must be
    /// for the same one).
    pub arch: Arch,
    /// Epochs of the whole run, at least 1 (a resumed run continues up to this many).
    pub epochs: usize,
    /// Images per mini-batch, at least 1; the evaluation after each epoch uses it too.
    pub batch: usize,
    /// Peak learning rate (after warm-up).
    pub lr: f32,
    /// SGD momentum (0: none).
    pub momentum: f32,
    /// SGD weight decay, `wd * p` added to every parameter's gradient (0: none).
    pub weight_decay: f32,
    /// Nesterov momentum (needs `momentum > 0`).
    pub nesterov: bool,
    /// Epochs of linear warm-up from `lr / 10`, before the cosine decay to 0.
    pub warmup_epochs: usize,
    /// Label smoothing of the training loss, in `[0, 1)` (0: none); evaluation uses
    /// none.
    pub label_smoothing: f32,
    /// Augmentation of the training images (evaluation uses none).
    pub augment: Augment,
    /// Seeds the initial weights, every shuffle and every augmentation.
    pub seed: u64,
    /// Which parameters train; the rest (and their batch norms' statistics) stay as
    /// they were. For fine-tuning a pretrained model ([`Trainer::from_model`]).
    pub freeze: Freeze,
    /// The learning rate of every parameter but the head's (`fc`), as a fraction of
    /// `lr`, in `[0, 1]` usually (1: the same rate; fine-tuning often uses 0.1).
    pub backbone_lr_scale: f32,
}

impl TrainConfig {
    /// Defaults that reach 97-98% test accuracy on the shipped digits with ResNet-20 in
    /// well under a minute on two cores (see docs/training.md).
    pub fn digits() -> Self {
        TrainConfig {
            arch: Arch::Cifar { depth: 20 },
            epochs: 30,
            batch: 64,
            lr: 0.1,
            momentum: 0.9,
            weight_decay: 5e-4,
            nesterov: true,
            warmup_epochs: 2,
            label_smoothing: 0.0,
            augment: Augment::DIGITS,
            seed: 1,
            freeze: Freeze::None,
            backbone_lr_scale: 1.0,
        }
    }
}

impl TrainConfig {
    /// The settings as a JSON object (what a checkpoint records, key `config`).
    pub fn to_json(&self) -> String {
        let a = &self.augment;
        serde_json::json!({
            "arch": self.arch.to_string(),
            "epochs": self.epochs,
            "batch": self.batch,
            "lr": self.lr,
            "momentum": self.momentum,
            "weight_decay": self.weight_decay,
            "nesterov": self.nesterov,
            "warmup_epochs": self.warmup_epochs,
            "label_smoothing": self.label_smoothing,
            "augment": {
                "crop_pad": a.crop_pad,
                "resized_crop": a.resized_crop.map(|(lo, hi)| [lo, hi]),
                "hflip": a.hflip,
                "rotate_degrees": a.rotate_degrees,
            },
            "seed": self.seed,
            "freeze": self.freeze.to_string(),
            "backbone_lr_scale": self.backbone_lr_scale,
        })
        .to_string()
    }

    /// The settings, other than `epochs`, in which `self` differs from `other`, as
    /// `name: ours vs theirs`.
    pub fn differences(&self, other: &TrainConfig) -> Vec<String> {
        let (a, b): (serde_json::Value, serde_json::Value) = (
            serde_json::from_str(&self.to_json()).unwrap_or_default(),
            serde_json::from_str(&other.to_json()).unwrap_or_default(),
        );
        let (Some(a), Some(b)) = (a.as_object(), b.as_object()) else {
            return Vec::new();
        };
        a.iter()
            .filter(|(k, v)| k.as_str() != "epochs" && b.get(k.as_str()) != Some(v))
            .map(|(k, v)| {
                let theirs = b.get(k.as_str()).unwrap_or(&serde_json::Value::Null);
                format!("{k}: {v} vs {theirs}")
            })
            .collect()
    }

    /// Reads [`TrainConfig::to_json`]'s object; an error names the field that is
    /// missing or does not parse.
    pub fn from_json(text: &str) -> Result<Self, String> {
        let v: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
        let field = |k: &str| v.get(k).ok_or_else(|| format!("no `{k}`"));
        let uint = |k: &str| -> Result<usize, String> {
            field(k)?
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .ok_or_else(|| format!("`{k}` is not a count"))
        };
        let float = |v: &serde_json::Value, k: &str| -> Result<f32, String> {
            v.get(k)
                .and_then(serde_json::Value::as_f64)
                .map(|x| x as f32)
                .ok_or_else(|| format!("`{k}` is not a number"))
        };
        let text_of = |k: &str| -> Result<&str, String> {
            field(k)?
                .as_str()
                .ok_or_else(|| format!("`{k}` is not a string"))
        };
        let a = field("augment")?;
        let resized_crop = match a.get("resized_crop") {
            None | Some(serde_json::Value::Null) => None,
            Some(r) => {
                let r: [f32; 2] = serde_json::from_value(r.clone())
                    .map_err(|e| format!("`augment.resized_crop`: {e}"))?;
                Some((r[0], r[1]))
            }
        };
        Ok(TrainConfig {
            arch: text_of("arch")?
                .parse()
                .map_err(|e: crate::UnknownArch| e.to_string())?,
            epochs: uint("epochs")?,
            batch: uint("batch")?,
            lr: float(&v, "lr")?,
            momentum: float(&v, "momentum")?,
            weight_decay: float(&v, "weight_decay")?,
            nesterov: field("nesterov")?
                .as_bool()
                .ok_or("`nesterov` is not true or false")?,
            warmup_epochs: uint("warmup_epochs")?,
            label_smoothing: float(&v, "label_smoothing")?,
            augment: Augment {
                crop_pad: a
                    .get("crop_pad")
                    .and_then(serde_json::Value::as_u64)
                    .and_then(|n| usize::try_from(n).ok())
                    .ok_or("`augment.crop_pad` is not a count")?,
                resized_crop,
                hflip: a
                    .get("hflip")
                    .and_then(serde_json::Value::as_bool)
                    .ok_or("`augment.hflip` is not true or false")?,
                rotate_degrees: float(a, "rotate_degrees")?,
            },
            seed: field("seed")?.as_u64().ok_or("`seed` is not a count")?,
            freeze: text_of("freeze")?.parse()?,
            backbone_lr_scale: float(&v, "backbone_lr_scale")?,
        })
    }
}

/// What a checkpoint says about its run, read from its header only
/// ([`read_checkpoint`]): to resume a run with its own settings.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct CheckpointInfo {
    /// The run's settings; `None` for a checkpoint written before they were recorded.
    pub config: Option<TrainConfig>,
    /// Epochs completed.
    pub epochs_done: usize,
    /// What the caller recorded with [`Trainer::set_note`] (the `resnet` tool: the data
    /// set, image size and validation fraction).
    pub notes: BTreeMap<String, String>,
}

/// Reads what a checkpoint records about its run (its header only); an error when
/// the file is not a checkpoint.
pub fn read_checkpoint(path: impl AsRef<Path>) -> Result<CheckpointInfo, TrainError> {
    let path = path.as_ref();
    let meta = crate::weights::read_metadata(path)?;
    if meta.get("format").map(String::as_str) != Some(CHECKPOINT_FORMAT) {
        return Err(checkpoint_error(
            path,
            format!("not a {CHECKPOINT_FORMAT} file (weights to start a new run from? use --init)"),
        ));
    }
    let config = match meta.get("config") {
        None => None,
        Some(text) => Some(
            TrainConfig::from_json(text)
                .map_err(|e| checkpoint_error(path, format!("its `config`: {e}")))?,
        ),
    };
    let epochs_done = meta
        .get("epochs_done")
        .and_then(|e| e.parse().ok())
        .ok_or_else(|| checkpoint_error(path, "bad epochs_done".into()))?;
    let notes = meta
        .iter()
        .filter_map(|(k, v)| k.strip_prefix("note.").map(|k| (k.to_string(), v.clone())))
        .collect();
    Ok(CheckpointInfo {
        config,
        epochs_done,
        notes,
    })
}

/// One epoch's measurements.
#[derive(Debug, Clone, PartialEq)]
pub struct EpochRecord {
    /// 1-based.
    pub epoch: usize,
    /// The learning rate at the epoch's last step.
    pub lr: f32,
    /// Mean training loss over the epoch's images, each batch's taken before its update
    /// (on augmented images, with label smoothing).
    pub train_loss: f32,
    /// Fraction of the epoch's training images, in `[0, 1]`, whose highest logit was
    /// their label at their step (before its update).
    pub train_acc: f32,
    /// Mean cross-entropy on the validation set after the epoch (eval mode, no
    /// smoothing); `None` when the data has no validation set.
    pub val_loss: Option<f32>,
    /// Fraction of the validation set classified right after the epoch: what picks
    /// `best.safetensors`.
    pub val_acc: Option<f32>,
    /// Mean cross-entropy on the test set after the epoch (eval mode, no smoothing).
    pub test_loss: f32,
    /// Fraction of the test set, in `[0, 1]`, classified right after the epoch.
    pub test_acc: f32,
    /// Wall-clock seconds of the epoch, training and evaluation.
    pub seconds: f32,
}

impl EpochRecord {
    /// The first line of `metrics.csv`: the column names of [`EpochRecord::csv`].
    pub const CSV_HEADER: &'static str =
        "epoch,lr,train_loss,train_acc,val_loss,val_acc,test_loss,test_acc,seconds";

    /// The record as a line of `metrics.csv`, without the newline: every number in
    /// the shortest form that reads back to the same `f32` (the checkpoint keeps its
    /// history this way, so a resumed run compares against exact figures), the
    /// validation fields empty without a validation set.
    pub fn csv(&self) -> String {
        let opt = |v: Option<f32>| v.map(|v| v.to_string()).unwrap_or_default();
        format!(
            "{},{},{},{},{},{},{},{},{}",
            self.epoch,
            self.lr,
            self.train_loss,
            self.train_acc,
            opt(self.val_loss),
            opt(self.val_acc),
            self.test_loss,
            self.test_acc,
            self.seconds
        )
    }

    /// A line of [`EpochRecord::csv`]; also the 7-field lines of checkpoints written
    /// before validation sets.
    fn parse_csv(line: &str) -> Option<Self> {
        let f: Vec<&str> = line.split(',').map(str::trim).collect();
        let p = |i: usize| f[i].parse::<f32>().ok();
        let opt = |i: usize| -> Option<Option<f32>> {
            if f[i].is_empty() {
                Some(None)
            } else {
                p(i).map(Some)
            }
        };
        let (val_loss, val_acc, rest) = match f.len() {
            9 => (opt(4)?, opt(5)?, 6),
            7 => (None, None, 4),
            _ => return None,
        };
        Some(EpochRecord {
            epoch: f[0].parse().ok()?,
            lr: p(1)?,
            train_loss: p(2)?,
            train_acc: p(3)?,
            val_loss,
            val_acc,
            test_loss: p(rest)?,
            test_acc: p(rest + 1)?,
            seconds: p(rest + 2)?,
        })
    }
}

/// Loss, accuracy and confusion matrix of a model on a data set.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    /// Mean cross-entropy (natural log) over the data set.
    pub loss: f32,
    /// Fraction of the images, in `[0, 1]`, whose highest logit is their label.
    pub accuracy: f32,
    /// `confusion[true][predicted]` counts.
    pub confusion: Vec<Vec<usize>>,
}

/// Progress reports, for a progress bar.
#[derive(Debug, Clone)]
pub enum Progress<'a> {
    /// After each training step.
    Step {
        /// The epoch in progress, 1-based.
        epoch: usize,
        /// The run's total epochs ([`TrainConfig::epochs`]).
        epochs: usize,
        /// The batch just trained, 1-based.
        batch: usize,
        /// Batches per epoch.
        batches: usize,
        /// Mean training loss of the epoch so far.
        loss: f32,
        /// Training images per second since the epoch began.
        images_per_s: f32,
    },
    /// After each epoch, once it is evaluated and saved: its record.
    Epoch(&'a EpochRecord),
}

/// Why training stopped.
#[derive(Debug)]
#[non_exhaustive]
pub enum TrainError {
    /// A data set could not be loaded (converted from [`DataError`] by `?`; the trainer
    /// itself is given its data loaded).
    Data(DataError),
    /// A tensor operation failed, or the settings are refused (zero epochs or batch, a
    /// learning rate that is not positive, an empty set, fewer than two classes, SGD
    /// settings that [`Sgd::new`] refuses).
    Tensor(TensorError),
    /// Saving `best.safetensors` failed, or a checkpoint's model part does not fit the
    /// model or holds unusable values.
    Weights(WeightsError),
    /// A checkpoint that cannot be resumed from here.
    Checkpoint {
        /// The checkpoint file.
        path: PathBuf,
        /// Why it cannot be resumed.
        reason: String,
    },
    /// A file or folder of the run could not be created, read or written.
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    /// Training diverged: a loss, a weight or a running statistic became non-finite.
    Diverged {
        /// The epoch it happened in, 1-based.
        epoch: usize,
        /// What became non-finite, and which checkpoint holds the last good epoch.
        reason: String,
    },
}

impl fmt::Display for TrainError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrainError::Data(e) => e.fmt(f),
            TrainError::Tensor(e) => e.fmt(f),
            TrainError::Weights(e) => e.fmt(f),
            TrainError::Checkpoint { path, reason } => {
                write!(f, "checkpoint {}: {reason}", path.display())
            }
            TrainError::Io { path, source } => write!(f, "{}: {source}", path.display()),
            TrainError::Diverged { epoch, reason } => {
                write!(f, "training diverged in epoch {epoch}: {reason}")
            }
        }
    }
}

impl std::error::Error for TrainError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TrainError::Data(e) => Some(e),
            TrainError::Tensor(e) => Some(e),
            TrainError::Weights(e) => Some(e),
            TrainError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl From<TensorError> for TrainError {
    fn from(e: TensorError) -> Self {
        TrainError::Tensor(e)
    }
}
impl From<DataError> for TrainError {
    fn from(e: DataError) -> Self {
        TrainError::Data(e)
    }
}
impl From<WeightsError> for TrainError {
    fn from(e: WeightsError) -> Self {
        TrainError::Weights(e)
    }
}

const CHECKPOINT_FORMAT: &str = "resnet-checkpoint-v1";

/// A training run in progress.
pub struct Trainer<'d> {
    /// The run's settings.
    pub config: TrainConfig,
    /// The network being trained: after each epoch, that epoch's weights (the best so
    /// far are in `best.safetensors`).
    pub model: ResNet,
    sgd: Sgd,
    kernels: Kernels,
    data: &'d Split,
    out: PathBuf,
    /// The scratch and recycled buffers of the training steps.
    workspace: Workspace,
    /// Epochs completed.
    pub epochs_done: usize,
    /// One record per completed epoch, oldest first (restored from the checkpoint on
    /// resume; also written to `metrics.csv`).
    pub history: Vec<EpochRecord>,
    /// The caller's notes, written into checkpoints ([`Trainer::set_note`]).
    notes: BTreeMap<String, String>,
    /// Data-parallel training across ranks ([`Trainer::data_parallel`]).
    parallel: Option<DataParallel>,
}

/// The files a run writes into its folder (`training.png` by the `resnet` tool).
pub const OUTPUTS: [&str; 4] = [
    "best.safetensors",
    "checkpoint.safetensors",
    "metrics.csv",
    "training.png",
];

impl<'d> Trainer<'d> {
    /// A fresh run writing into `out` (created if missing), from a network initialised
    /// from `config.seed`.
    pub fn new(
        config: TrainConfig,
        data: &'d Split,
        kernels: Kernels,
        out: impl AsRef<Path>,
    ) -> Result<Self, TrainError> {
        validate(&config, data)?;
        let model = ResNet::new(config.arch, data.train.classes.len(), config.seed)?;
        Self::from_model(config, model, data, kernels, out)
    }

    /// A run that starts from `model` (pretrained weights, say, from
    /// [`ResNet::from_safetensors`]): fine-tuning. Its architecture must be
    /// `config.arch`; a head whose number of classes differs from the data set's is
    /// replaced by a fresh one (seeded by `config.seed`). `config.freeze` and
    /// `config.backbone_lr_scale` say what trains and how fast.
    pub fn from_model(
        config: TrainConfig,
        mut model: ResNet,
        data: &'d Split,
        kernels: Kernels,
        out: impl AsRef<Path>,
    ) -> Result<Self, TrainError> {
        let out = out.as_ref();
        validate(&config, data)?;
        if model.arch != config.arch {
            return Err(TrainError::Tensor(TensorError::InvalidArgument {
                op: "train",
                reason: format!(
                    "the initial model is {}, but the run is configured for {}",
                    model.arch, config.arch
                ),
            }));
        }
        std::fs::create_dir_all(out).map_err(|source| TrainError::Io {
            path: out.to_path_buf(),
            source,
        })?;
        // A run killed while saving leaves one `<file>.tmp` beside the file: removed here,
        // on the next run in the same folder.
        for name in OUTPUTS {
            let _ = std::fs::remove_file(crate::weights::temporary_path(&out.join(name)));
        }
        let classes = data.train.classes.len();
        if model.num_classes() != classes {
            model.replace_head(classes, config.seed)?;
        }
        let mut sgd = Sgd::new(sgd_config(&config), model.parameters_mut().len())?;
        if config.backbone_lr_scale != 1.0 {
            let scales = model
                .parameters_mut()
                .into_iter()
                .map(|(name, _)| {
                    if name.starts_with("fc.") {
                        1.0
                    } else {
                        config.backbone_lr_scale
                    }
                })
                .collect();
            sgd.set_lr_scales(scales)?;
        }
        Ok(Trainer {
            config,
            model,
            sgd,
            kernels,
            data,
            out: out.to_path_buf(),
            workspace: Workspace::with_limit(crate::train::TRAINING_WORKSPACE_LIMIT),
            epochs_done: 0,
            history: Vec::new(),
            notes: BTreeMap::new(),
            parallel: None,
        })
    }

    /// The memory the training steps' kernels reuse: per-thread scratch and the
    /// activation and gradient buffers of the last steps (up to its limit,
    /// [`crate::TRAINING_WORKSPACE_LIMIT`]). Bound it with [`Workspace::set_limit`]; it is
    /// freed with the trainer.
    pub fn workspace(&self) -> &Workspace {
        &self.workspace
    }

    /// Continues the run saved in `checkpoint` (its architecture and classes must match
    /// `config` and the data); the next step is exactly the one the saved run would
    /// have taken.
    pub fn resume(
        config: TrainConfig,
        data: &'d Split,
        kernels: Kernels,
        out: impl AsRef<Path>,
        checkpoint: impl AsRef<Path>,
    ) -> Result<Self, TrainError> {
        let checkpoint = checkpoint.as_ref();
        let mut t = Trainer::new(config, data, kernels, out)?;
        t.load_checkpoint(checkpoint)?;
        Ok(t)
    }

    /// Trains data-parallel from here on, as one of `dp`'s ranks (see
    /// [`crate::distributed`]): rank 0's state (weights, running statistics, momentum,
    /// epochs done, history; its checkpoint, when it resumed one) is broadcast to every
    /// rank first, each step trains this rank's part of a global batch of `ranks x
    /// config.batch` images, evaluation is shared out and its counts summed, and only
    /// rank 0 writes files. Every rank must call it, with the same settings and data.
    pub fn data_parallel(&mut self, dp: DataParallel) -> Result<(), TrainError> {
        Shards::new(self.data.train.len(), self.config.batch, dp.ranks())?;
        if dp.ranks() > 1 {
            let mut bytes = Vec::new();
            if dp.rank() == 0 {
                bytes = self.checkpoint_bytes()?;
            }
            dp.comm.broadcast_bytes(&mut bytes)?;
            if dp.rank() != 0 {
                self.load_checkpoint_bytes(Path::new("<rank 0's state>"), &bytes)?;
            }
        }
        self.parallel = Some(dp);
        Ok(())
    }

    /// With per-rank batch norm, each rank's running statistics followed its own parts
    /// of the batches: rank 0's are broadcast (what PyTorch DDP's `broadcast_buffers`
    /// does before every forward pass; training-mode forwards never read them, so once
    /// before evaluating is the same). With synchronised batch norm they are equal.
    fn share_running_stats(&mut self) -> Result<(), TrainError> {
        let Some(dp) = self
            .parallel
            .as_ref()
            .filter(|p| p.ranks() > 1 && !p.sync_bn)
        else {
            return Ok(());
        };
        let comm = std::sync::Arc::clone(&dp.comm);
        let mut buffers: Vec<&mut tensor::Tensor> = self
            .model
            .named_tensors_mut()
            .into_iter()
            .filter(|(name, _)| crate::train::is_buffer(name))
            .map(|(_, t)| t)
            .collect();
        let mut bytes: Vec<u8> = Vec::new();
        if comm.rank() == 0 {
            for t in &buffers {
                bytes.extend(t.data().iter().flat_map(|v| v.to_le_bytes()));
            }
        }
        comm.broadcast_bytes(&mut bytes)?;
        let mut values = bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]));
        for t in buffers.iter_mut() {
            for v in t.data_mut() {
                *v = values.next().ok_or_else(|| {
                    checkpoint_error(
                        Path::new("<rank 0's state>"),
                        "too few running statistics".into(),
                    )
                })?;
            }
        }
        Ok(())
    }

    /// The data-parallel state, with what its steps measured ([`Trainer::data_parallel`]).
    pub fn parallel(&self) -> Option<&DataParallel> {
        self.parallel.as_ref()
    }

    /// Whether this process writes the run's files: always, but in data-parallel
    /// training only rank 0.
    pub fn writes_files(&self) -> bool {
        self.parallel.as_ref().is_none_or(|p| p.rank() == 0)
    }

    fn schedule(&self, batches: usize) -> Schedule {
        let c = &self.config;
        Schedule::Warmup {
            steps: c.warmup_epochs * batches,
            start_factor: 0.1,
            then: Box::new(Schedule::Cosine {
                t_max: c.epochs.saturating_sub(c.warmup_epochs) * batches,
                eta_min: 0.0,
            }),
        }
    }

    /// Trains the remaining epochs, reporting progress; returns the history.
    pub fn run(
        &mut self,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<&[EpochRecord], TrainError> {
        self.run_epochs(usize::MAX, progress)
    }

    /// Trains at most `limit` more epochs (of the configured total), checkpointing after
    /// each; returns the history.
    pub fn run_epochs(
        &mut self,
        limit: usize,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<&[EpochRecord], TrainError> {
        let stop = self
            .epochs_done
            .saturating_add(limit)
            .min(self.config.epochs);
        let loader = Loader {
            data: &self.data.train,
            batch: self.config.batch,
            augment: self.config.augment,
            shuffle: true,
            seed: self.config.seed,
        };
        let (rank, ranks) = self
            .parallel
            .as_ref()
            .map_or((0, 1), |p| (p.rank(), p.ranks()));
        let shards = Shards::new(self.data.train.len(), self.config.batch, ranks)?;
        let batches = shards.steps();
        let schedule = self.schedule(batches);
        while self.epochs_done < stop {
            let epoch = self.epochs_done;
            let start = Instant::now();
            let (mut loss_sum, mut correct, mut seen) = (0.0f64, 0usize, 0usize);
            let mut lr = self.config.lr;
            // What a diverged epoch leaves: nothing of it is saved.
            let last_good = format!(
                "nothing of this epoch was saved, {} holds the last good one ({}): lower \
                 the learning rate",
                self.out.join("checkpoint.safetensors").display(),
                if self.epochs_done == 0 {
                    "none yet".to_string()
                } else {
                    format!("epoch {}", self.epochs_done)
                }
            );
            let (model, sgd, kernels, config, ws, parallel) = (
                &mut self.model,
                &mut self.sgd,
                self.kernels,
                &self.config,
                &self.workspace,
                &mut self.parallel,
            );
            loader.for_each_part(
                epoch,
                0,
                shards,
                rank,
                |b, batch| -> Result<(), TrainError> {
                    lr = schedule.lr(config.lr, epoch * batches + b);
                    sgd.set_lr(lr);
                    let n = batch.labels.len();
                    let step = ws.run(|| match parallel.as_mut() {
                        None => train_step(
                            model,
                            sgd,
                            kernels,
                            batch.x,
                            &batch.labels,
                            config.freeze,
                            config.label_smoothing,
                        ),
                        Some(dp) => train_step_parallel(
                            model,
                            sgd,
                            kernels,
                            batch.x,
                            &batch.labels,
                            config.freeze,
                            config.label_smoothing,
                            n as f32 / shards.step_range(b).len() as f32,
                            dp,
                        ),
                    })?;
                    if !step.loss.is_finite() {
                        return Err(TrainError::Diverged {
                            epoch: epoch + 1,
                            reason: format!(
                                "the training loss became {} at batch {b}; {last_good}",
                                step.loss
                            ),
                        });
                    }
                    loss_sum += step.loss as f64 * n as f64;
                    correct += step.correct;
                    seen += n;
                    progress(Progress::Step {
                        epoch: epoch + 1,
                        epochs: config.epochs,
                        batch: b + 1,
                        batches,
                        loss: (loss_sum / seen as f64) as f32,
                        // This rank's rate times the ranks: the job's, near enough.
                        images_per_s: (seen * ranks) as f32 / start.elapsed().as_secs_f32(),
                    });
                    Ok(())
                },
            )?;
            self.share_running_stats()?;
            let comm = self.parallel.as_ref().map(|p| &*p.comm);
            if let Some(comm) = comm {
                // The epoch's figures over every rank's images.
                let mut totals = [loss_sum, correct as f64, seen as f64];
                comm.sum(&mut totals)?;
                (loss_sum, correct, seen) = (totals[0], totals[1] as usize, totals[2] as usize);
            }
            let eval = evaluate_shared(
                &self.model,
                &self.data.test,
                self.kernels,
                self.config.batch,
                comm,
            )?;
            let val = match &self.data.val {
                Some(v) => Some(evaluate_shared(
                    &self.model,
                    v,
                    self.kernels,
                    self.config.batch,
                    comm,
                )?),
                None => None,
            };
            let record = EpochRecord {
                epoch: epoch + 1,
                lr,
                train_loss: (loss_sum / seen.max(1) as f64) as f32,
                train_acc: correct as f32 / seen.max(1) as f32,
                val_loss: val.as_ref().map(|v| v.loss),
                val_acc: val.as_ref().map(|v| v.accuracy),
                test_loss: eval.loss,
                test_acc: eval.accuracy,
                seconds: start.elapsed().as_secs_f32(),
            };
            // A diverged epoch is not saved: the checkpoint of the last good one stays.
            let invalid = self.model.first_invalid_value();
            if !record.test_loss.is_finite() || !record.train_loss.is_finite() || invalid.is_some()
            {
                let what = match invalid {
                    Some((key, i, v)) => format!("{key}[{i}] became {v}"),
                    None => format!("the test loss became {}", record.test_loss),
                };
                return Err(TrainError::Diverged {
                    epoch: epoch + 1,
                    reason: format!("{what}; {last_good}"),
                });
            }
            // The validation set picks the model; without one, the latest epoch is kept
            // (the test set never chooses: its figure would no longer be an estimate).
            let improved = match record.val_acc {
                Some(acc) => {
                    acc > self
                        .history
                        .iter()
                        .filter_map(|r| r.val_acc)
                        .fold(-1.0, f32::max)
                }
                None => true,
            };
            self.epochs_done += 1;
            self.history.push(record.clone());
            if self.writes_files() {
                if improved {
                    self.model.save_safetensors_with(
                        self.out.join("best.safetensors"),
                        Some(&self.info()),
                    )?;
                }
                self.write_metrics()?;
                self.save_checkpoint(self.out.join("checkpoint.safetensors"))?;
            }
            progress(Progress::Epoch(&record));
        }
        Ok(&self.history)
    }

    /// Records `value` under `key` in every checkpoint from now on, for the caller to
    /// read back with [`read_checkpoint`] (the `resnet` tool records the data set, so
    /// `--resume` needs no flags repeated).
    pub fn set_note(&mut self, key: &str, value: &str) {
        self.notes.insert(key.to_string(), value.to_string());
    }

    /// The epoch `best.safetensors` holds: the first with the highest validation
    /// accuracy, or the latest when the data has no validation set.
    pub fn best_epoch(&self) -> Option<&EpochRecord> {
        if self.data.val.is_none() {
            return self.history.last();
        }
        self.history.iter().reduce(|a, b| {
            if b.val_acc.unwrap_or(-1.0) > a.val_acc.unwrap_or(-1.0) {
                b
            } else {
                a
            }
        })
    }

    /// What a user of the trained model needs to feed it: the architecture, the class
    /// names and the preprocessing of the training set (written into `best.safetensors`
    /// and checkpoints, read by `resnet classify`, `features` and `eval`).
    pub fn info(&self) -> crate::ModelInfo {
        let train = &self.data.train;
        crate::ModelInfo::new(
            self.config.arch,
            train.classes.clone(),
            train.shape[1],
            train.mean,
            train.std,
        )
    }

    fn write_metrics(&self) -> Result<(), TrainError> {
        let mut text = String::from(EpochRecord::CSV_HEADER);
        text.push('\n');
        for r in &self.history {
            text.push_str(&r.csv());
            text.push('\n');
        }
        let path = self.out.join("metrics.csv");
        write_atomic(&path, text.as_bytes()).map_err(|source| TrainError::Io { path, source })
    }

    /// The output folder.
    pub fn out(&self) -> &Path {
        &self.out
    }

    /// Writes the checkpoint (atomically).
    pub fn save_checkpoint(&mut self, path: impl AsRef<Path>) -> Result<(), TrainError> {
        let path = path.as_ref();
        self.with_checkpoint(|views, meta| write_safetensors(path, views, Some(meta)))
            .map_err(|source| TrainError::Io {
                path: path.to_path_buf(),
                source,
            })
    }

    /// The checkpoint's bytes, as [`Trainer::save_checkpoint`] would write them.
    fn checkpoint_bytes(&mut self) -> Result<Vec<u8>, TrainError> {
        self.with_checkpoint(|views, meta| {
            safetensors::serialize(views, Some(meta)).map_err(std::io::Error::other)
        })
        .map_err(|e| checkpoint_error(Path::new("<in memory>"), e.to_string()))
    }

    /// Hands the checkpoint's tensors (borrowed) and metadata to `write`.
    fn with_checkpoint<R>(
        &mut self,
        write: impl FnOnce(BTreeMap<String, SaveView>, HashMap<String, String>) -> std::io::Result<R>,
    ) -> std::io::Result<R> {
        let names: Vec<String> = self
            .model
            .parameters_mut()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        // Borrowed, not copied: the writer makes each tensor's bytes as it reaches it.
        let mut views: BTreeMap<String, SaveView> = BTreeMap::new();
        let named = self.model.named_tensors();
        for n in &named {
            let (shape, data) = (n.tensor.shape(), n.tensor.data());
            views.insert(format!("model.{}", n.name), SaveView::F32 { shape, data });
        }
        let momentum: Vec<(&String, [usize; 1], &[f32])> = names
            .iter()
            .zip(self.sgd.state())
            .filter(|(_, buf)| !buf.is_empty())
            .map(|(name, buf)| (name, [buf.len()], &buf[..]))
            .collect();
        for (name, shape, data) in &momentum {
            views.insert(format!("momentum.{name}"), SaveView::F32 { shape, data });
        }
        let mut history = String::new();
        for r in &self.history {
            history.push_str(&r.csv());
            history.push('\n');
        }
        let mut meta: HashMap<String, String> = self.info().to_metadata();
        meta.extend(
            [
                ("format", CHECKPOINT_FORMAT.to_string()),
                ("arch", self.config.arch.to_string()),
                ("classes", self.model.num_classes().to_string()),
                ("epochs_done", self.epochs_done.to_string()),
                ("seed", self.config.seed.to_string()),
                ("freeze", self.config.freeze.to_string()),
                (
                    "val_images",
                    self.data.val.as_ref().map_or(0, |v| v.len()).to_string(),
                ),
                (
                    "backbone_lr_scale",
                    self.config.backbone_lr_scale.to_string(),
                ),
                ("history", history),
                ("config", self.config.to_json()),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v)),
        );
        meta.extend(
            self.notes
                .iter()
                .map(|(k, v)| (format!("note.{k}"), v.clone())),
        );
        write(views, meta)
    }

    /// Restores model, optimizer state, epoch count and history from a checkpoint.
    /// Nothing is changed on error.
    pub fn load_checkpoint(&mut self, path: impl AsRef<Path>) -> Result<(), TrainError> {
        let path = path.as_ref();
        let bytes =
            crate::files::read_regular(path, u64::MAX).map_err(|source| TrainError::Io {
                path: path.to_path_buf(),
                source,
            })?;
        self.load_checkpoint_bytes(path, &bytes)
    }

    /// [`Trainer::load_checkpoint`] from the file's bytes (`path` names it in errors).
    fn load_checkpoint_bytes(&mut self, path: &Path, bytes: &[u8]) -> Result<(), TrainError> {
        let (_, header) = SafeTensors::read_metadata(bytes)
            .map_err(|e| checkpoint_error(path, format!("not a checkpoint: {e}")))?;
        let meta = header.metadata().clone().unwrap_or_default();
        let get = |k: &str| meta.get(k).cloned().unwrap_or_default();
        if get("format") != CHECKPOINT_FORMAT {
            return Err(checkpoint_error(
                path,
                format!(
                    "not a {CHECKPOINT_FORMAT} file (weights to start a new run from? use --init)"
                ),
            ));
        }
        let (arch, classes) = (get("arch"), get("classes"));
        let want_classes = self.model.num_classes().to_string();
        // Checkpoints written before the CIFAR family had its prefix say `resnet20`.
        let legacy = match self.config.arch {
            Arch::Cifar { depth } => format!("resnet{depth}"),
            a => a.to_string(),
        };
        if (arch != self.config.arch.to_string() && arch != legacy) || classes != want_classes {
            return Err(checkpoint_error(
                path,
                format!(
                    "it is for {arch} with {classes} classes, but this run trains {} with {want_classes}",
                    self.config.arch
                ),
            ));
        }
        // Written since fine-tuning came; older checkpoints trained everything at one rate.
        let (freeze, scale) = (get("freeze"), get("backbone_lr_scale"));
        let (want_freeze, want_scale) = (
            self.config.freeze.to_string(),
            self.config.backbone_lr_scale,
        );
        if (!freeze.is_empty() && freeze != want_freeze)
            || (!scale.is_empty() && scale.parse::<f32>().ok() != Some(want_scale))
        {
            return Err(checkpoint_error(
                path,
                format!(
                    "it was trained with freeze {freeze} and backbone learning-rate scale \
                     {scale}, but this run has {want_freeze} and {want_scale}"
                ),
            ));
        }
        // Written since the settings were recorded: all but the number of epochs must be
        // the run's own, or the resumed run would not be the one it continues.
        if let Some(text) = meta.get("config") {
            let saved = TrainConfig::from_json(text)
                .map_err(|e| checkpoint_error(path, format!("its `config`: {e}")))?;
            let differ = self.config.differences(&saved);
            if !differ.is_empty() {
                return Err(checkpoint_error(
                    path,
                    format!(
                        "the run had other settings (this run's vs the checkpoint's): {} \
                         (only the number of epochs may change when resuming)",
                        differ.join(", ")
                    ),
                ));
            }
        }
        // Written since validation sets came: the run must hold out the same images.
        let val = get("val_images");
        let want_val = self.data.val.as_ref().map_or(0, |v| v.len()).to_string();
        if !val.is_empty() && val != want_val {
            return Err(checkpoint_error(
                path,
                format!(
                    "its run validated on {val} images, but this run's data has {want_val}: \
                     hold out the same (the same --val-fraction and --seed)"
                ),
            ));
        }
        let epochs_done: usize = get("epochs_done")
            .parse()
            .map_err(|_| checkpoint_error(path, "bad epochs_done".into()))?;
        let history: Vec<EpochRecord> = get("history")
            .lines()
            .filter_map(EpochRecord::parse_csv)
            .collect();
        let file =
            SafeTensors::deserialize(bytes).map_err(|e| checkpoint_error(path, e.to_string()))?;
        // The model part is a torchvision-named state dict under `model.`.
        let model_part: Vec<(String, TensorView)> = file
            .iter()
            .filter_map(|(k, v)| k.strip_prefix("model.").map(|k| (k.to_string(), v)))
            .collect();
        let model_bytes = safetensors::serialize(model_part, None)
            .map_err(|e| checkpoint_error(path, e.to_string()))?;
        let mut model = self.model.clone();
        model.load_safetensors_bytes(path, &model_bytes)?;
        let names: Vec<(String, usize)> = model
            .parameters_mut()
            .into_iter()
            .map(|(n, t)| (n, t.len()))
            .collect();
        let mut buffers = Vec::with_capacity(names.len());
        for (name, len) in &names {
            match file.tensor(&format!("momentum.{name}")) {
                Ok(v) if v.dtype() == Dtype::F32 && v.shape() == [*len] => {
                    let buffer: Vec<f32> = v
                        .data()
                        .chunks_exact(4)
                        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                        .collect();
                    if let Some(bad) = buffer.iter().find(|v| !v.is_finite()) {
                        return Err(checkpoint_error(
                            path,
                            format!("momentum.{name} holds {bad}: the run had diverged"),
                        ));
                    }
                    buffers.push(buffer)
                }
                Ok(_) => {
                    return Err(checkpoint_error(
                        path,
                        format!("momentum.{name} has the wrong shape"),
                    ))
                }
                Err(_) => buffers.push(Vec::new()),
            }
        }
        self.sgd.load_state(buffers)?;
        self.model = model;
        self.epochs_done = epochs_done;
        self.history = history;
        Ok(())
    }
}

fn checkpoint_error(path: &Path, reason: String) -> TrainError {
    TrainError::Checkpoint {
        path: path.to_path_buf(),
        reason,
    }
}

fn sgd_config(c: &TrainConfig) -> SgdConfig {
    SgdConfig {
        lr: c.lr,
        momentum: c.momentum,
        dampening: 0.0,
        weight_decay: c.weight_decay,
        nesterov: c.nesterov,
    }
}

fn validate(c: &TrainConfig, data: &Split) -> Result<(), TrainError> {
    let bad = |reason: String| {
        Err(TrainError::Tensor(TensorError::InvalidArgument {
            op: "train",
            reason,
        }))
    };
    if c.batch == 0 || c.epochs == 0 {
        return bad("epochs and batch size must be at least 1".into());
    }
    if !(c.lr > 0.0 && c.lr.is_finite()) {
        return bad(format!("learning rate {} must be a positive number", c.lr));
    }
    if !(c.backbone_lr_scale >= 0.0 && c.backbone_lr_scale.is_finite()) {
        return bad(format!(
            "backbone learning-rate scale {} must be a number >= 0",
            c.backbone_lr_scale
        ));
    }
    if data.train.is_empty() || data.test.is_empty() {
        return bad("the training and test sets must not be empty".into());
    }
    if let Some(val) = &data.val {
        if val.is_empty() || val.classes != data.train.classes {
            return bad(format!(
                "the validation set has {} images of {} classes; it needs images of the \
                 training set's {} classes",
                val.len(),
                val.classes.len(),
                data.train.classes.len()
            ));
        }
    }
    if data.train.classes.len() < 2 {
        return bad("at least two classes are needed".into());
    }
    Ok(())
}

/// Evaluates `model` (batch norm with its running statistics, folded) on `data`.
pub fn evaluate(
    model: &ResNet,
    data: &Dataset,
    kernels: Kernels,
    batch: usize,
) -> Result<Evaluation, TrainError> {
    evaluate_shared(model, data, kernels, batch, None)
}

/// [`evaluate`] shared out across data-parallel ranks (each evaluates a contiguous part
/// of `data`, [`Shards::evaluation_part`], and the sums are summed across them): the
/// same figures on every rank. Every rank calls it. `None`: all of it here.
pub fn evaluate_shared(
    model: &ResNet,
    data: &Dataset,
    kernels: Kernels,
    batch: usize,
    comm: Option<&dyn Communicator>,
) -> Result<Evaluation, TrainError> {
    let (rank, ranks) = comm.map_or((0, 1), |c| (c.rank(), c.size()));
    let part = Shards::evaluation_part(data.len(), rank, ranks);
    let classes = model.num_classes();
    let fast = InferenceModel::new(model, kernels)?;
    let loader = Loader {
        data,
        batch: batch.max(1),
        augment: Augment::NONE,
        shuffle: false,
        seed: 0,
    };
    let mut confusion = vec![vec![0usize; classes]; classes];
    let (mut loss_sum, mut correct) = (0.0f64, 0usize);
    let steps = part.len().div_ceil(loader.batch);
    let range = |b: usize| {
        part.start + b * loader.batch..(part.start + (b + 1) * loader.batch).min(part.end)
    };
    loader.for_each_range(0, 0, steps, range, |_, b| -> Result<(), TrainError> {
        let logits = fast.forward(&b.x)?;
        let logp = kernels.log_softmax(&logits)?;
        for (row, &t) in logp.data().chunks(classes).zip(&b.labels) {
            if t >= classes {
                return Err(TrainError::Tensor(TensorError::InvalidArgument {
                    op: "evaluate",
                    reason: format!("label {t} but the model has {classes} classes"),
                }));
            }
            loss_sum -= row[t] as f64;
            let pred = argmax(row);
            confusion[t][pred] += 1;
            correct += usize::from(pred == t);
        }
        Ok(())
    })?;
    if let Some(comm) = comm {
        let mut sums: Vec<f64> = [loss_sum, correct as f64]
            .into_iter()
            .chain(confusion.iter().flatten().map(|&c| c as f64))
            .collect();
        comm.sum(&mut sums)?;
        (loss_sum, correct) = (sums[0], sums[1] as usize);
        for (c, &s) in confusion.iter_mut().flatten().zip(&sums[2..]) {
            *c = s as usize;
        }
    }
    let n = data.len().max(1);
    Ok(Evaluation {
        loss: (loss_sum / n as f64) as f32,
        accuracy: correct as f32 / n as f32,
        confusion,
    })
}

pub use crate::inference::top_k;
