//! Recycled buffers for large tensors.
//!
//! A training step allocates the same activation-sized tensors, step after step: the
//! forward pass's outputs, then the backward pass's gradients. Memory fresh from the
//! operating system costs a page fault and a page of zeroing on first touch (in a
//! ResNet-20 training step at batch 128 that was 7.5% of the time, spread over whichever
//! kernel first wrote each output). So a dropped tensor of at least [`MIN_FLOATS`]
//! elements gives its buffer to this pool, and the next tensor of about that size takes
//! it instead of asking the allocator.
//!
//! The pool is bounded: it holds at most [`limit`] bytes (default [`DEFAULT_LIMIT`]);
//! a buffer that would pass the limit goes back to the allocator as usual. A program
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

/// The default bound on the bytes the pool holds: 512 MiB, twice what a ResNet-20
/// training step at batch 128 keeps for its backward pass.
pub const DEFAULT_LIMIT: usize = 512 << 20;

struct Pool {
    buffers: Vec<Vec<f32>>,
    bytes: usize,
    limit: usize,
}

static POOL: Mutex<Pool> = Mutex::new(Pool {
    buffers: Vec::new(),
    bytes: 0,
    limit: DEFAULT_LIMIT,
});

fn lock() -> std::sync::MutexGuard<'static, Pool> {
    // A panic while holding the lock cannot leave the pool inconsistent (every update
    // is a push or a swap_remove plus a counter), so a poisoned lock is still usable.
    POOL.lock().unwrap_or_else(|p| p.into_inner())
}

fn bytes_of(v: &Vec<f32>) -> usize {
    v.capacity() * std::mem::size_of::<f32>()
}

/// A buffer of `len` floats with unspecified (but initialised) contents, if the pool
/// holds one whose capacity is between `len` and `2 * len` (the smallest such).
pub(crate) fn take(len: usize) -> Option<Vec<f32>> {
    if len < MIN_FLOATS || bypassed() {
        return None;
    }
    let mut pool = lock();
    let best = pool
        .buffers
        .iter()
        .enumerate()
        .filter(|(_, b)| (len..=2 * len).contains(&b.capacity()))
        .min_by_key(|(_, b)| b.capacity())
        .map(|(i, _)| i)?;
    let mut v = pool.buffers.swap_remove(best);
    pool.bytes -= bytes_of(&v);
    drop(pool);
    // Within capacity: `truncate` is free, `resize` writes only the part past the old
    // length (a buffer shortened by an earlier `take`).
    v.resize(len, 0.0);
    Some(v)
}

thread_local! {
    /// Set while this thread runs [`bypass`].
    static BYPASS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` with the pool bypassed on this thread: tensors dropped meanwhile free
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

/// Takes `v` into the pool if it is large enough and fits under the limit; otherwise
/// frees it.
pub(crate) fn give(v: Vec<f32>) {
    if v.capacity() < MIN_FLOATS || bypassed() {
        return;
    }
    let mut pool = lock();
    if pool.bytes + bytes_of(&v) <= pool.limit {
        pool.bytes += bytes_of(&v);
        pool.buffers.push(v);
    }
}

/// The bound on the bytes the pool holds.
pub fn limit() -> usize {
    lock().limit
}

/// Sets the bound on the bytes the pool holds, freeing buffers past it (largest
/// first). `0` turns recycling off.
pub fn set_limit(bytes: usize) {
    let mut pool = lock();
    pool.limit = bytes;
    pool.buffers.sort_by_key(|b| b.capacity());
    while pool.bytes > bytes {
        let Some(v) = pool.buffers.pop() else { break };
        pool.bytes -= bytes_of(&v);
    }
}

/// The bytes the pool holds now.
pub fn held_bytes() -> usize {
    lock().bytes
}

/// Frees every buffer the pool holds (the limit stays).
pub fn release() {
    let mut pool = lock();
    pool.buffers = Vec::new();
    pool.bytes = 0;
}
