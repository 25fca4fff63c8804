//! The [`Workspace`]: the memory the kernels reuse between calls, held in one value that
//! an embedder can see, bound and release.
//!
//! Two kinds of memory recur, call after call:
//!
//! - **Scratch**: a kernel's private copies (the zero-padded input image of the direct
//!   convolution, the phase planes im2col reads, the GEMM's packed panels, ...). Each
//!   worker thread needs its own, sized for the largest layer; allocating them per call
//!   cost a page fault per fresh page (ResNet-50's stem alone wrote 3.3 MB of fresh
//!   memory per image).
//! - **Activations**: a training step allocates the same activation-sized tensors step
//!   after step, the forward pass's outputs and then the backward pass's gradients. In a
//!   ResNet-20 training step at batch 128, first-touch page faults of fresh memory were
//!   7.5% of the time. So a large tensor (at least [`MIN_FLOATS`] elements) returns its
//!   buffer to the workspace it was made in when dropped, and the next tensor of about
//!   that size takes it instead of asking the allocator.
//!
//! A workspace is a cheap-to-clone handle (clones share the memory). Code runs *in* a
//! workspace with [`Workspace::run`]: the tensors it makes on that thread come from it and
//! return to it (if it still exists: a tensor does not keep its workspace alive), and the
//! kernels it calls take their scratch from it, in every worker thread they use. Code that
//! names none runs in [`Workspace::global`]. The models own one each
//! (`InferenceModel::workspace`, the trainer's), so two models in one process do not
//! share, and dropping a model frees its memory, even while tensors it returned live on.
//!
//! The workspace is bounded: it holds at most [`Workspace::limit`] bytes between calls,
//! scratch and recycled activations together (default [`DEFAULT_LIMIT`]). A buffer that
//! would pass the limit goes back to the allocator. Recycled activations are further kept
//! only while they are useful: one that nobody took within [`MAX_AGE`] workspace
//! operations is freed, and one is kept only if one of the last [`RECENT`] requests was for
//! a length it serves, so sizes that do not recur (decoded photos of every size, a data
//! loader's batches made with `Tensor::from_vec`) pass through. [`Workspace::release`]
//! frees everything held; `set_limit(0)` turns reuse off. Code that drops large tensors
//! whose sizes will not be asked for again (converting a model's weights for inference)
//! runs under [`bypass`], so that their memory goes straight back to the allocator.
//!
//! A reused buffer holds whatever its last user wrote. The constructors that take one
//! either overwrite it ([`Tensor::full`](crate::Tensor::full), the kernels' outputs) or
//! are crate-internal and documented as unspecified (an output every element of which the
//! kernel then writes), so no stale value is ever observable.

use std::cell::{Cell, RefCell};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};

/// Buffers smaller than this many floats (64 KiB) are left to the allocator, which
/// recycles small blocks well on its own.
pub const MIN_FLOATS: usize = 16 * 1024;

/// The default bound on the bytes a workspace holds: 512 MiB, twice what a ResNet-20
/// training step at batch 128 keeps for its backward pass. A loop of larger steps wants
/// a larger one (the trainer's is `resnet::TRAINING_WORKSPACE_LIMIT`, 4 GiB).
pub const DEFAULT_LIMIT: usize = 512 << 20;

/// A recycled activation buffer not taken within this many workspace operations (takes
/// and gives of large buffers) is freed. A training step of ResNet-20 makes a few hundred
/// (every activation and gradient is taken once and given once), ResNet-152's a few
/// thousand; a buffer freed by one step is taken again by the next, well within this.
pub const MAX_AGE: u64 = 4096;

/// How many recent requests a buffer is matched against before the workspace keeps it.
pub const RECENT: usize = 64;

