//! Data-parallel training: several replicas of the model (MPI ranks, usually one per
//! machine), each training on its part of every batch, kept identical by averaging the
//! gradients across them before each update.
//!
//! - [`Communicator`]: what the replicas need of each other: sums across them (blocking,
//!   and started in the background for the gradient buckets), a broadcast from rank 0
//!   and a gather to it. [`Mpi`] (cargo feature `mpi`) implements it over MPI;
//!   [`LocalGroup`] over threads of one process, which is how the tests check the
//!   machinery without MPI.
//! - [`Shards`]: which images each rank takes at each step. Every step's global batch
//!   (`ranks x batch` positions of the epoch's seeded order) is split into contiguous
//!   parts whose sizes differ by at most one, so an epoch visits every image once,
//!   whatever the number of ranks, and each image gets the augmentation it would get on
//!   one rank (it is seeded by its position in the epoch).
//! - [`DataParallel`]: the per-step part. The backward pass reports each parameter's
//!   gradient as soon as it is final ([`autograd::Tape::backward_with`]); gradients are
//!   copied into buckets of about [`DataParallel::bucket_bytes`], and a bucket's sum
//!   across ranks starts as soon as it is full, while the backward pass goes on (PyTorch
//!   DDP's bucketing). Each rank seeds its backward pass with `n_rank / n_step` (its
//!   share of the step's images), so the *sum* of the ranks' gradients is the gradient
//!   of the mean loss over the whole global batch, equal part sizes or not.
//! - Batch norm: per-rank statistics by default (DDP's behaviour); with
//!   [`DataParallel::sync_bn`] the statistics are those of the global batch, and the
//!   backward's per-channel sums are summed across ranks too (PyTorch's `SyncBatchNorm`).
//!
//! A collective is a promise every rank keeps: all call the same ones in the same order.
//! A rank that fails must therefore take the job down ([`Communicator::abort`]) rather
//! than return, or the others would wait for it forever.

use std::fmt;
use std::ops::Range;
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use tensor::{ReplicaSum, Result, Tensor, TensorError};

/// What data-parallel replicas need of each other. Every method is collective: every
/// rank calls it, in the same order, with equally long buffers.
pub trait Communicator: ReplicaSum + Send + Sync {
    /// This replica's index, `0..size()`; rank 0 writes the files.
    fn rank(&self) -> usize;
    /// The number of replicas.
    fn size(&self) -> usize;
    /// Replaces each element of `values` by its sum over all ranks (the same on every
    /// rank).
    fn sum_f32(&self, values: &mut [f32]) -> Result<()>;
    /// Starts [`Communicator::sum_f32`] of `values` in the background; the handle gives
    /// the sums back.
    fn start_sum_f32(&self, values: Vec<f32>) -> Result<Box<dyn PendingSum + '_>>;
    /// Rank 0's `data` on every rank (any length).
    fn broadcast_bytes(&self, data: &mut Vec<u8>) -> Result<()>;
    /// Every rank's `mine`, in rank order, on rank 0; an empty list elsewhere.
    fn gather_bytes(&self, mine: &[u8]) -> Result<Vec<Vec<u8>>>;
    /// Ends the whole job, every rank, with exit status `code`: what a rank that cannot
    /// go on must do, since the others would wait for it in their next collective.
    fn abort(&self, code: i32) -> !;
}

/// A sum across ranks in progress ([`Communicator::start_sum_f32`]).
pub trait PendingSum {
    /// Whether it has finished (calling it also lets the communication progress).
    fn test(&mut self) -> Result<bool>;
    /// Waits for it; the sums.
    fn wait(self: Box<Self>) -> Result<Vec<f32>>;
}

fn comm_error(op: &'static str, reason: impl Into<String>) -> TensorError {
    TensorError::InvalidArgument {
        op,
        reason: reason.into(),
    }
}

// ---- Which images each rank takes ----

/// The split of an epoch's `images` (positions in its seeded order) into steps of a
/// global batch of `ranks x batch`, and of each step's images into one contiguous part
/// per rank.
///
/// A last global batch too small to give every rank an image (fewer than `ranks`) joins
/// the one before it, so that no rank is ever idle; with one rank that never happens,
/// and the steps are the single-process loader's batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shards {
    /// Images per epoch.
    pub images: usize,
    /// Images per rank per step (the last step may give fewer, or a few more).
    pub batch: usize,
    /// The number of ranks.
    pub ranks: usize,
}

