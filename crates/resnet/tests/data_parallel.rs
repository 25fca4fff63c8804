//! Data-parallel training without MPI: ranks as threads ([`LocalGroup`]). The same
//! machinery runs over MPI (`--features mpi`, tests/mpi.rs under `mpirun`).

use std::sync::Arc;

use resnet::data::digits;
use resnet::distributed::{Communicator, DataParallel, LocalGroup};
use resnet::{parallel_gradients, Arch, Freeze, ResNet, StepGradients, TrainConfig, Trainer};
use tensor::{Kernels, Tensor};

/// `n` digits images from `start`, as a `[n, 3, 32, 32]` batch and labels.
fn images(start: usize, n: usize) -> (Tensor, Vec<usize>) {
    let data = digits().unwrap().train;
    let len = data.image_len();
    let x: Vec<f32> = (start..start + n)
        .flat_map(|i| data.image(i).to_vec())
        .collect();
    let [c, h, w] = data.shape;
    let labels = (start..start + n).map(|i| data.labels[i]).collect();
    assert_eq!(x.len(), n * len);
    (Tensor::from_vec(&[n, c, h, w], x).unwrap(), labels)
}

/// Runs `f` on a thread of its own, in a rayon pool of its own: a rank waiting in a
/// collective holds its pool's thread, so ranks sharing one pool could wait for each
/// other forever.
fn rank_thread<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    std::thread::spawn(move || {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        pool.install(f)
    })
}