/// The scratch buffers, one of each per worker thread. Every kernel names the one it
/// uses, so nested uses on one thread (a convolution's padded image, then the GEMM's
/// packed B inside it) never meet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Scratch {
    /// The direct convolution's zero-padded (or phase-split) input image.
    ConvPadded,
    /// The phase planes im2col reads, or a strided 1x1 convolution's subsampled image.
    ConvPlanes,
    /// An input image normalised (batch-norm + ReLU applied) before a convolution.
    ConvNormed,
    /// The direct kernel's wide-row output (planar and strided-transposed forms).
    DirectWide,
    /// The blocked layout's padded input.
    BlockedPadded,
    /// Winograd's transformed input tiles and their products (`conv/winograd.rs`).
    Winograd,
    /// A slice of Winograd's weights transformed on the fly (`conv/winograd.rs`).
    WinogradKernel,
    /// The GEMM's packed A (`Kernels::gemm` packs it per call).
    PackA,
    /// The GEMM's packed blocks of B.
    PackB,
    /// One packed panel of B, packed by the task that uses it (`gemm/driver.rs`).
    PackBPanel,
    /// The weight gradient's phase planes, `dY` rows, normalised images and `dW^T`
    /// (`conv/weight_grad.rs`'s `WeightGradScratch`).
    WeightGradPlanes,
    WeightGradDy,
    WeightGradNormed,
    WeightGradTransposed,
}

const SCRATCH_KINDS: usize = 14;

impl Scratch {
    fn index(self) -> usize {
        self as usize
    }
}

/// One thread's scratch buffers.
#[derive(Default)]
struct Slot([Mutex<Vec<f32>>; SCRATCH_KINDS]);

/// The books of a workspace: its recycled activation buffers and what it holds in all.
struct Books {
    /// Each recycled buffer with the clock reading when it was given.
    buffers: Vec<(Vec<f32>, u64)>,
    /// The lengths of the last [`RECENT`] requests (0: none yet), a ring whose next slot
    /// is `next`.
    recent: [usize; RECENT],
    next: usize,
    /// Bytes in `buffers`.
    recycled: usize,
    /// Bytes of the scratch buffers parked in the slots.
    scratch: usize,
    limit: usize,
    /// Workspace operations so far.
    clock: u64,
}

impl Books {
    /// Advances the clock and frees the recycled buffers that have waited longer than
    /// [`MAX_AGE`].
    fn tick(&mut self) {
        self.clock += 1;
        let now = self.clock;
        let mut i = 0;
        while i < self.buffers.len() {
            if now - self.buffers[i].1 > MAX_AGE {
                let (v, _) = self.buffers.swap_remove(i);
                self.recycled -= bytes_of(&v);
            } else {
                i += 1;
            }
        }
    }

    /// Frees recycled buffers, largest first, until `extra` more bytes fit under the limit
    /// (or none are left). Returns whether they fit.
    fn make_room(&mut self, extra: usize) -> bool {
        if self.recycled + self.scratch + extra > self.limit {
            self.buffers.sort_by_key(|(b, _)| b.capacity());
            while self.recycled + self.scratch + extra > self.limit {
                let Some((v, _)) = self.buffers.pop() else {
                    break;
                };
                self.recycled -= bytes_of(&v);
            }
        }
        self.recycled + self.scratch + extra <= self.limit
    }
}

struct Inner {
    /// Slot 0 serves threads outside rayon's pool; slot `1 + i` rayon's worker `i`
    /// (modulo the slot count: a pool larger than the one the workspace was made under
    /// shares slots, which costs an allocation when two threads meet, never a wrong
    /// result).
    slots: Box<[Slot]>,
    books: Mutex<Books>,
}

/// Memory the kernels reuse between calls: per-thread scratch and recycled activation
/// buffers, bounded by a limit. See the [module documentation](self).
///
/// ```
/// use tensor::{Tensor, Workspace};
///
/// let ws = Workspace::with_limit(64 << 20);
/// let n = ws.run(|| {
///     let t = Tensor::zeros(&[256, 1024])?; // 1 MiB: returns to `ws` when dropped
///     Ok::<_, tensor::TensorError>(t.len())
/// })?;
/// assert_eq!(n, 256 * 1024);
/// assert_eq!(ws.held_bytes(), 1 << 20);
/// ws.release();
/// assert_eq!(ws.held_bytes(), 0);
/// # Ok::<(), tensor::TensorError>(())
/// ```
#[derive(Clone)]
pub struct Workspace {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Workspace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let books = self.books();
        f.debug_struct("Workspace")
            .field("scratch_bytes", &books.scratch)
            .field("recycled_bytes", &books.recycled)
            .field("limit", &books.limit)
            .finish()
    }
}

