//! `resnet bench ...`: one-shot benchmark tables, for humans or (`--json`) for scripts.
//!
//! Each case is timed as the best of repeated runs over about `--seconds` (the best, not
//! the mean, because these machines are shared: interference only ever adds time), and
//! reported in GFLOP/s and as a percentage of the FMA peak measured at the start of the
//! same run, on the same number of threads.

use std::time::{Duration, Instant};

use tensor::gemm::matrixmultiply_gemm;
use tensor::{peak, Kernels, MatMut, MatRef};

/// The GEMM shapes: squares, then ResNet-50's convolutions as im2col GEMMs
/// `(M, N, K) = (out channels, output pixels at batch 1, in channels x kh x kw)`.
pub const GEMM_SHAPES: &[(&str, usize, usize, usize)] = &[
    ("square_256", 256, 256, 256),
    ("square_512", 512, 512, 512),
    ("square_1024", 1024, 1024, 1024),
    ("square_2048", 2048, 2048, 2048),
    ("r50_conv1_7x7s2", 64, 12544, 147),
    ("r50_layer1_3x3", 64, 3136, 576),
    ("r50_layer2_3x3", 128, 784, 1152),
    ("r50_layer3_3x3", 256, 196, 2304),
    ("r50_layer4_3x3", 512, 49, 4608),
    ("r50_layer1_1x1_expand", 256, 3136, 64),
    ("r50_layer4_1x1_expand", 2048, 49, 512),
];

/// Best wall time of `f` over about `budget` (at least 3 runs, after one warm-up).
pub fn best_time(budget: Duration, mut f: impl FnMut()) -> Duration {
    f();
    let start = Instant::now();
    let mut best = Duration::MAX;
    let mut runs = 0;
    while runs < 3 || start.elapsed() < budget {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed());
        runs += 1;
    }
    best
}

/// One result row.
pub struct Row {
    pub bench: &'static str,
    pub name: String,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub imp: &'static str,
    pub threads: usize,
    pub gflops: f64,
    pub peak_pct: f64,
}

impl Row {
    pub fn json(&self) -> String {
        format!(
            "{{\"bench\":\"{}\",\"name\":\"{}\",\"m\":{},\"n\":{},\"k\":{},\"impl\":\"{}\",\"threads\":{},\"gflops\":{:.2},\"peak_pct\":{:.1}}}",
            self.bench, self.name, self.m, self.n, self.k, self.imp, self.threads, self.gflops, self.peak_pct
        )
    }

    pub fn text(&self) -> String {
        format!(
            "{:<24} {:>5} {:>6} {:>5}  {:<15} {:>3}  {:>8.1} GFLOP/s  {:>5.1}% of peak",
            self.name, self.m, self.n, self.k, self.imp, self.threads, self.gflops, self.peak_pct
        )
    }
}

/// Measures the FMA peak of `k`'s tier on `threads` threads, in GFLOP/s.
pub fn measured_peak(k: &Kernels, threads: usize) -> f64 {
    peak::fma_peak(k, threads, Duration::from_millis(400)).gflops
}

/// Runs the GEMM table: every shape, ours and matrixmultiply, on the current rayon pool.
pub fn gemm(
    k: &Kernels,
    threads: usize,
    budget: Duration,
    json: bool,
) -> Result<(), Box<dyn std::error::Error>> {
    let peak = measured_peak(k, threads);
    if !json {
        println!(
            "GEMM, {} threads, microkernel {}, measured FMA peak {:.1} GFLOP/s",
            threads,
            k.gemm_kernel_name(),
            peak
        );
        println!(
            "{:<24} {:>5} {:>6} {:>5}  {:<15} {:>3}",
            "shape", "M", "N", "K", "impl", "thr"
        );
    }
    for &(name, m, n, kk) in GEMM_SHAPES {
        let a: Vec<f32> = (0..m * kk)
            .map(|i| ((i % 17) as f32 - 8.0) * 0.01)
            .collect();
        let b: Vec<f32> = (0..kk * n)
            .map(|i| ((i % 13) as f32 - 6.0) * 0.01)
            .collect();
        let mut c = vec![0.0f32; m * n];
        let av = MatRef::row_major(&a, m, kk)?;
        let bv = MatRef::row_major(&b, kk, n)?;
        let flops = 2.0 * (m * n * kk) as f64;
        let mut err = None;
        let ours = best_time(budget, || {
            let mut cv = MatMut::row_major(&mut c, m, n).expect("output view");
            if let Err(e) = k.gemm(av, bv, &mut cv, &[]) {
                err = Some(e);
            }
        });
        if let Some(e) = err {
            return Err(e.into());
        }
        // A packed once beforehand, as inference does with weights.
        let packed = k.pack_a(av);
        let prepacked = best_time(budget, || {
            let mut cv = MatMut::row_major(&mut c, m, n).expect("output view");
            if let Err(e) = k.gemm_prepacked(&packed, bv, &mut cv, &[]) {
                err = Some(e);
            }
        });
        if let Some(e) = err {
            return Err(e.into());
        }
        let theirs = best_time(budget, || {
            let mut cv = MatMut::row_major(&mut c, m, n).expect("output view");
            let _ = matrixmultiply_gemm(av, bv, &mut cv);
        });
        for (imp, t) in [
            ("ours", ours),
            ("ours_prepacked", prepacked),
            ("matrixmultiply", theirs),
        ] {
            let gflops = flops / t.as_secs_f64() / 1e9;
            let row = Row {
                bench: "gemm",
                name: name.to_string(),
                m,
                n,
                k: kk,
                imp,
                threads,
                gflops,
                peak_pct: 100.0 * gflops / peak,
            };
            println!("{}", if json { row.json() } else { row.text() });
        }
    }
    Ok(())
}
