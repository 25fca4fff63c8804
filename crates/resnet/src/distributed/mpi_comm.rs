//! [`Communicator`] over MPI (the `mpi` crate, rsmpi, on the system's MPI library).

use std::sync::{Mutex, MutexGuard};

use mpi::collective::{CommunicatorCollectives, Root, SystemOperation};
use mpi::point_to_point::{Destination, Source};
use mpi::raw::AsRaw;
use mpi::topology::{Communicator as _, SimpleCommunicator};
use mpi::{ffi, Threading};
use tensor::{ReplicaSum, Result, TensorError};

use super::{Communicator, PendingSum};

/// The job's ranks over MPI (`MPI_COMM_WORLD`). Made once per process
/// ([`Mpi::init`]); [`Mpi::finalize`] (or dropping it) finalises MPI, which every rank
/// must do before it exits, or the launcher counts the exit as a failure.
///
/// MPI is initialised with `MPI_THREAD_SERIALIZED`: the training step runs on one of
/// rayon's threads, not the main one, and every call here holds one lock, so no two
/// threads are ever in MPI at once. Errors are fatal (`MPI_ERRORS_ARE_FATAL`, set
/// explicitly): a failed communication, a peer that died, ends the job instead of
/// returning, so no rank is left waiting.
pub struct Mpi {
    /// Dropping it calls `MPI_Finalize`.
    universe: Mutex<Option<mpi::environment::Universe>>,
    lock: Mutex<()>,
    rank: usize,
    size: usize,
}

impl std::fmt::Debug for Mpi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Mpi(rank {} of {})", self.rank, self.size)
    }
}

fn mpi_error(reason: String) -> TensorError {
    TensorError::InvalidArgument { op: "mpi", reason }
}

impl Mpi {
    /// Initialises MPI; `None` when it already was in this process. An error when the
    /// MPI library cannot give the thread support needed.
    pub fn init() -> Result<Option<Mpi>> {
        let Some((universe, threading)) = mpi::initialize_with_threading(Threading::Serialized)
        else {
            return Ok(None);
        };
        if threading < Threading::Serialized {
            return Err(mpi_error(format!(
                "the MPI library gives thread support {threading:?}, and training needs \
                 Serialized (calls from rayon's threads, one at a time)"
            )));
        }
        let world = SimpleCommunicator::world();
        // SAFETY: the world communicator and a predefined error handler, after init.
        unsafe {
            ffi::MPI_Comm_set_errhandler(world.as_raw(), ffi::RSMPI_ERRORS_ARE_FATAL);
        }
        let (rank, size) = (world.rank() as usize, world.size() as usize);
        Ok(Some(Mpi {
            universe: Mutex::new(Some(universe)),
            lock: Mutex::new(()),
            rank,
            size,
        }))
    }

    /// Whether this process was started by an MPI launcher (`mpirun`, `mpiexec`,
    /// `srun`): the environment variables Open MPI, MPICH and Slurm's PMI set.
    pub fn launched() -> bool {
        [
            "OMPI_COMM_WORLD_SIZE",
            "PMI_SIZE",
            "PMIX_RANK",
            "PMI_RANK",
            "MPI_LOCALNRANKS",
        ]
        .iter()
        .any(|v| std::env::var_os(v).is_some())
    }

    /// Finalises MPI (after a barrier: no rank leaves while another still needs it);
    /// no call may follow. For a communicator kept in a `static`, which is never
    /// dropped.
    pub fn finalize(&self) {
        let universe = self
            .universe
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(universe) = universe {
            let _g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
            SimpleCommunicator::world().barrier();
            drop(universe);
        }
    }

    fn world(&self) -> (MutexGuard<'_, ()>, SimpleCommunicator) {
        // A poisoned lock only means another thread panicked mid-call: MPI itself is
        // fine (errors are fatal), so go on.
        let guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        (guard, SimpleCommunicator::world())
    }
}

impl ReplicaSum for Mpi {
    fn sum(&self, values: &mut [f64]) -> Result<()> {
        let (_g, world) = self.world();
        let send = values.to_vec();
        world.all_reduce_into(&send[..], values, SystemOperation::sum());
        Ok(())
    }
}