impl Default for Workspace {
    fn default() -> Self {
        Self::new()
    }
}

thread_local! {
    /// The workspace this thread runs in ([`Workspace::run`]), if any.
    static CURRENT: RefCell<Option<Workspace>> = const { RefCell::new(None) };
    /// Set while this thread runs [`bypass`].
    static BYPASS: Cell<bool> = const { Cell::new(false) };
}

fn bytes_of(v: &Vec<f32>) -> usize {
    v.capacity() * std::mem::size_of::<f32>()
}

impl Workspace {
    /// An empty workspace with the default limit ([`DEFAULT_LIMIT`]).
    pub fn new() -> Self {
        Self::with_limit(DEFAULT_LIMIT)
    }

    /// An empty workspace that holds at most `bytes` between calls (`0`: nothing is
    /// reused).
    pub fn with_limit(bytes: usize) -> Self {
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .max(rayon::current_num_threads());
        Workspace {
            inner: Arc::new(Inner {
                slots: (0..=threads).map(|_| Slot::default()).collect(),
                books: Mutex::new(Books {
                    buffers: Vec::new(),
                    recent: [0; RECENT],
                    next: 0,
                    recycled: 0,
                    scratch: 0,
                    limit: bytes,
                    clock: 0,
                }),
            }),
        }
    }

