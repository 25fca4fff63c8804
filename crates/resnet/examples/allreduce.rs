//! All-reduce bandwidth between MPI ranks: the sum of `n` floats across the job, timed
//! for messages from 4 KiB to 64 MiB (ResNet-20's gradients are 1.1 MB, ResNet-50's
//! 102 MB), blocking and as the training step starts them (in the background, then
//! waited for).
//!
//! ```text
//! cargo build --release -p resnet --features mpi --example allreduce
//! mpirun -np 2 target/release/examples/allreduce
//! ```
//!
//! Prints, per size, the best time of several and two bandwidths: the algorithm's
//! (`bytes / time`) and the bus's (`2 (p - 1) / p x bytes / time`, what each link
//! carries in a ring all-reduce; the figure to compare with a network's line rate).

use std::time::Instant;

use resnet::distributed::{Communicator, Mpi};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mpi = Mpi::init()?.ok_or("MPI was already initialised")?;
    let (rank, p) = (mpi.rank(), mpi.size());
    if rank == 0 {
        println!("all-reduce (sum of f32) on {p} ranks");
        println!(
            "{:>10} {:>12} {:>10} {:>10} {:>14}",
            "bytes", "best (ms)", "alg GB/s", "bus GB/s", "started (ms)"
        );
    }
    let mut bytes = 4usize << 10;
    while bytes <= 128 << 20 {
        let n = bytes / 4;
        let mut v = vec![1.0f32; n];
        let reps = (((256 << 20) / bytes).clamp(3, 200)) as u32;
        let (mut best, mut best_started) = (f64::INFINITY, f64::INFINITY);
        for _ in 0..reps {
            let t = Instant::now();
            mpi.sum_f32(&mut v)?;
            best = best.min(t.elapsed().as_secs_f64());
            let t = Instant::now();
            let pending = mpi.start_sum_f32(vec![1.0f32; n])?;
            let _ = pending.wait()?;
            best_started = best_started.min(t.elapsed().as_secs_f64());
        }
        if rank == 0 {
            let alg = bytes as f64 / best / 1e9;
            let bus = alg * 2.0 * (p - 1) as f64 / p as f64;
            println!(
                "{bytes:>10} {:>12.3} {alg:>10.2} {bus:>10.2} {:>14.3}",
                best * 1e3,
                best_started * 1e3
            );
        }
        bytes *= 4;
    }
    mpi.finalize();
    Ok(())
}
