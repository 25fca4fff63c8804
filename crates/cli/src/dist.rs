//! Data-parallel runs under MPI: `mpirun -np N resnet train ...` with a binary built
//! with `--features mpi` (see docs/distributed.md).

use std::sync::{Arc, OnceLock};

use resnet::distributed::Communicator;

/// The job's communicator, when this process is one of several MPI ranks.
static COMM: OnceLock<Arc<dyn Communicator>> = OnceLock::new();

/// The same, as MPI, to finalise at the end.
#[cfg(feature = "mpi")]
static MPI: OnceLock<Arc<resnet::distributed::Mpi>> = OnceLock::new();

/// The MPI job this process belongs to, if any (set up once, by `main`).
pub fn comm() -> Option<&'static Arc<dyn Communicator>> {
    COMM.get()
}

#[cfg(not(feature = "mpi"))]
/// How many processes the launcher started, from the environment variables Open MPI,
/// MPICH/PMI and Slurm set (`None`: not launched by one).
pub fn launched_size() -> Option<usize> {
    ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "SLURM_NTASKS"]
        .iter()
        .find_map(|v| std::env::var(v).ok()?.parse().ok())
}

/// Ranks on this machine (for the default thread count: the cores shared among them).
pub fn local_ranks() -> usize {
    [
        "OMPI_COMM_WORLD_LOCAL_SIZE",
        "MPI_LOCALNRANKS",
        "SLURM_NTASKS_PER_NODE",
    ]
    .iter()
    .find_map(|v| std::env::var(v).ok()?.parse().ok())
    .unwrap_or(1usize)
    .max(1)
}

/// Joins the MPI job when this process was started by an MPI launcher. A binary built
/// without the `mpi` feature refuses to run as one of several ranks (each would train
/// alone and write the same files).
pub fn init() -> Result<(), Box<dyn std::error::Error>> {
    #[cfg(feature = "mpi")]
    {
        if resnet::distributed::Mpi::launched() {
            if let Some(mpi) = resnet::distributed::Mpi::init()? {
                let mpi = Arc::new(mpi);
                let _ = MPI.set(Arc::clone(&mpi));
                let _ = COMM.set(mpi);
            }
        }
        Ok(())
    }
    #[cfg(not(feature = "mpi"))]
    match launched_size() {
        Some(n) if n > 1 => Err(format!(
            "started as one of {n} MPI processes, but this resnet was built without MPI: \
             build it with `cargo build --release -p resnet-cli --features mpi` (needs an MPI \
             library, see docs/distributed.md), or run one process"
        )
        .into()),
        _ => Ok(()),
    }
}

/// Leaves the MPI job cleanly (every rank, at the end of a successful command).
pub fn finalize() {
    #[cfg(feature = "mpi")]
    if let Some(mpi) = MPI.get() {
        mpi.finalize();
    }
}

/// Ends the whole job after an error on this rank (the others would wait for it).
pub fn abort_if_parallel() {
    if let Some(c) = comm().filter(|c| c.size() > 1) {
        c.abort(1);
    }
}
