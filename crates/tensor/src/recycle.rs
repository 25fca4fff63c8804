//! Recycled buffers for large tensors.
//!
//! A training step allocates the same activation-sized tensors, step after step: the
//! forward pass's outputs, then the backward pass's gradients. Memory fresh from the
//! operating system costs a page fault and a page of zeroing on first touch (in a
//! ResNet-20 training step at batch 128 that was 7.5% of the time, spread over whichever
//! kernel first wrote each output). So a dropped tensor of at least [`MIN_FLOATS`]
//! elements gives its buffer to this recycler, and the next tensor of about that size takes
//! it instead of asking the allocator.
//!
//! The recycler is bounded in bytes and in time: it holds at most [`limit`] bytes (default
//! [`DEFAULT_LIMIT`]), a buffer that would pass the limit goes back to the allocator as
//! usual, and a buffer nobody took within [`MAX_AGE`] recycler operations (takes and gives
//! of large buffers) is freed too. Nor does the recycler take a buffer that no recent
//! request could use: a buffer is kept only if one of the last [`RECENT`] requests was
//! for a length it serves. So sizes that do not recur (a data loader's batch made with
//! `Tensor::from_vec` each step, decoded photos of every size) pass through instead of
//! piling up. A program
//! that is done with large tensors (training finished, inference from here on) can hand
//! the memory back with [`release`]; `set_limit(0)` turns recycling off. Code that
//! drops large tensors whose sizes will not be asked for again (converting a model's
//! weights for inference) runs under [`bypass`], so that their memory goes straight
//! back to the allocator and the process's peak stays where it was.
//!
//! A recycled buffer holds whatever its last tensor held. The constructors that take
//! one either overwrite it ([`Tensor::full`](crate::Tensor::full), the kernels'
//! outputs) or are crate-internal and documented as unspecified (an output every
//! element of which the kernel then writes), so no stale value is ever observable.

use std::sync::Mutex;

/// Buffers smaller than this many floats (64 KiB) are left to the allocator, which
/// recycles small blocks well on its own.
pub const MIN_FLOATS: usize = 16 * 1024;

/// The default bound on the bytes the recycler holds: 512 MiB, twice what a ResNet-20
/// training step at batch 128 keeps for its backward pass.
pub const DEFAULT_LIMIT: usize = 512 << 20;

/// A kept buffer not taken within this many recycler operations is freed. A training step
/// of ResNet-20 makes a few hundred (every activation and gradient is taken once and
/// given once), ResNet-152's a few thousand; a buffer freed by one step is taken again
/// by the next, well within this.
pub const MAX_AGE: u64 = 4096;

/// How many recent requests a buffer is matched against before the recycler keeps it.
pub const RECENT: usize = 64;

struct Recycler {
    /// Each buffer with the clock reading when it was given.
    buffers: Vec<(Vec<f32>, u64)>,
    /// The lengths of the last [`RECENT`] requests (0: none yet), a ring whose next
    /// slot is `next`.
    recent: [usize; RECENT],
    next: usize,
    bytes: usize,
    limit: usize,
    /// Recycler operations so far.
    clock: u64,
}

impl Recycler {
    /// Advances the clock and frees the buffers that have waited longer than
    /// [`MAX_AGE`].
    fn tick(&mut self) {
        self.clock += 1;
        let now = self.clock;
        let mut i = 0;
        while i < self.buffers.len() {
            if now - self.buffers[i].1 > MAX_AGE {
                let (v, _) = self.buffers.swap_remove(i);
                self.bytes -= bytes_of(&v);
            } else {
                i += 1;
            }
        }
    }
}

static RECYCLER: Mutex<Recycler> = Mutex::new(Recycler {
    buffers: Vec::new(),
    recent: [0; RECENT],
    next: 0,
    bytes: 0,
    limit: DEFAULT_LIMIT,
    clock: 0,
});

fn lock() -> std::sync::MutexGuard<'static, Recycler> {
    // A panic while holding the lock cannot leave the recycler inconsistent (every update
    // is a push or a swap_remove plus counters), so a poisoned lock is still usable.
    RECYCLER.lock().unwrap_or_else(|p| p.into_inner())
}

fn bytes_of(v: &Vec<f32>) -> usize {
    v.capacity() * std::mem::size_of::<f32>()
}

/// A buffer of `len` floats with unspecified (but initialised) contents, if the recycler
/// holds one whose capacity is between `len` and `2 * len` (the smallest such).
pub(crate) fn take(len: usize) -> Option<Vec<f32>> {
    if len < MIN_FLOATS || bypassed() {
        return None;
    }
    let mut bin = lock();
    bin.tick();
    let next = bin.next;
    bin.recent[next] = len;
    bin.next = (next + 1) % RECENT;
    let best = bin
        .buffers
        .iter()
        .enumerate()
        .filter(|(_, (b, _))| (len..=2 * len).contains(&b.capacity()))
        .min_by_key(|(_, (b, _))| b.capacity())
        .map(|(i, _)| i)?;
    let (mut v, _) = bin.buffers.swap_remove(best);
    bin.bytes -= bytes_of(&v);
    drop(bin);
    // Within capacity: `truncate` is free, `resize` writes only the part past the old
    // length (a buffer shortened by an earlier `take`).
    v.resize(len, 0.0);
    Some(v)
}

thread_local! {
    /// Set while this thread runs [`bypass`].
    static BYPASS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` with the recycler bypassed on this thread: tensors dropped meanwhile free
/// their memory, and new ones come from the allocator.
pub fn bypass<R>(f: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            BYPASS.with(|b| b.set(self.0));
        }
    }
    let _restore = Restore(BYPASS.with(|b| b.replace(true)));
    f()
}

fn bypassed() -> bool {
    BYPASS.with(|b| b.get())
}

/// Takes `v` into the recycler if it is large enough, a recent request could use it, and it
/// fits under the limit; otherwise frees it.
pub(crate) fn give(v: Vec<f32>) {
    if v.capacity() < MIN_FLOATS || bypassed() {
        return;
    }
    let mut bin = lock();
    bin.tick();
    let cap = v.capacity();
    let wanted = bin
        .recent
        .iter()
        .any(|&l| l > 0 && (l..=2 * l).contains(&cap));
    if wanted && bin.bytes + bytes_of(&v) <= bin.limit {
        bin.bytes += bytes_of(&v);
        let now = bin.clock;
        bin.buffers.push((v, now));
    }
}

/// The bound on the bytes the recycler holds.
pub fn limit() -> usize {
    lock().limit
}

/// Sets the bound on the bytes the recycler holds, freeing buffers past it (largest
/// first). `0` turns recycling off.
pub fn set_limit(bytes: usize) {
    let mut bin = lock();
    bin.limit = bytes;
    bin.buffers.sort_by_key(|(b, _)| b.capacity());
    while bin.bytes > bytes {
        let Some((v, _)) = bin.buffers.pop() else {
            break;
        };
        bin.bytes -= bytes_of(&v);
    }
}

/// The bytes the recycler holds now.
pub fn held_bytes() -> usize {
    lock().bytes
}

/// Frees every buffer the recycler holds (the limit stays).
pub fn release() {
    let mut bin = lock();
    bin.buffers = Vec::new();
    bin.bytes = 0;
}