    /// The workspace of code that runs in no other: process-wide, made on first use.
    pub fn global() -> &'static Workspace {
        static GLOBAL: OnceLock<Workspace> = OnceLock::new();
        GLOBAL.get_or_init(Workspace::new)
    }

    /// The workspace this thread runs in: the innermost [`Workspace::run`], else
    /// [`Workspace::global`].
    pub fn current() -> Workspace {
        CURRENT
            .with(|c| c.borrow().clone())
            .unwrap_or_else(|| Workspace::global().clone())
    }

    /// Runs `f` in this workspace: tensors made on this thread meanwhile take their
    /// buffers from it (and give them back when dropped, wherever that is), and the
    /// kernels called take their scratch from it.
    pub fn run<R>(&self, f: impl FnOnce() -> R) -> R {
        struct Restore(Option<Workspace>);
        impl Drop for Restore {
            fn drop(&mut self) {
                let previous = self.0.take();
                CURRENT.with(|c| *c.borrow_mut() = previous);
            }
        }
        let _restore = Restore(CURRENT.with(|c| c.borrow_mut().replace(self.clone())));
        f()
    }

    /// Whether `self` and `other` are handles to the same workspace.
    pub fn same(&self, other: &Workspace) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    fn books(&self) -> MutexGuard<'_, Books> {
        // A panic while holding the lock cannot leave the books inconsistent (every
        // update is a push or a swap_remove plus counters), so a poisoned lock is still
        // usable.
        self.inner.books.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The bound on the bytes this workspace holds between calls.
    pub fn limit(&self) -> usize {
        self.books().limit
    }

    /// Sets the bound on the bytes this workspace holds, freeing recycled buffers past it
    /// (largest first) and, if that is not enough, its scratch. `0` turns reuse off.
    pub fn set_limit(&self, bytes: usize) {
        let mut books = self.books();
        books.limit = bytes;
        if !books.make_room(0) {
            drop(books);
            self.release_scratch();
        }
    }

    /// The bytes this workspace holds now: parked scratch plus recycled buffers.
    pub fn held_bytes(&self) -> usize {
        let books = self.books();
        books.scratch + books.recycled
    }

    /// The bytes of recycled activation buffers held now.
    pub fn recycled_bytes(&self) -> usize {
        self.books().recycled
    }

    /// The bytes of parked scratch buffers held now.
    pub fn scratch_bytes(&self) -> usize {
        self.books().scratch
    }

    /// Frees every buffer this workspace holds (the limit stays). Scratch in use by a
    /// running kernel is freed when that kernel is done with it instead.
    pub fn release(&self) {
        {
            let mut books = self.books();
            books.buffers = Vec::new();
            books.recycled = 0;
        }
        self.release_scratch();
    }

    fn release_scratch(&self) {
        for slot in self.inner.slots.iter() {
            for cell in &slot.0 {
                let v = std::mem::take(&mut *cell.lock().unwrap_or_else(|p| p.into_inner()));
                if v.capacity() > 0 {
                    self.books().scratch -= bytes_of(&v);
                }
            }
        }
    }

    /// Runs `f` with this thread's scratch buffer `which` (empty the first time; `f`
    /// resizes it as it needs), then parks it for the next call if it fits under the
    /// limit.
    pub(crate) fn scratch<R>(&self, which: Scratch, f: impl FnOnce(&mut Vec<f32>) -> R) -> R {
        let slots = &self.inner.slots;
        let slot = rayon::current_thread_index().map_or(0, |i| 1 + i) % slots.len();
        let cell = &slots[slot].0[which.index()];
        let mut buf = std::mem::take(&mut *cell.lock().unwrap_or_else(|p| p.into_inner()));
        if buf.capacity() > 0 {
            self.books().scratch -= bytes_of(&buf);
        }
        let result = f(&mut buf);
        if buf.capacity() > 0 {
            let mut parked = cell.lock().unwrap_or_else(|p| p.into_inner());
            // Another use of this slot (a nested task stolen by this thread, or a thread
            // sharing the slot) may have parked one meanwhile: keep the larger.
            if parked.capacity() < buf.capacity() {
                let mut books = self.books();
                books.scratch -= bytes_of(&parked);
                if books.make_room(bytes_of(&buf)) {
                    books.scratch += bytes_of(&buf);
                    *parked = buf;
                } else {
                    *parked = Vec::new();
                }
            }
        }
        result
    }

    /// A buffer of `len` floats with unspecified (but initialised) contents, if this
    /// workspace holds one whose capacity is between `len` and `2 * len` (the smallest
    /// such).
    pub(crate) fn take(&self, len: usize) -> Option<Vec<f32>> {
        let mut books = self.books();
        books.tick();
        let next = books.next;
        books.recent[next] = len;
        books.next = (next + 1) % RECENT;
        let best = books
            .buffers
            .iter()
            .enumerate()
            .filter(|(_, (b, _))| (len..=2 * len).contains(&b.capacity()))
            .min_by_key(|(_, (b, _))| b.capacity())
            .map(|(i, _)| i)?;
        let (mut v, _) = books.buffers.swap_remove(best);
        books.recycled -= bytes_of(&v);
        drop(books);
        // Within capacity: `truncate` is free, `resize` writes only the part past the old
        // length (a buffer shortened by an earlier `take`).
        v.resize(len, 0.0);
        Some(v)
    }

    /// Keeps `v` if a recent request could use it and it fits under the limit; otherwise
    /// frees it.
    pub(crate) fn give(&self, v: Vec<f32>) {
        if bypassed() {
            return;
        }
        let mut books = self.books();
        books.tick();
        let cap = v.capacity();
        let wanted = books
            .recent
            .iter()
            .any(|&l| l > 0 && (l..=2 * l).contains(&cap));
        if wanted && books.recycled + books.scratch + bytes_of(&v) <= books.limit {
            books.recycled += bytes_of(&v);
            let now = books.clock;
            books.buffers.push((v, now));
        }
    }
}

