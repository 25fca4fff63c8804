//! Mini-batches: a seeded shuffle per epoch, each image augmented and normalised in
//! parallel (rayon), and the next batch made on a background thread while the current
//! one trains.
//!
//! Everything random is derived from `(seed, epoch, position)`, never from thread
//! timing, so an epoch's batches are the same on every run, and a resumed run makes
//! exactly the batches the interrupted one would have.

use rayon::prelude::*;
use tensor::rng::Rng;
use tensor::{Result, Tensor};

use crate::augment::{normalize, Augment};
use crate::data::Dataset;

/// One mini-batch: `[B, C, H, W]` normalised images and their labels.
#[derive(Debug, Clone)]
pub struct Batch {
    /// The images, `[B, C, H, W]`, augmented as the loader's `augment` says and
    /// normalised with the data set's mean and standard deviation.
    pub x: Tensor,
    /// The label of each image of `x`, in the same order.
    pub labels: Vec<usize>,
}

/// Splits a data set into batches (see the module docs).
#[derive(Debug, Clone, Copy)]
pub struct Loader<'a> {
    /// The images and labels to batch, with the statistics to normalise them by.
    pub data: &'a Dataset,
    /// Images per batch, at least 1; the last batch of an epoch holds what is left.
    pub batch: usize,
    /// Applied to training batches; evaluation uses [`Augment::NONE`].
    pub augment: Augment,
    /// Shuffle each epoch (training) or keep the data set's order (evaluation).
    pub shuffle: bool,
    /// Seeds the shuffle (mixed with the epoch) and each image's augmentation (mixed
    /// with the epoch and the image's position in it).
    pub seed: u64,
}

/// A well-mixed 64-bit value of the inputs (splitmix64 steps).
fn mix(parts: &[u64]) -> u64 {
    let mut z: u64 = 0x9E37_79B9_7F4A_7C15;
    for &p in parts {
        z = z.wrapping_add(p).wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
    }
    z
}

impl<'a> Loader<'a> {
    /// Batches per epoch (the last may be smaller).
    pub fn num_batches(&self) -> usize {
        self.data.len().div_ceil(self.batch.max(1))
    }