impl Shards {
    /// The split, or an error when there are fewer images than ranks (or no batch).
    pub fn new(images: usize, batch: usize, ranks: usize) -> Result<Self> {
        if batch == 0 || ranks == 0 {
            return Err(comm_error("Shards", "batch and ranks must be at least 1"));
        }
        if images < ranks {
            return Err(comm_error(
                "Shards",
                format!("{images} images cannot be shared by {ranks} ranks: each needs one"),
            ));
        }
        Ok(Shards {
            images,
            batch,
            ranks,
        })
    }

    /// Images per step across all ranks.
    pub fn global_batch(&self) -> usize {
        self.batch * self.ranks
    }

    /// Steps per epoch.
    pub fn steps(&self) -> usize {
        let g = self.global_batch();
        let full = self.images / g;
        let tail = self.images % g;
        if tail == 0 || (tail < self.ranks && full > 0) {
            full.max(1)
        } else {
            full + 1
        }
    }

    /// The positions step `step` covers, across all ranks.
    pub fn step_range(&self, step: usize) -> Range<usize> {
        let g = self.global_batch();
        let start = (step * g).min(self.images);
        let end = if step + 1 >= self.steps() {
            self.images
        } else {
            (start + g).min(self.images)
        };
        start..end
    }

    /// The positions rank `rank` takes at step `step`: a contiguous part of
    /// [`Shards::step_range`], never empty.
    pub fn part(&self, step: usize, rank: usize) -> Range<usize> {
        let r = self.step_range(step);
        let n = r.len();
        let at = |k: usize| r.start + k * n / self.ranks;
        at(rank)..at(rank + 1)
    }

    /// The positions of `0..len` (an evaluation set, in its order) that rank `rank`
    /// evaluates: contiguous, sizes within one of each other.
    pub fn evaluation_part(len: usize, rank: usize, ranks: usize) -> Range<usize> {
        let at = |k: usize| k * len / ranks.max(1);
        at(rank)..at(rank + 1)
    }
}

// ---- The gradient buckets ----

/// What [`DataParallel`] measured over its steps (all in seconds, this rank's clock).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CommStats {
    /// Steps taken.
    pub steps: usize,
    /// Gradient values summed across ranks per step (4 bytes each).
    pub gradient_values: usize,
    /// Time in backward passes (the buckets' sums overlap it).
    pub backward_s: f64,
    /// Time the steps waited for the buckets' sums after their backward pass: the
    /// communication that did not hide behind it.
    pub exposed_s: f64,
    /// Time in forward passes (with synchronised batch norm, its sums are in it).
    pub forward_s: f64,
}

/// Data-parallel settings and state of one rank (see the module docs).
pub struct DataParallel {
    /// The replicas.
    pub comm: Arc<dyn Communicator>,
    /// Synchronised batch norm (PyTorch's `SyncBatchNorm`): batch statistics over the
    /// global batch. Off: each rank normalises with its own part's (DDP's default).
    pub sync_bn: bool,
    /// Gradient bytes per bucket: a bucket's sum starts when its last gradient is
    /// final. Smaller buckets start earlier and hide more; each costs a collective's
    /// latency.
    pub bucket_bytes: usize,
    /// Start each bucket's sum during the backward pass (the default); `false` sums all
    /// of them after it, for measuring what the overlap hides.
    pub overlap: bool,
    /// What the steps measured.
    pub stats: CommStats,
}

impl fmt::Debug for DataParallel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DataParallel")
            .field("rank", &self.comm.rank())
            .field("ranks", &self.comm.size())
            .field("sync_bn", &self.sync_bn)
            .field("bucket_bytes", &self.bucket_bytes)
            .field("overlap", &self.overlap)
            .finish()
    }
}

impl DataParallel {
    /// Per-rank batch norm, 1 MiB buckets (PyTorch DDP's first bucket), overlapped.
    pub fn new(comm: Arc<dyn Communicator>) -> Self {
        DataParallel {
            comm,
            sync_bn: false,
            bucket_bytes: 1 << 20,
            overlap: true,
            stats: CommStats::default(),
        }
    }