/// A temporary buffer lent by a workspace for the length of one call (a weight
/// gradient's per-thread partial sums, packed weights, a column matrix): taken from the
/// workspace's recycled buffers where it holds one of about that size, given back when
/// dropped. Fresh multi-megabyte buffers per call cost page faults on first touch and,
/// freed, an unmapping that interrupts every thread of the process: a convolution's `dX`
/// and `dW` run together took 1.4x the sum of their times alone (`conv/backward.rs`).
pub(crate) struct Lent<'a> {
    ws: &'a Workspace,
    buf: Vec<f32>,
}

impl Workspace {
    /// `len` floats of unspecified (initialised) contents, lent for one call.
    pub(crate) fn lend(&self, len: usize) -> Lent<'_> {
        self.lend_as(len, false)
    }

    /// `len` zeros, lent for one call.
    pub(crate) fn lend_zeroed(&self, len: usize) -> Lent<'_> {
        self.lend_as(len, true)
    }

    fn lend_as(&self, len: usize, zeroed: bool) -> Lent<'_> {
        let reused = (len >= MIN_FLOATS && !bypassed())
            .then(|| self.take(len))
            .flatten();
        let buf = match reused {
            Some(mut v) => {
                if zeroed {
                    v.fill(0.0);
                }
                v
            }
            // Zeros asked for are written, not left to the allocator's untouched zero
            // pages, which a kernel that reads before it writes would fault on twice
            // (a read, then a copy-on-write: see `Tensor::full`).
            None if zeroed => {
                let mut v = Vec::with_capacity(len);
                v.resize(len, 0.0);
                v
            }
            None => vec![0.0; len],
        };
        Lent { ws: self, buf }
    }

    /// Gives back a buffer a [`Lent`] was turned into (a packed operand made of it).
    pub(crate) fn recycle(&self, v: Vec<f32>) {
        if v.capacity() >= MIN_FLOATS {
            self.give(v);
        }
    }
}

impl Lent<'_> {
    /// The buffer, no longer lent (a result made of it goes back to its workspace by
    /// its own route, e.g. a tensor's home).
    pub(crate) fn into_inner(mut self) -> Vec<f32> {
        std::mem::take(&mut self.buf)
    }
}

impl std::ops::Deref for Lent<'_> {
    type Target = Vec<f32>;
    fn deref(&self) -> &Vec<f32> {
        &self.buf
    }
}

impl std::ops::DerefMut for Lent<'_> {
    fn deref_mut(&mut self) -> &mut Vec<f32> {
        &mut self.buf
    }
}

impl Drop for Lent<'_> {
    fn drop(&mut self) {
        self.ws.recycle(std::mem::take(&mut self.buf));
    }
}

/// Where a tensor's buffer goes back when the tensor is dropped: the workspace it was made
/// in, if that still exists. A tensor does not keep its workspace alive: the features a
/// model returned outlive the model without holding its scratch.
#[derive(Debug)]
pub(crate) struct Home(Weak<Inner>);

impl Home {
    /// Hands `v` back to the workspace (see [`Workspace::give`]), or to the allocator if
    /// the workspace is gone.
    pub(crate) fn give(self, v: Vec<f32>) {
        if let Some(inner) = self.0.upgrade() {
            Workspace { inner }.give(v);
        }
    }
}

/// The home of a new tensor of `len` floats, and a reused buffer for it if its workspace
/// has one: `None` for small tensors and under [`bypass`].
pub(crate) fn home_for(len: usize) -> Option<(Home, Option<Vec<f32>>)> {
    if len < MIN_FLOATS || bypassed() {
        return None;
    }
    let ws = Workspace::current();
    let buf = ws.take(len);
    Some((Home(Arc::downgrade(&ws.inner)), buf))
}

/// The home of a tensor wrapping a caller's buffer of `len` floats.
pub(crate) fn home_of_given(len: usize) -> Option<Home> {
    (len >= MIN_FLOATS && !bypassed()).then(|| Home(Arc::downgrade(&Workspace::current().inner)))
}

/// Runs `f` with reuse bypassed on this thread: tensors dropped meanwhile free their
/// memory, and new ones come from the allocator and belong to no workspace.
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
