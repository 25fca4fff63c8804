//! `resnet`: the command-line tool.
//!
//! Subcommands: `train` and `eval` (a data set, with progress, checkpoints and metrics),
//! `classify` and `features` (images through a torchvision/timm-named `.safetensors`
//! file), `bench` (the benchmark tables: `gemm`, `scaling`, `conv`, `model`, `train`)
//! and `info`, which reports what the tensor engine found on this machine: CPU
//! features, the active ISA tier (and whether `RESNET_ISA` forced it) and the kernel
//! chosen for each operation; `--peak` also measures the FMA peak, and `--plan ARCH`
//! prints the convolution plan of every layer of a network.

mod bench;
mod classify;
mod dist;
mod export;
mod plan;
mod plot;
mod train;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tensor::isa::{self, IsaChoice};
use tensor::{peak, Isa, Kernels};

#[derive(Parser)]
#[command(
    name = "resnet",
    version,
    about = "A from-scratch ResNet engine for the CPU"
)]
struct Cli {
    /// Worker threads (default: one per core).
    #[arg(long, global = true)]
    threads: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the CPU features found, the active ISA tier and the kernel for each
    /// operation; with --plan ARCH, the convolution plan of every layer of a network.
    Info {
        /// Also measure the peak FMA rate of every supported tier (about a second each).
        #[arg(long)]
        peak: bool,
        /// Print the convolution plan of this architecture instead: per layer, the
        /// forward, dX and dW routes, the layout and the microkernels.
        #[arg(long, value_name = "ARCH")]
        plan: Option<String>,
        /// With --plan: images per batch.
        #[arg(long, default_value_t = 1)]
        batch: usize,
        /// With --plan: image side (default: 224, or 32 for the CIFAR nets).
        #[arg(long)]
        size: Option<usize>,
        /// With --plan: the training plan (forward, dX and dW, in NCHW) instead of
        /// inference's.
        #[arg(long)]
        train: bool,
        /// With --plan: the backbone's output stride (8 or 16: dilated stages; 32, the
        /// default: the plain network).
        #[arg(long, default_value_t = 32)]
        output_stride: usize,
        /// JSON instead of text: one object (with --plan: one per layer).
        #[arg(long)]
        json: bool,
    },
    /// Train a ResNet (default: ResNet-20 on the shipped handwritten digits) with a
    /// progress bar; writes the best model, a checkpoint, metrics and a plot to --out.
    Train {
        /// Data set: `digits` (shipped; the default), `cifar10:DIR` (the binary version)
        /// or `folder:DIR` (DIR/train/<class>/*.jpg|png, DIR/test/<class>/..., and
        /// DIR/val/<class>/... as the validation set if present).
        #[arg(long)]
        data: Option<String>,
        /// Architecture: a CIFAR cifar-resnet20/32/44/56/110 or resnet18/34/50/101/152,
        /// wide_resnet50_2/wide_resnet101_2, resnext50_32x4d/resnext101_32x8d/resnext101_64x4d,
        /// resnet26d/50d/101d (timm's ResNet-D)
        /// (default: cifar-resnet20).
        #[arg(long)]
        arch: Option<String>,
        /// Epochs of the whole run (default: 30); the one setting a resumed run may change.
        #[arg(long)]
        epochs: Option<usize>,
        /// Images per batch (default: 64, 128 for CIFAR-10).
        #[arg(long)]
        batch: Option<usize>,
        /// Peak learning rate, after a 2-epoch warm-up, then cosine decay (default: 0.1).
        #[arg(long)]
        lr: Option<f32>,
        /// Seed for the initial weights, the validation split, shuffles and augmentation
        /// (default: 1).
        #[arg(long)]
        seed: Option<u64>,
        /// Continue the run of this checkpoint, with the settings it records (data set
        /// included): only --epochs may change, other flags must repeat its values. Writes
        /// into the checkpoint's folder unless --out says otherwise.
        #[arg(long)]
        resume: Option<std::path::PathBuf>,
        /// Fine-tune: start from these weights (a torchvision/timm-named `.safetensors`
        /// of --arch, any head: a head of another size is replaced to fit the data set).
        #[arg(long, conflicts_with = "resume")]
        init: Option<std::path::PathBuf>,
        /// What stays fixed: `none` (the default), `backbone` (only the head trains) or
        /// `all-but-last-stage` (the last stage and the head train). Frozen weights and
        /// their batch norms' statistics stay exactly as they were.
        #[arg(long)]
        freeze: Option<String>,
        /// Learning rate of everything but the head, as a fraction of --lr (default 1;
        /// fine-tuning often uses 0.1).
        #[arg(long)]
        backbone_lr_scale: Option<f32>,
        /// Fraction of the training images held out (per class, seeded) as the
        /// validation set that picks best.safetensors; the test set is only reported
        /// (default 0.1). Not used when an image folder has its own `val/` beside
        /// `test/`. 0: no validation, best.safetensors is the last epoch.
        #[arg(long)]
        val_fraction: Option<f32>,
        /// Output folder. Without it: runs/train, or runs/train-2, -3, ... when that
        /// already holds a run. A folder given here that holds a run is refused unless
        /// --overwrite.
        #[arg(long)]
        out: Option<std::path::PathBuf>,
        /// Replace the run in --out.
        #[arg(long)]
        overwrite: bool,
        /// Image side for `folder:DIR` data (shorter side resized, then centre-cropped;
        /// default 64).
        #[arg(long)]
        size: Option<usize>,
        /// Under MPI (`mpirun -np N`, a binary built with `--features mpi`): synchronised
        /// batch norm, whose statistics are those of the global batch (PyTorch's
        /// SyncBatchNorm). Without it each rank normalises by its own part (DDP's
        /// default). --batch is per rank either way.
        #[arg(long)]
        sync_bn: bool,
        /// Under MPI: the size of the gradient buckets summed across ranks while the
        /// backward pass runs, in MiB (default 1).
        #[arg(long)]
        bucket_mib: Option<f32>,
        /// Under MPI: sum the gradients after the backward pass instead of during it (to
        /// measure what the overlap hides).
        #[arg(long)]
        no_overlap: bool,
    },
    /// Write a data set as an image folder (DIR/train/<class>/*.png, DIR/test/...), e.g.
    /// the shipped digits, to try fine-tuning and `classify` on images.
    ExportFolder {
        /// The data set (`digits` or `cifar10:DIR`).
        #[arg(long, default_value = "digits")]
        data: String,
        /// The folder to write (must not hold `train` or `test` yet).
        #[arg(long)]
        out: std::path::PathBuf,
    },
    /// Accuracy and confusion matrix of a weights file on a data set's test images.
    Eval {
        /// A `.safetensors` file in torchvision naming (e.g. best.safetensors from `train`).
        #[arg(long)]
        weights: std::path::PathBuf,
        /// Data set, as for `train`.
        #[arg(long, default_value = "digits")]
        data: String,
        /// Architecture of the weights: needed for a file that does not say it
        /// (torchvision's, timm's); files written by `train` do.
        #[arg(long)]
        arch: Option<String>,
        /// Images per batch.
        #[arg(long, default_value_t = 128)]
        batch: usize,
        /// Image side for `folder:DIR` data: the model file's own when it says it,
        /// otherwise 64.
        #[arg(long)]
        size: Option<usize>,
        /// One JSON object: accuracy, loss, images, classes and the confusion matrix.
        #[arg(long, conflicts_with = "csv")]
        json: bool,
        /// The confusion matrix as CSV (rows: true class, columns: predicted); the
        /// accuracy goes to standard error.
        #[arg(long)]
        csv: bool,
    },
    /// Top-5 classes of images (JPEG or PNG), with probabilities: a model trained by
    /// `train` is fed as it was trained (its file says how); a torchvision/timm file as
    /// an ImageNet network.
    Classify {
        /// A `.safetensors` file: `best.safetensors` from `train`, or a
        /// torchvision/timm-named file (then give --arch).
        #[arg(long)]
        weights: std::path::PathBuf,
        /// Architecture of the weights: needed for a file that does not say it.
        #[arg(long)]
        arch: Option<String>,
        /// How many classes to print per image.
        #[arg(long, default_value_t = 5)]
        top: usize,
        /// Images decoded and run at once: memory stays flat however many are given.
        #[arg(long, default_value_t = 16)]
        batch: usize,
        /// One JSON object per image and line: `image`, and `predictions` (`rank`,
        /// `class`, `name`, `probability`) or `error`.
        #[arg(long, conflicts_with = "csv")]
        json: bool,
        /// CSV: `image,rank,class,name,probability`, one line per prediction.
        #[arg(long)]
        csv: bool,
        /// A file listing more images, one path per line (`#` starts a comment line).
        #[arg(long)]
        list: Option<std::path::PathBuf>,
        /// The images: files, or folders (every JPEG and PNG inside, recursively). One
        /// that cannot be read is reported and the rest go on; the exit status is then 1.
        #[arg(required_unless_present = "list")]
        images: Vec<std::path::PathBuf>,
    },
    /// Pooled embeddings of images (2048 floats each for ResNet-50, 512 for ResNet-18),
    /// written to a `.safetensors` file (`features`, `[N, D]`).
    Features {
        /// A `.safetensors` file, as for `classify`.
        #[arg(long)]
        weights: std::path::PathBuf,
        /// Architecture of the weights: needed for a file that does not say it.
        #[arg(long)]
        arch: Option<String>,
        /// Output file.
        #[arg(long, default_value = "features.safetensors")]
        out: std::path::PathBuf,
        /// Images decoded and run at once: memory stays flat however many are given.
        #[arg(long, default_value_t = 16)]
        batch: usize,
        /// Output stride of the backbone: 8 or 16 dilate layer3/layer4 instead of
        /// striding (torchvision's `replace_stride_with_dilation`, bottleneck nets), 32
        /// is the plain network (the default). The pooled features of a dilated backbone
        /// see a finer map.
        #[arg(long)]
        output_stride: Option<usize>,
        /// A file listing more images, one path per line.
        #[arg(long)]
        list: Option<std::path::PathBuf>,
        /// The images: files or folders, as for `classify`; one that cannot be read is
        /// reported and left out (the exit status is then 1).
        #[arg(required_unless_present = "list")]
        images: Vec<std::path::PathBuf>,
    },
    /// Benchmark tables: GFLOP/s and % of the measured FMA peak.
    Bench {
        #[command(subcommand)]
        what: BenchCommand,
        /// Print one JSON object per line instead of a table.
        #[arg(long, global = true)]
        json: bool,
        /// Seconds spent timing each case (the best run is reported).
        #[arg(long, global = true, default_value_t = 0.5)]
        seconds: f64,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// GEMM: squares 256..2048 and ResNet-50's im2col shapes, ours vs matrixmultiply.
    Gemm,
    /// GEMM thread scaling: every shape of `gemm` on one thread and on --threads N, in
    /// turns within one run, against the FMA peak's own scaling.
    Scaling,
    /// Whole-network inference (random weights, BN folded), images/s and GFLOP/s.
    Model {
        /// Architecture: resnet18/34/50/101/152, wide_resnet50_2/wide_resnet101_2, resnext50_32x4d/resnext101_32x8d/resnext101_64x4d, resnet26d/50d/101d (timm) or a CIFAR cifar-resnet20/32/44/56/110.
        #[arg(long, default_value = "resnet50")]
        arch: String,
        /// Images per batch.
        #[arg(long, default_value_t = 1)]
        batch: usize,
        /// Output stride: 8 or 16 for the dilated backbones (bottleneck nets), 32 plain.
        #[arg(long, default_value_t = 32)]
        output_stride: usize,
        /// Keep every 3x3 layer on the exact direct kernel: no Winograd (which the plan
        /// takes for the 3x3 layers of up to 128 channels in the blocked layout, and 256
        /// within --winograd-memory).
        #[arg(long)]
        no_winograd: bool,
        /// MiB the model may spend on Winograd's transformed weights where they cost more
        /// memory than the direct ones (all such layers or none: ResNet-18's take 21 MB,
        /// ResNet-50's 35 MB). By default the library's budget for the batch: 24 MiB and
        /// 2 MiB an image, which keeps ResNet-50's batch-1 peak RSS under 150 MB and
        /// spends its 35 MB from batch 5.
        #[arg(long)]
        winograd_memory: Option<usize>,
        /// After the timing, profile the forward pass: each step's time inside the
        /// network (median over the profiled passes), every convolution by its name with
        /// its % of the FMA peak, and the stem, layout conversion, pool and classifier.
        #[arg(long)]
        profile: bool,
    },
    /// One training step (forward, backward, SGD update): ms/step, images/s, peak RSS.
    Train {
        /// Architecture: a CIFAR cifar-resnet20/32/44/56/110 (32x32) or resnet18/34/50/101/152, wide_resnet50_2/wide_resnet101_2, resnext50_32x4d/resnext101_32x8d/resnext101_64x4d, resnet26d/50d/101d (224x224).
        #[arg(long, default_value = "cifar-resnet20")]
        arch: String,
        /// Images per batch.
        #[arg(long, default_value_t = 128)]
        batch: usize,
        /// After the timing, profile the step: every op's forward and backward time
        /// (median over the profiled steps), with its layer, output shape, the
        /// convolution routes and their % of the FMA peak, then the totals by kind of op.
        #[arg(long)]
        profile: bool,
    },
    /// conv2d forward for every distinct ResNet-50 layer.
    Conv {
        /// Batch sizes to run (comma-separated).
        #[arg(long, value_delimiter = ',', default_value = "1,16")]
        batch: Vec<usize>,
        /// Route: auto (the plan's choice per layer in NCHW), blocked (the plan's choice
        /// in the blocked channel layout, as ResNet-18/50 inference runs: Winograd for
        /// the 3x3 layers of up to 128 channels), blocked-direct (the blocked kernel on
        /// every layer, no Winograd), gemm or direct (that family,
        /// in the form the plan picks for the shape), or one forward route by name
        /// (`resnet info --plan` lists them: gemm-im2col, direct-planar, ...).
        #[arg(long, default_value = "auto")]
        path: String,
        /// The layers: `resnet50` (every distinct convolution of ResNet-50),
        /// `resnext50` (the grouped 3x3 convolutions of ResNeXt-50 32x4d; GFLOP/s count
        /// their real multiply-adds) or `wide50` (the 3x3 convolutions of Wide
        /// ResNet-50-2).
        #[arg(long, default_value = "resnet50")]
        layers: String,
    },
}

/// A `--data` value, with `--size` applied to image folders.
pub(crate) fn parse_data(
    spec: &str,
    size: usize,
) -> Result<resnet::data::DataSpec, Box<dyn std::error::Error>> {
    if size == 0 {
        return Err("--size must be at least 1".into());
    }
    Ok(spec.parse::<resnet::data::DataSpec>()?.with_size(size))
}

fn format_of(json: bool, csv: bool) -> classify::Format {
    match (json, csv) {
        (true, _) => classify::Format::Json,
        (_, true) => classify::Format::Csv,
        _ => classify::Format::Text,
    }
}

/// Writes one line to standard output. An error (a closed pipe, as in `resnet bench gemm
/// | head`) ends the command instead of panicking as `println!` would.
pub(crate) fn emit(line: &str) -> std::io::Result<()> {
    use std::io::Write;
    writeln!(std::io::stdout().lock(), "{line}")
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = dist::init() {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    match run(cli) {
        Ok(()) => {
            dist::finalize();
            ExitCode::SUCCESS
        }
        Err(e)
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            dist::finalize();
            ExitCode::SUCCESS
        }
        Err(e) => {
            match dist::comm().filter(|c| c.size() > 1) {
                Some(c) => eprintln!("error on rank {}: {e}", c.rank()),
                None => eprintln!("error: {e}"),
            }
            // The other ranks would wait for this one in their next collective.
            dist::abort_if_parallel();
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
    // MPI ranks on one machine share its cores: one rank per machine gets them all.
    let threads = cli.threads.or_else(|| {
        let local = dist::local_ranks();
        (dist::comm().is_some() && local > 1).then(|| {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            (cores / local).max(1)
        })
    });
    if let Some(n) = threads {
        if n == 0 {
            return Err("--threads must be at least 1".into());
        }
        // matrixmultiply (the baseline in `bench`) reads its thread count once, from
        // this variable, on first use; set it before any thread exists.
        if std::env::var_os("MATMUL_NUM_THREADS").is_none() {
            std::env::set_var("MATMUL_NUM_THREADS", n.to_string());
        }
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()?;
    }
    match cli.command {
        Command::Info {
            peak,
            plan: Some(arch),
            batch,
            size,
            train,
            output_stride,
            json,
        } => {
            if peak {
                return Err(
                    "--peak and --plan are separate reports: run them one at a time".into(),
                );
            }
            if batch == 0 || size == Some(0) {
                return Err("--batch and --size must be at least 1".into());
            }
            let shape = plan::Shape {
                batch,
                size,
                output_stride,
            };
            plan::print(&Kernels::active()?, arch.parse()?, shape, train, json)
        }
        Command::Info { peak, json, .. } => info(peak, json),
        Command::Train {
            data,
            arch,
            epochs,
            batch,
            lr,
            seed,
            resume,
            init,
            freeze,
            backbone_lr_scale,
            val_fraction,
            out,
            overwrite,
            size,
            sync_bn,
            bucket_mib,
            no_overlap,
        } => train::train(
            Kernels::active()?,
            train::TrainArgs {
                data,
                arch,
                epochs,
                batch,
                lr,
                seed,
                resume,
                init,
                freeze,
                backbone_lr_scale,
                val_fraction,
                out,
                overwrite,
                size,
                sync_bn,
                bucket_mib,
                no_overlap,
            },
        ),
        Command::Classify {
            weights,
            arch,
            top,
            batch,
            json,
            csv,
            list,
            images,
        } => classify::classify(
            Kernels::active()?,
            weights,
            arch,
            classify::expand_inputs(images, list.as_deref())?,
            top.max(1),
            batch.max(1),
            format_of(json, csv),
        ),
        Command::Features {
            weights,
            arch,
            out,
            batch,
            output_stride,
            list,
            images,
        } => classify::features(
            Kernels::active()?,
            weights,
            arch,
            classify::expand_inputs(images, list.as_deref())?,
            out,
            batch.max(1),
            output_stride,
        ),
        Command::Eval {
            weights,
            data,
            arch,
            batch,
            size,
            json,
            csv,
        } => {
            let (arch, info) = classify::resolve(&weights, arch.as_deref())?;
            let size = match (size, &info) {
                (Some(s), Some(i)) if s != i.input_size => {
                    return Err(format!(
                        "--size {s} contradicts {}, whose model takes {n}x{n} images (leave \
                         out --size)",
                        weights.display(),
                        n = i.input_size
                    )
                    .into())
                }
                (Some(s), _) => s,
                (None, Some(i)) => i.input_size,
                (None, None) => 64,
            };
            train::eval(
                Kernels::active()?,
                weights,
                arch,
                info,
                parse_data(&data, size)?,
                batch.max(1),
                format_of(json, csv),
            )
        }
        Command::ExportFolder { data, out } => export::export_folder(&data.parse()?, &out),
        Command::Bench {
            what,
            json,
            seconds,
        } => {
            // At most a day: a larger budget is a typo, and `Duration` cannot hold 1e300.
            let budget = Duration::try_from_secs_f64(seconds)
                .ok()
                .filter(|d| !d.is_zero() && d.as_secs() <= 86_400)
                .ok_or_else(|| {
                    format!(
                        "--seconds {seconds}: must be a positive number of at most 86400 (a day)"
                    )
                })?;
            let k = Kernels::active()?;
            let threads = rayon::current_num_threads();
            match what {
                BenchCommand::Gemm => bench::gemm(&k, threads, budget, json),
                BenchCommand::Scaling => bench::scaling(&k, threads, budget, json),
                BenchCommand::Model {
                    arch,
                    batch,
                    output_stride,
                    no_winograd,
                    winograd_memory,
                    profile,
                } => {
                    if batch == 0 {
                        return Err("--batch must be at least 1".into());
                    }
                    let arch = arch.parse()?;
                    let mut options = resnet::InferenceOptions {
                        winograd: !no_winograd,
                        ..resnet::InferenceOptions::for_batch(batch)
                    };
                    if let Some(mib) = winograd_memory {
                        // The whole budget, whatever the batch.
                        options.winograd_memory = mib
                            .checked_mul(1 << 20)
                            .ok_or("--winograd-memory is too large")?;
                        options.winograd_memory_per_image = 0;
                    }
                    bench::model(
                        &k,
                        threads,
                        arch,
                        batch,
                        output_stride,
                        options,
                        budget,
                        profile,
                        json,
                    )
                }
                BenchCommand::Train {
                    arch,
                    batch,
                    profile,
                } => {
                    if batch == 0 {
                        return Err("--batch must be at least 1".into());
                    }
                    bench::train(&k, threads, arch.parse()?, batch, budget, profile, json)
                }
                BenchCommand::Conv {
                    batch,
                    path,
                    layers,
                } => {
                    if batch.contains(&0) {
                        return Err("--batch sizes must be at least 1".into());
                    }
                    let route: bench::ConvRoute = path.parse()?;
                    let layers = match layers.as_str() {
                        "resnet50" => bench::RESNET50_CONVS,
                        "resnext50" => bench::RESNEXT50_GROUPED,
                        "wide50" => bench::WIDE_RESNET50_2_3X3,
                        other => {
                            return Err(format!(
                                "unknown --layers {other:?}: resnet50, resnext50 or wide50"
                            )
                            .into())
                        }
                    };
                    bench::conv(&k, threads, &batch, route, layers, budget, json)
                }
            }
        }
    }
}

fn info(measure_peak: bool, json: bool) -> Result<(), Box<dyn std::error::Error>> {
    let features = isa::cpu_features();
    let supported: Vec<_> = Isa::ALL
        .iter()
        .filter(|i| i.is_supported())
        .map(|i| i.name())
        .collect();
    let choice = isa::active()?;
    let k = Kernels::active()?;
    let threads = rayon::current_num_threads();
    // Measured first, printed in either form.
    let mut peaks = Vec::new();
    if measure_peak {
        for isa in Isa::ALL.into_iter().filter(|i| i.is_supported()) {
            let k = Kernels::for_isa(isa)?;
            let one = peak::fma_peak(&k, 1, Duration::from_millis(500));
            let all = peak::fma_peak(&k, threads, Duration::from_millis(500));
            peaks.push((isa.name(), one.gflops, all.gflops));
        }
    }
    if json {
        let kernels: serde_json::Map<String, serde_json::Value> = k
            .kernel_names()
            .into_iter()
            .map(|(op, kernel)| (op.to_string(), kernel.to_string().into()))
            .collect();
        let peaks: Vec<_> = peaks
            .iter()
            .map(|(isa, one, all)| {
                serde_json::json!({"isa": isa, "gflops_1_thread": one, "gflops_all_threads": all})
            })
            .collect();
        let v = serde_json::json!({
            "cpu_features": features,
            "tiers": supported,
            "active_tier": choice.isa().name(),
            "forced": matches!(choice, IsaChoice::Forced(_)),
            "threads": threads,
            "kernels": kernels,
            "fma_peak": peaks,
        });
        return Ok(emit(&v.to_string())?);
    }
    emit(&format!("cpu features:  {}", features.join(" ")))?;
    emit(&format!("tiers here:    {}", supported.join(" ")))?;
    let how = match choice {
        IsaChoice::Detected(_) => "detected: the widest this CPU supports".to_string(),
        IsaChoice::Forced(_) => format!("forced by {}", isa::ISA_ENV),
    };
    emit(&format!("active tier:   {} ({how})", choice.isa()))?;
    emit(&format!("threads:       {threads}"))?;
    emit("kernels:")?;
    for (op, kernel) in k.kernel_names() {
        emit(&format!("  {op:<24} {kernel}"))?;
    }
    if measure_peak {
        emit("measured FMA peak (GFLOP/s, best of ~1 s of register-only FMA chains):")?;
        for (isa, one, all) in &peaks {
            emit(&format!(
                "  {isa:<8} 1 thread: {one:7.1}   {threads} threads: {all:7.1}"
            ))?;
        }
    }
    Ok(())
}