    /// This rank.
    pub fn rank(&self) -> usize {
        self.comm.rank()
    }

    /// The number of ranks.
    pub fn ranks(&self) -> usize {
        self.comm.size()
    }
}

/// One step's gradient buckets: parameters (by position in
/// [`crate::ResNet::parameters_mut`]) grouped in the order their gradients become final
/// (the reverse of the forward order), each group's values summed across ranks as one
/// message.
pub(crate) struct Buckets<'c> {
    comm: &'c dyn Communicator,
    /// Per parameter: its bucket and offset there, if it trains.
    slot: Vec<Option<(usize, usize)>>,
    /// Per bucket: its parameters, in bucket order, with their lengths.
    members: Vec<Vec<(usize, usize)>>,
    /// Per bucket: the values gathered so far, and how many parameters are still due.
    fill: Vec<(Vec<f32>, usize)>,
    pending: Vec<Option<Box<dyn PendingSum + 'c>>>,
    overlap: bool,
}

impl<'c> Buckets<'c> {
    /// Buckets for the parameters of lengths `lens` (`None`: frozen, no gradient),
    /// about `bucket_bytes` each.
    pub(crate) fn new(
        comm: &'c dyn Communicator,
        lens: &[Option<usize>],
        bucket_bytes: usize,
        overlap: bool,
    ) -> Self {
        let cap = (bucket_bytes / 4).max(1);
        let mut slot = vec![None; lens.len()];
        let mut members: Vec<Vec<(usize, usize)>> = Vec::new();
        let mut size = cap; // start a new bucket at the first parameter
        for (p, len) in lens.iter().enumerate().rev() {
            let Some(len) = *len else { continue };
            if size >= cap {
                members.push(Vec::new());
                size = 0;
            }
            let b = members.len() - 1;
            slot[p] = Some((b, size));
            members[b].push((p, len));
            size += len;
        }
        let fill = members
            .iter()
            .map(|m| (vec![0.0; m.iter().map(|&(_, l)| l).sum()], m.len()))
            .collect();
        let pending = members.iter().map(|_| None).collect();
        Buckets {
            comm,
            slot,
            members,
            fill,
            pending,
            overlap,
        }
    }

    /// The values summed per step.
    pub(crate) fn values(&self) -> usize {
        self.fill.iter().map(|(v, _)| v.len()).sum()
    }

    /// Parameter `p`'s final gradient: copied into its bucket, which starts its sum if
    /// this was its last; the sums in flight are let progress.
    pub(crate) fn ready(&mut self, p: usize, grad: &Tensor) -> Result<()> {
        let Some(Some((b, offset))) = self.slot.get(p).copied() else {
            return Err(comm_error(
                "data-parallel backward",
                format!("a gradient for parameter {p}, which has no bucket"),
            ));
        };
        let (values, due) = &mut self.fill[b];
        values[offset..offset + grad.len()].copy_from_slice(grad.data());
        *due -= 1;
        if *due == 0 && self.overlap {
            self.start(b)?;
        }
        for p in self.pending.iter_mut().flatten() {
            p.test()?;
        }
        Ok(())
    }

    fn start(&mut self, b: usize) -> Result<()> {
        let values = std::mem::take(&mut self.fill[b].0);
        self.pending[b] = Some(self.comm.start_sum_f32(values)?);
        Ok(())
    }

    /// Waits for every bucket (starting, in order, those not started: without overlap,
    /// or a parameter that received no gradient, counted as zero); each parameter's
    /// summed gradient, in parameter order (`None` for the frozen).
    pub(crate) fn finish(mut self) -> Result<Vec<Option<Tensor>>> {
        for b in 0..self.members.len() {
            if self.pending[b].is_none() {
                self.start(b)?;
            }
        }
        let mut out: Vec<Option<Tensor>> = self.slot.iter().map(|_| None).collect();
        for (b, pending) in self.pending.into_iter().enumerate() {
            let sums = pending.expect("every bucket was started").wait()?;
            let mut offset = 0;
            for &(p, len) in &self.members[b] {
                let data = sums[offset..offset + len].to_vec();
                offset += len;
                out[p] = Some(Tensor::from_vec(&[len], data)?);
            }
        }
        Ok(out)
    }
}