/// An `MPI_Iallreduce` in flight, owning both of its buffers until it completes.
struct Pending<'a> {
    mpi: &'a Mpi,
    request: ffi::MPI_Request,
    /// Read by MPI until completion; never touched here before then.
    _send: Vec<f32>,
    recv: Vec<f32>,
    done: bool,
}

impl PendingSum for Pending<'_> {
    fn test(&mut self) -> Result<bool> {
        if !self.done {
            let _g = self.mpi.lock.lock().unwrap_or_else(|e| e.into_inner());
            let mut flag = 0;
            // SAFETY: a live request of this process; the status is ignored.
            unsafe {
                ffi::MPI_Test(&mut self.request, &mut flag, ffi::RSMPI_STATUS_IGNORE);
            }
            self.done = flag != 0;
        }
        Ok(self.done)
    }

    fn wait(mut self: Box<Self>) -> Result<Vec<f32>> {
        self.finish();
        Ok(std::mem::take(&mut self.recv))
    }
}

impl Pending<'_> {
    fn finish(&mut self) {
        if !self.done {
            let _g = self.mpi.lock.lock().unwrap_or_else(|e| e.into_inner());
            // SAFETY: a live request of this process.
            unsafe {
                ffi::MPI_Wait(&mut self.request, ffi::RSMPI_STATUS_IGNORE);
            }
            self.done = true;
        }
    }
}

impl Drop for Pending<'_> {
    /// The buffers must outlive the operation: an abandoned sum is waited for.
    fn drop(&mut self) {
        self.finish();
    }
}

impl Communicator for Mpi {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.size
    }

    fn sum_f32(&self, values: &mut [f32]) -> Result<()> {
        let (_g, world) = self.world();
        let send = values.to_vec();
        world.all_reduce_into(&send[..], values, SystemOperation::sum());
        Ok(())
    }

    fn start_sum_f32(&self, values: Vec<f32>) -> Result<Box<dyn PendingSum + '_>> {
        let count = i32::try_from(values.len())
            .map_err(|_| mpi_error(format!("a bucket of {} values", values.len())))?;
        let mut p = Box::new(Pending {
            mpi: self,
            // SAFETY: overwritten by MPI_Iallreduce below before any use.
            request: unsafe { ffi::RSMPI_REQUEST_NULL },
            recv: vec![0.0; values.len()],
            _send: values,
            done: false,
        });
        let (_g, world) = self.world();
        // SAFETY: both buffers live in `p` (heap memory that does not move while the
        // Vecs are not touched) until the request completes: `Pending` waits on drop.
        unsafe {
            ffi::MPI_Iallreduce(
                p._send.as_ptr().cast(),
                p.recv.as_mut_ptr().cast(),
                count,
                ffi::RSMPI_FLOAT,
                ffi::RSMPI_SUM,
                world.as_raw(),
                &mut p.request,
            );
        }
        Ok(p)
    }

    fn broadcast_bytes(&self, data: &mut Vec<u8>) -> Result<()> {
        let (_g, world) = self.world();
        let root = world.process_at_rank(0);
        let mut len = data.len() as u64;
        root.broadcast_into(&mut len);
        data.resize(len as usize, 0);
        // In pieces: MPI counts are 32-bit.
        for piece in data.chunks_mut(1 << 30) {
            root.broadcast_into(piece);
        }
        Ok(())
    }

    fn gather_bytes(&self, mine: &[u8]) -> Result<Vec<Vec<u8>>> {
        let (_g, world) = self.world();
        if self.rank == 0 {
            let mut all = vec![mine.to_vec()];
            for r in 1..self.size {
                let (v, _) = world.process_at_rank(r as i32).receive_vec::<u8>();
                all.push(v);
            }
            Ok(all)
        } else {
            world.process_at_rank(0).send(mine);
            Ok(Vec::new())
        }
    }

    fn abort(&self, code: i32) -> ! {
        SimpleCommunicator::world().abort(code)
    }
}