/// One step's gradients on `ranks` thread ranks, rank `r` taking images `start + r b ..`
/// of equal parts `b`; every rank's result.
fn gradients_on(ranks: usize, b: usize, sync_bn: bool) -> Vec<StepGradients> {
    let k = Kernels::active().unwrap();
    let threads: Vec<_> = LocalGroup::new(ranks)
        .into_iter()
        .map(|comm| {
            rank_thread(move || {
                let rank = comm.rank();
                let model = ResNet::new(Arch::Cifar { depth: 20 }, 10, 3).unwrap();
                let mut dp = DataParallel::new(Arc::new(comm));
                dp.sync_bn = sync_bn;
                dp.bucket_bytes = 64 << 10; // several buckets
                let (x, t) = images(100 + rank * b, b);
                let share = 1.0 / ranks as f32;
                parallel_gradients(&model, k, x, &t, Freeze::None, 0.0, share, &mut dp).unwrap()
            })
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).collect()
}

/// `max |a - b| / max |b|`.
fn rel(a: &Tensor, b: &Tensor) -> f64 {
    let scale = b.data().iter().fold(0.0f64, |m, v| m.max(v.abs() as f64));
    let diff = a
        .data()
        .iter()
        .zip(b.data())
        .fold(0.0f64, |m, (x, y)| m.max((x - y).abs() as f64));
    diff / scale.max(1e-30)
}

fn worst(a: &StepGradients, b: &StepGradients) -> f64 {
    a.grads
        .iter()
        .zip(&b.grads)
        .map(|(x, y)| rel(x.as_ref().unwrap(), y.as_ref().unwrap()))
        .fold(0.0, f64::max)
}

#[test]
fn sync_bn_on_two_ranks_equals_one_rank_with_the_whole_batch() {
    let two = gradients_on(2, 6, true);
    let one = gradients_on(1, 12, true);
    let (a, b) = (&two[0], &one[0]);
    assert_eq!(
        worst(&two[0], &two[1]),
        0.0,
        "every rank holds the same sums"
    );
    let err = worst(a, b);
    println!("sync BN, 2 ranks x 6 vs 1 x 12: worst gradient error {err:.2e}");
    assert!(err < 1e-5, "{err}");
    // The statistics (what updates the running ones) are the whole batch's.
    for (s, t) in a.batch_stats.iter().zip(&b.batch_stats) {
        assert_eq!(s.stats.count, t.stats.count);
        for (x, y) in s.stats.mean.iter().zip(&t.stats.mean) {
            assert!((x - y).abs() <= 1e-5 * (1.0 + y.abs()), "{x} {y}");
        }
        for (x, y) in s.stats.var.iter().zip(&t.stats.var) {
            assert!((x - y).abs() <= 1e-5 * y.abs().max(1e-3), "{x} {y}");
        }
    }
    // Without synchronisation each rank normalises by its own half: another gradient.
    let local = gradients_on(2, 6, false);
    assert!(
        worst(&local[0], b) > 1e-3,
        "per-rank BN differs from the whole batch's"
    );
}

#[test]
fn per_rank_bn_averages_each_ranks_own_gradient() {
    // DDP: the mean of what each rank alone would compute on its part.
    let two = gradients_on(2, 5, false);
    let k = Kernels::active().unwrap();
    let alone: Vec<StepGradients> = (0..2)
        .map(|rank| {
            let comm = LocalGroup::new(1).pop().unwrap();
            let mut dp = DataParallel::new(Arc::new(comm));
            let model = ResNet::new(Arch::Cifar { depth: 20 }, 10, 3).unwrap();
            let (x, t) = images(100 + rank * 5, 5);
            parallel_gradients(&model, k, x, &t, Freeze::None, 0.0, 1.0, &mut dp).unwrap()
        })
        .collect();
    let mut err = 0.0f64;
    for (p, g) in two[0].grads.iter().enumerate() {
        let mean: Vec<f32> = alone[0].grads[p]
            .as_ref()
            .unwrap()
            .data()
            .iter()
            .zip(alone[1].grads[p].as_ref().unwrap().data())
            .map(|(a, b)| 0.5 * (a + b))
            .collect();
        let g = g.as_ref().unwrap();
        err = err.max(rel(g, &Tensor::from_vec(g.shape(), mean).unwrap()));
    }
    println!("per-rank BN, 2 ranks vs the mean of each alone: worst error {err:.2e}");
    assert!(err < 1e-6, "{err}");
}

#[test]
fn two_rank_training_keeps_the_replicas_identical_and_only_rank_0_writes() {
    let data = Arc::new(digits().unwrap());
    let k = Kernels::active().unwrap();
    let config = TrainConfig {
        epochs: 3,
        batch: 32,
        warmup_epochs: 0,
        ..TrainConfig::digits()
    };
    let dir = std::env::temp_dir().join(format!("resnet-dp-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let threads: Vec<_> = LocalGroup::new(2)
        .into_iter()
        .map(|comm| {
            let (data, config) = (Arc::clone(&data), config.clone());
            let out = dir.join(format!("rank{}", comm.rank()));
            rank_thread(move || {
                let mut t = Trainer::new(config, &data, k, &out).unwrap();
                t.data_parallel(DataParallel::new(Arc::new(comm))).unwrap();
                let h = t.run(&mut |_| {}).unwrap().to_vec();
                let weights: Vec<f32> = t
                    .model
                    .named_tensors()
                    .iter()
                    .flat_map(|n| n.tensor.data().to_vec())
                    .collect();
                (h, weights, t.parallel().unwrap().stats)
            })
        })
        .collect();
    let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let (h0, w0, s0) = &results[0];
    let (h1, w1, _) = &results[1];
    assert!(w0 == w1, "the replicas are bit-identical after an epoch");
    let timeless = |h: &[resnet::EpochRecord]| -> Vec<resnet::EpochRecord> {
        h.iter()
            .map(|r| resnet::EpochRecord {
                seconds: 0.0,
                ..r.clone()
            })
            .collect()
    };
    assert_eq!(
        timeless(h0),
        timeless(h1),
        "every rank has the same figures"
    );
    let last = h0.last().unwrap();
    println!(
        "2 ranks, 3 epochs: test accuracy {:.1}%",
        100.0 * last.test_acc
    );
    // Chance is 10%; one process reaches 60% in as many epochs (tests/trainer.rs).
    assert!(last.test_acc > 0.5, "it learns: {}", last.test_acc);
    // A global batch of 64: the epochs' steps.
    let n = data.train.len();
    assert_eq!(s0.steps, 3 * (n / 64 + usize::from(n % 64 >= 2)));
    assert!(dir.join("rank0/checkpoint.safetensors").is_file());
    assert!(
        !dir.join("rank1/checkpoint.safetensors").exists(),
        "rank 1 writes nothing"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Rank 0's weights after training up to `upto` of the 2 epochs of the run in `out` on
/// `ranks` thread ranks (resuming its checkpoint if `resume`).
fn train_ranks(ranks: usize, upto: usize, out: &std::path::Path, resume: bool) -> Vec<f32> {
    let k = Kernels::active().unwrap();
    let threads: Vec<_> = LocalGroup::new(ranks)
        .into_iter()
        .map(|comm| {
            let out = out.to_path_buf();
            rank_thread(move || {
                let data = digits().unwrap();
                let config = TrainConfig {
                    epochs: 2,
                    batch: 48,
                    warmup_epochs: 0,
                    ..TrainConfig::digits()
                };
                let mut t = if resume {
                    let ckpt = out.join("checkpoint.safetensors");
                    Trainer::resume(config, &data, k, &out, ckpt).unwrap()
                } else {
                    Trainer::new(config, &data, k, &out).unwrap()
                };
                t.data_parallel(DataParallel::new(Arc::new(comm))).unwrap();
                t.run_epochs(upto - t.epochs_done, &mut |_| {}).unwrap();
                t.model
                    .named_tensors()
                    .iter()
                    .flat_map(|n| n.tensor.data().to_vec())
                    .collect::<Vec<f32>>()
            })
        })
        .collect();
    let mut weights: Vec<Vec<f32>> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    weights.swap_remove(0)
}

#[test]
fn resuming_on_as_many_ranks_is_exact_and_on_another_number_goes_on() {
    let base = std::env::temp_dir().join(format!("resnet-dp-resume-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let straight = train_ranks(2, 2, &base.join("straight"), false);
    // Rank 0 alone writes, and every rank reads its checkpoint: one shared folder.
    let split = base.join("split");
    train_ranks(2, 1, &split, false);
    let resumed = train_ranks(2, 2, &split, true);
    assert!(
        resumed == straight,
        "2 ranks, resumed after epoch 1 on 2 ranks: bit-identical"
    );
    // On 3 ranks the global batch changes: the run goes on from the same state, but is
    // another run.
    let other = base.join("other");
    train_ranks(2, 1, &other, false);
    let three = train_ranks(3, 2, &other, true);
    assert!(three != straight);
    assert!(three.iter().all(|v| v.is_finite()));
    let _ = std::fs::remove_dir_all(&base);
}