/// Times a part of a step into `slot`.
pub(crate) fn timed<T>(slot: &mut f64, f: impl FnOnce() -> T) -> T {
    let t = Instant::now();
    let out = f();
    *slot += t.elapsed().as_secs_f64();
    out
}

// ---- Replicas as threads of one process ----

/// Ranks as threads of one process: [`LocalGroup::new`] makes one communicator per
/// rank, each to move into its own thread. Every collective meets at a barrier and
/// sums in rank order, so the results are the same on every rank and from run to run.
/// What the tests use to check data-parallel training without MPI; a "background" sum
/// here completes when started.
///
/// Run each rank in a rayon pool of its own (`rayon::ThreadPool::install`): the
/// training step runs on a worker of the current pool, and a rank waiting in a
/// collective holds that worker, so ranks sharing a pool can wait for each other
/// forever.
pub struct LocalGroup {
    rank: usize,
    shared: Arc<Shared>,
}

struct Shared {
    size: usize,
    barrier: Barrier,
    slots: Mutex<Vec<Vec<u8>>>,
}

impl fmt::Debug for LocalGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LocalGroup(rank {} of {})", self.rank, self.shared.size)
    }
}

impl LocalGroup {
    /// `size` communicators, rank `i` at index `i`.
    pub fn new(size: usize) -> Vec<LocalGroup> {
        let shared = Arc::new(Shared {
            size,
            barrier: Barrier::new(size),
            slots: Mutex::new(vec![Vec::new(); size]),
        });
        (0..size)
            .map(|rank| LocalGroup {
                rank,
                shared: Arc::clone(&shared),
            })
            .collect()
    }

    /// Deposits `mine`, lets `read` see every rank's deposit, then waits until every
    /// rank has read before the slots are reused.
    fn exchange<T>(&self, mine: Vec<u8>, read: impl FnOnce(&[Vec<u8>]) -> T) -> Result<T> {
        let lock = || {
            self.shared
                .slots
                .lock()
                .map_err(|_| comm_error("LocalGroup", "another rank panicked"))
        };
        lock()?[self.rank] = mine;
        self.shared.barrier.wait();
        let out = read(&lock()?);
        self.shared.barrier.wait();
        Ok(out)
    }

    fn sum_bytes<const W: usize, T: Copy + std::ops::Add<Output = T>>(
        &self,
        values: &mut [T],
        to: fn(T) -> [u8; W],
        from: fn([u8; W]) -> T,
    ) -> Result<()> {
        let mine: Vec<u8> = values.iter().flat_map(|&v| to(v)).collect();
        let len = values.len();
        self.exchange(mine, |all| {
            for (i, v) in values.iter_mut().enumerate() {
                let at = |r: &Vec<u8>| from(r[i * W..(i + 1) * W].try_into().unwrap());
                let mut acc = at(&all[0]);
                for r in &all[1..] {
                    acc = acc + at(r);
                }
                *v = acc;
            }
            debug_assert!(all.iter().all(|r| r.len() == len * W));
        })
    }
}

impl ReplicaSum for LocalGroup {
    fn sum(&self, values: &mut [f64]) -> Result<()> {
        self.sum_bytes(values, f64::to_le_bytes, f64::from_le_bytes)
    }
}

struct Done(Vec<f32>);

impl PendingSum for Done {
    fn test(&mut self) -> Result<bool> {
        Ok(true)
    }
    fn wait(self: Box<Self>) -> Result<Vec<f32>> {
        Ok(self.0)
    }
}

impl Communicator for LocalGroup {
    fn rank(&self) -> usize {
        self.rank
    }
    fn size(&self) -> usize {
        self.shared.size
    }
    fn sum_f32(&self, values: &mut [f32]) -> Result<()> {
        self.sum_bytes(values, f32::to_le_bytes, f32::from_le_bytes)
    }
    fn start_sum_f32(&self, mut values: Vec<f32>) -> Result<Box<dyn PendingSum + '_>> {
        self.sum_f32(&mut values)?;
        Ok(Box::new(Done(values)))
    }
    fn broadcast_bytes(&self, data: &mut Vec<u8>) -> Result<()> {
        let root = self.exchange(std::mem::take(data), |all| all[0].clone())?;
        *data = root;
        Ok(())
    }
    fn gather_bytes(&self, mine: &[u8]) -> Result<Vec<Vec<u8>>> {
        let rank = self.rank;
        self.exchange(mine.to_vec(), |all| {
            if rank == 0 {
                all.to_vec()
            } else {
                Vec::new()
            }
        })
    }
    fn abort(&self, code: i32) -> ! {
        eprintln!("rank {} aborts the job (status {code})", self.rank);
        std::process::exit(code)
    }
}