    /// The order of the data set's images in `epoch`.
    pub fn order(&self, epoch: usize) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.data.len()).collect();
        if self.shuffle {
            Rng::seed_from_u64(mix(&[self.seed, epoch as u64])).shuffle(&mut order);
        }
        order
    }

    /// Batch `b` of an epoch whose order is `order`.
    pub fn make_batch(&self, epoch: usize, order: &[usize], b: usize) -> Result<Batch> {
        let start = (b * self.batch).min(order.len());
        self.make_range(epoch, order, start..((b + 1) * self.batch).min(order.len()))
    }

    /// The batch of positions `range` of an epoch whose order is `order`: each image
    /// augmented by the seed of its position, so a data-parallel rank's part of a step
    /// ([`crate::distributed::Shards`]) holds the images one process would make there.
    pub fn make_range(
        &self,
        epoch: usize,
        order: &[usize],
        range: std::ops::Range<usize>,
    ) -> Result<Batch> {
        let d = self.data;
        let first = range.start;
        let picks = &order[range];
        let n = d.image_len();
        let mut x = vec![0.0f32; picks.len() * n];
        x.par_chunks_mut(n.max(1))
            .zip(picks.par_iter().enumerate())
            .for_each(|(dst, (j, &i))| {
                let mut img = if self.augment == Augment::NONE {
                    d.image(i).to_vec()
                } else {
                    let position = (first + j) as u64;
                    let mut rng = Rng::seed_from_u64(mix(&[self.seed, epoch as u64, position, 1]));
                    self.augment.apply(d.image(i), d.shape, &mut rng)
                };
                normalize(&mut img, d.shape, d.mean, d.std);
                dst.copy_from_slice(&img);
            });
        let [c, h, w] = d.shape;
        Ok(Batch {
            x: Tensor::from_vec(&[picks.len(), c, h, w], x)?,
            labels: picks.iter().map(|&i| d.labels[i]).collect(),
        })
    }

    /// Runs `step` on batches `start..` of `epoch`, in order, making batch `b + 1` on a
    /// background thread while `step` works on batch `b`. Stops at the first error.
    pub fn for_each_batch<E: From<tensor::TensorError> + Send>(
        &self,
        epoch: usize,
        start: usize,
        step: impl FnMut(usize, Batch) -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E> {
        let total = self.num_batches();
        let batch = self.batch;
        self.for_each_range(epoch, start, total, |b| b * batch..((b + 1) * batch), step)
    }

    /// [`Loader::for_each_batch`] for data-parallel rank `rank`: its part of each step
    /// of `shards` (made from the whole data set's order, so every rank agrees on it),
    /// the next one made in the background.
    pub fn for_each_part<E: From<tensor::TensorError> + Send>(
        &self,
        epoch: usize,
        start: usize,
        shards: crate::distributed::Shards,
        rank: usize,
        step: impl FnMut(usize, Batch) -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E> {
        let total = shards.steps();
        self.for_each_range(epoch, start, total, |b| shards.part(b, rank), step)
    }

    pub(crate) fn for_each_range<E: From<tensor::TensorError> + Send>(
        &self,
        epoch: usize,
        start: usize,
        total: usize,
        range: impl Fn(usize) -> std::ops::Range<usize> + Send + Sync,
        mut step: impl FnMut(usize, Batch) -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E> {
        let order = self.order(epoch);
        std::thread::scope(|s| {
            let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Batch>>(1);
            let (order, range) = (&order, &range);
            let producer = s.spawn(move || {
                for b in start..total {
                    let r = range(b);
                    let r = r.start.min(order.len())..r.end.min(order.len());
                    if tx.send(self.make_range(epoch, order, r)).is_err() {
                        break; // the consumer stopped
                    }
                }
            });
            let mut outcome = Ok(());
            for (b, batch) in (start..total).zip(rx.iter()) {
                if let Err(e) = batch.map_err(E::from).and_then(|batch| step(b, batch)) {
                    outcome = Err(e);
                    break;
                }
            }
            drop(rx);
            let _ = producer.join();
            outcome
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data() -> Dataset {
        Dataset {
            images: (0..10 * 12).map(|v| v as f32 / 120.0).collect(),
            labels: (0..10).collect(),
            shape: [3, 2, 2],
            classes: (0..10).map(|c| c.to_string()).collect(),
            mean: [0.0; 3],
            std: [1.0; 3],
        }
    }

    #[test]
    fn an_epoch_visits_every_image_once_in_a_seeded_order() {
        let d = data();
        let l = Loader {
            data: &d,
            batch: 4,
            augment: Augment::NONE,
            shuffle: true,
            seed: 3,
        };
        assert_eq!(l.num_batches(), 3);
        let mut seen = Vec::new();
        l.for_each_batch::<tensor::TensorError>(0, 0, |_, b| {
            seen.extend(b.labels);
            Ok(())
        })
        .unwrap();
        let mut sorted = seen.clone();
        sorted.sort();
        assert_eq!(sorted, (0..10).collect::<Vec<_>>());
        assert_ne!(seen, (0..10).collect::<Vec<_>>(), "shuffled");
        assert_eq!(l.order(0), l.order(0));
        assert_ne!(l.order(0), l.order(1));
    }

    #[test]
    fn batches_are_the_same_whatever_the_start() {
        let d = data();
        let l = Loader {
            data: &d,
            batch: 3,
            augment: Augment::CIFAR,
            shuffle: true,
            seed: 5,
        };
        let order = l.order(2);
        let direct = l.make_batch(2, &order, 2).unwrap();
        let mut resumed = None;
        l.for_each_batch::<tensor::TensorError>(2, 2, |b, batch| {
            if b == 2 {
                resumed = Some(batch);
            }
            Ok(())
        })
        .unwrap();
        let resumed = resumed.unwrap();
        assert_eq!(resumed.x, direct.x);
        assert_eq!(resumed.labels, direct.labels);
        // Augmentation never touches labels: each is the label of the image picked.
        let picked: Vec<usize> = order[6..9].iter().map(|&i| d.labels[i]).collect();
        assert_eq!(direct.labels, picked);
    }
}