/// Waits at most `limit` for `f` on another thread: for tests of collectives, which
/// would otherwise hang on a bug.
#[doc(hidden)]
pub fn with_deadline<T: Send + 'static>(
    limit: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit).ok()
}

#[cfg(feature = "mpi")]
mod mpi_comm;
#[cfg(feature = "mpi")]
#[cfg_attr(docsrs, doc(cfg(feature = "mpi")))]
pub use mpi_comm::Mpi;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_image_once_per_epoch_whatever_the_ranks() {
        for images in [1usize, 2, 3, 7, 10, 64, 65, 127, 128, 129, 1000, 1001] {
            for batch in [1usize, 3, 8, 64] {
                for ranks in 1..=5 {
                    let Ok(s) = Shards::new(images, batch, ranks) else {
                        assert!(images < ranks);
                        continue;
                    };
                    let mut seen = vec![0u32; images];
                    let mut next = 0;
                    for step in 0..s.steps() {
                        let r = s.step_range(step);
                        assert_eq!(r.start, next, "steps are contiguous");
                        next = r.end;
                        let mut at = r.start;
                        let sizes: Vec<usize> = (0..ranks)
                            .map(|rank| {
                                let p = s.part(step, rank);
                                assert_eq!(p.start, at, "parts tile the step");
                                at = p.end;
                                for i in p.clone() {
                                    seen[i] += 1;
                                }
                                p.len()
                            })
                            .collect();
                        assert_eq!(at, r.end);
                        let (lo, hi) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
                        assert!(*lo >= 1, "no idle rank: {images} {batch} {ranks} {sizes:?}");
                        assert!(hi - lo <= 1, "balanced: {sizes:?}");
                    }
                    assert_eq!(next, images);
                    assert!(seen.iter().all(|&c| c == 1), "{images} {batch} {ranks}");
                    if ranks == 1 {
                        assert_eq!(s.steps(), images.div_ceil(batch), "one rank: the loader's");
                    }
                }
            }
        }
        assert!(Shards::new(3, 8, 4).is_err());
    }

    #[test]
    fn evaluation_parts_tile_the_set() {
        for len in [0usize, 1, 5, 100, 101] {
            for ranks in 1..=4 {
                let mut at = 0;
                for r in 0..ranks {
                    let p = Shards::evaluation_part(len, r, ranks);
                    assert_eq!(p.start, at);
                    at = p.end;
                }
                assert_eq!(at, len);
            }
        }
    }

    #[test]
    fn local_group_collectives() {
        let group = LocalGroup::new(3);
        let handles: Vec<_> = group
            .into_iter()
            .map(|c| {
                std::thread::spawn(move || {
                    let r = c.rank() as f32;
                    let mut v = vec![r, 1.0];
                    c.sum_f32(&mut v).unwrap();
                    let mut d = vec![r as f64 * 0.5];
                    c.sum(&mut d).unwrap();
                    let bg = c.start_sum_f32(vec![2.0 * r]).unwrap().wait().unwrap();
                    let mut b = if c.rank() == 0 { vec![7u8, 8] } else { vec![] };
                    c.broadcast_bytes(&mut b).unwrap();
                    let g = c.gather_bytes(&[c.rank() as u8; 2]).unwrap();
                    (v, d, bg, b, g)
                })
            })
            .collect();
        for (rank, h) in handles.into_iter().enumerate() {
            let (v, d, bg, b, g) = h.join().unwrap();
            assert_eq!(v, [3.0, 3.0]);
            assert_eq!(d, [1.5]);
            assert_eq!(bg, [6.0]);
            assert_eq!(b, [7, 8]);
            if rank == 0 {
                assert_eq!(g, vec![vec![0u8, 0], vec![1, 1], vec![2, 2]]);
            } else {
                assert!(g.is_empty());
            }
        }
    }
}
