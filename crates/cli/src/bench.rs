//! `resnet bench ...`: one-shot benchmark tables, for humans or (`--json`) for scripts.
//!
//! Each case is timed as the best of repeated runs over about `--seconds` (the best, not
//! the mean, because these machines are shared: interference only ever adds time), and
//! reported in GFLOP/s and as a percentage of the FMA peak measured at the start of the
//! same run, on the same number of threads.

use std::time::{Duration, Instant};

use tensor::gemm::matrixmultiply_gemm;
use tensor::{
    peak, Conv2d, ConvPlan, DirectForm, Epilogue, Forward, Kernels, Layout, MatMut, MatRef, Mode,
    Tensor,
};

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
pub fn best_time<T, E>(
    budget: Duration,
    mut f: impl FnMut() -> Result<T, E>,
) -> Result<Duration, E> {
    f()?;
    let start = Instant::now();
    let mut best = Duration::MAX;
    let mut runs = 0;
    while runs < 3 || start.elapsed() < budget {
        let t = Instant::now();
        f()?;
        best = best.min(t.elapsed());
        runs += 1;
    }
    Ok(best)
}

/// Deterministic `A` (`m x k`) and `B` (`k x n`) for a GEMM case: small values in a
/// repeating pattern (speed does not depend on them).
fn gemm_operands(m: usize, n: usize, k: usize) -> (Vec<f32>, Vec<f32>) {
    let a = (0..m * k).map(|i| ((i % 17) as f32 - 8.0) * 0.01).collect();
    let b = (0..k * n).map(|i| ((i % 13) as f32 - 6.0) * 0.01).collect();
    (a, b)
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
        serde_json::json!({
            "bench": self.bench, "name": self.name, "m": self.m, "n": self.n, "k": self.k,
            "impl": self.imp, "threads": self.threads,
            "gflops": round(self.gflops, 2), "peak_pct": round(self.peak_pct, 1),
        })
        .to_string()
    }

    pub fn text(&self) -> String {
        format!(
            "{:<24} {:>5} {:>6} {:>5}  {:<15} {:>3}  {:>8.1} GFLOP/s  {:>5.1}% of peak",
            self.name, self.m, self.n, self.k, self.imp, self.threads, self.gflops, self.peak_pct
        )
    }
}

/// Measures the FMA peak of `k`'s tier on `threads` threads, in GFLOP/s: the best of
/// three half-second probes, so that a neighbour's burst on a shared machine does not
/// make the peak (and so every percentage) look lower than it is.
///
/// On more than one thread the probe must come out at least as high as on one: when it
/// does not (the other cores were busy: a shared machine), it is probed again, and if it
/// stays below, a warning says so and the one-thread peak is the yardstick, so that no
/// percentage is made against a peak lower than one core's (a run once printed "249% of
/// peak" that way).
pub fn measured_peak(k: &Kernels, threads: usize) -> f64 {
    let probe = |n: usize| {
        (0..3)
            .map(|_| peak::fma_peak(k, n, Duration::from_millis(500)).gflops)
            .fold(0.0, f64::max)
    };
    let mut peak = probe(threads);
    if threads <= 1 {
        return peak;
    }
    let one = probe(1);
    if peak < one {
        peak = peak.max(probe(threads));
    }
    if peak < one {
        eprintln!(
            "warning: the FMA peak on {threads} threads came out at {peak:.1} GFLOP/s, below \
             one thread's {one:.1} (the other cores are busy); percentages use {one:.1}"
        );
        return one;
    }
    peak
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
        crate::emit(&format!(
            "GEMM, {} threads, microkernel {}, measured FMA peak {:.1} GFLOP/s",
            threads,
            k.gemm_kernel_name(),
            peak
        ))?;
        crate::emit(&format!(
            "{:<24} {:>5} {:>6} {:>5}  {:<15} {:>3}",
            "shape", "M", "N", "K", "impl", "thr"
        ))?;
    }
    for &(name, m, n, kk) in GEMM_SHAPES {
        let (a, b) = gemm_operands(m, n, kk);
        let mut c = vec![0.0f32; m * n];
        let av = MatRef::row_major(&a, m, kk)?;
        let bv = MatRef::row_major(&b, kk, n)?;
        let flops = 2.0 * (m * n * kk) as f64;
        let ours = best_time(budget, || {
            let mut cv = MatMut::row_major(&mut c, m, n).expect("output view");
            k.gemm(av, bv, &mut cv, &[])
        })?;
        // A packed once beforehand, as inference does with weights.
        let packed = k.pack_a(av);
        let prepacked = best_time(budget, || {
            let mut cv = MatMut::row_major(&mut c, m, n).expect("output view");
            k.gemm_prepacked(&packed, bv, &mut cv, &[])
        })?;
        let theirs = best_time(budget, || {
            let mut cv = MatMut::row_major(&mut c, m, n).expect("output view");
            matrixmultiply_gemm(av, bv, &mut cv)
        })?;
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
            crate::emit(&if json { row.json() } else { row.text() })?;
        }
    }
    Ok(())
}

/// Thread scaling measured in one run: every GEMM shape timed on one thread and on
/// `threads` in turns (a rayon pool of each size, several rounds), so that a shared
/// host's drift, which moves separate runs by tens of percent, falls on both sides
/// alike. The FMA peak's own scaling, probed the same way, is the yardstick: no
/// product can scale better than the arithmetic units do.
pub fn scaling(
    k: &Kernels,
    threads: usize,
    budget: Duration,
    json: bool,
) -> Result<(), Box<dyn std::error::Error>> {
    if threads < 2 {
        return Err(format!(
            "bench scaling compares one thread with --threads N, and N is {threads}: \
             give --threads 2 or more"
        )
        .into());
    }
    let pools = [
        rayon::ThreadPoolBuilder::new().num_threads(1).build()?,
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()?,
    ];
    const ROUNDS: usize = 4;
    let probe = Duration::from_millis(200);
    let mut peak = [0.0f64; 2];
    for _ in 0..3 {
        for (side, n) in [1, threads].into_iter().enumerate() {
            peak[side] = peak[side].max(peak::fma_peak(k, n, probe).gflops);
        }
    }
    let peak_speedup = peak[1] / peak[0];
    if !json {
        crate::emit(&format!(
            "GEMM thread scaling, 1 vs {threads} threads in turns ({ROUNDS} rounds), \
             microkernel {}; FMA peak {:.1} vs {:.1} GFLOP/s: {:.2}x",
            k.gemm_kernel_name(),
            peak[0],
            peak[1],
            peak_speedup
        ))?;
        crate::emit(&format!(
            "{:<24} {:>5} {:>6} {:>5}  {:<15} {:>17} {:>17}  {:>7}",
            "shape",
            "M",
            "N",
            "K",
            "impl",
            "1 thread",
            format!("{threads} threads"),
            "speedup"
        ))?;
    }
    // Each side's share of the budget per round.
    let slice = budget / (2 * ROUNDS) as u32;
    for &(name, m, n, kk) in GEMM_SHAPES {
        let (a, b) = gemm_operands(m, n, kk);
        let mut c = vec![0.0f32; m * n];
        let av = MatRef::row_major(&a, m, kk)?;
        let bv = MatRef::row_major(&b, kk, n)?;
        let packed = k.pack_a(av);
        let flops = 2.0 * (m * n * kk) as f64;
        for imp in ["ours", "ours_prepacked"] {
            let mut best = [Duration::MAX; 2];
            for _ in 0..ROUNDS {
                for (side, pool) in pools.iter().enumerate() {
                    let t = pool.install(|| {
                        best_time(slice, || {
                            let mut cv = MatMut::row_major(&mut c, m, n).expect("output view");
                            if imp == "ours" {
                                k.gemm(av, bv, &mut cv, &[])
                            } else {
                                k.gemm_prepacked(&packed, bv, &mut cv, &[])
                            }
                        })
                    })?;
                    best[side] = best[side].min(t);
                }
            }
            let gflops = best.map(|t| flops / t.as_secs_f64() / 1e9);
            let speedup = gflops[1] / gflops[0];
            let line = if json {
                serde_json::json!({
                    "bench": "scaling", "name": name, "m": m, "n": n, "k": kk, "impl": imp,
                    "threads": threads, "gflops_1": round(gflops[0], 2),
                    "gflops_n": round(gflops[1], 2), "speedup": round(speedup, 3),
                    "peak_speedup": round(peak_speedup, 3),
                })
                .to_string()
            } else {
                format!(
                    "{name:<24} {m:>5} {n:>6} {kk:>5}  {imp:<15} {:>7.1} ({:>5.1}%) {:>7.1} ({:>5.1}%)  {speedup:>6.2}x",
                    gflops[0],
                    100.0 * gflops[0] / peak[0],
                    gflops[1],
                    100.0 * gflops[1] / peak[1],
                )
            };
            crate::emit(&line)?;
        }
    }
    Ok(())
}

/// A convolution layer to time: `(name, in, out, kernel, stride, padding, input size,
/// groups)`.
pub type ConvLayer = (
    &'static str,
    usize,
    usize,
    usize,
    usize,
    usize,
    usize,
    usize,
);

/// The distinct grouped 3x3 convolutions of ResNeXt-50 32x4d at 224x224 (32 groups of
/// 4, 8, 16 and 32 channels).
pub const RESNEXT50_GROUPED: &[ConvLayer] = &[
    ("layer1_3x3_128_g32", 128, 128, 3, 1, 1, 56, 32),
    ("layer2.0_3x3s2_256_g32", 256, 256, 3, 2, 1, 56, 32),
    ("layer2_3x3_256_g32", 256, 256, 3, 1, 1, 28, 32),
    ("layer3.0_3x3s2_512_g32", 512, 512, 3, 2, 1, 28, 32),
    ("layer3_3x3_512_g32", 512, 512, 3, 1, 1, 14, 32),
    ("layer4.0_3x3s2_1024_g32", 1024, 1024, 3, 2, 1, 14, 32),
    ("layer4_3x3_1024_g32", 1024, 1024, 3, 1, 1, 7, 32),
];

/// The 3x3 convolutions of Wide ResNet-50-2 at 224x224 (ResNet-50's, twice as wide):
/// `(name, in, out, kernel, stride, padding, input size, groups)`.
pub const WIDE_RESNET50_2_3X3: &[ConvLayer] = &[
    ("layer1_3x3_128", 128, 128, 3, 1, 1, 56, 1),
    ("layer2.0_3x3s2_256", 256, 256, 3, 2, 1, 56, 1),
    ("layer2_3x3_256", 256, 256, 3, 1, 1, 28, 1),
    ("layer3.0_3x3s2_512", 512, 512, 3, 2, 1, 28, 1),
    ("layer3_3x3_512", 512, 512, 3, 1, 1, 14, 1),
    ("layer4.0_3x3s2_1024", 1024, 1024, 3, 2, 1, 14, 1),
    ("layer4_3x3_1024", 1024, 1024, 3, 1, 1, 7, 1),
];

/// Every distinct convolution of ResNet-50 at 224x224: `(name, in, out, kernel, stride,
/// padding, input size, groups)`.
pub const RESNET50_CONVS: &[ConvLayer] = &[
    ("conv1_7x7s2", 3, 64, 7, 2, 3, 224, 1),
    ("layer1_1x1_64_64", 64, 64, 1, 1, 0, 56, 1),
    ("layer1_3x3_64", 64, 64, 3, 1, 1, 56, 1),
    ("layer1_1x1_64_256", 64, 256, 1, 1, 0, 56, 1),
    ("layer1_1x1_256_64", 256, 64, 1, 1, 0, 56, 1),
    ("layer2_1x1_256_128", 256, 128, 1, 1, 0, 56, 1),
    ("layer2_3x3s2_128", 128, 128, 3, 2, 1, 56, 1),
    ("layer2_3x3_128", 128, 128, 3, 1, 1, 28, 1),
    ("layer2_1x1_128_512", 128, 512, 1, 1, 0, 28, 1),
    ("layer2_down_1x1s2_256_512", 256, 512, 1, 2, 0, 56, 1),
    ("layer2_1x1_512_128", 512, 128, 1, 1, 0, 28, 1),
    ("layer3_1x1_512_256", 512, 256, 1, 1, 0, 28, 1),
    ("layer3_3x3s2_256", 256, 256, 3, 2, 1, 28, 1),
    ("layer3_3x3_256", 256, 256, 3, 1, 1, 14, 1),
    ("layer3_1x1_256_1024", 256, 1024, 1, 1, 0, 14, 1),
    ("layer3_down_1x1s2_512_1024", 512, 1024, 1, 2, 0, 28, 1),
    ("layer3_1x1_1024_256", 1024, 256, 1, 1, 0, 14, 1),
    ("layer4_1x1_1024_512", 1024, 512, 1, 1, 0, 14, 1),
    ("layer4_3x3s2_512", 512, 512, 3, 2, 1, 14, 1),
    ("layer4_3x3_512", 512, 512, 3, 1, 1, 7, 1),
    ("layer4_1x1_512_2048", 512, 2048, 1, 1, 0, 7, 1),
    ("layer4_down_1x1s2_1024_2048", 1024, 2048, 1, 2, 0, 14, 1),
    ("layer4_1x1_2048_512", 2048, 512, 1, 1, 0, 7, 1),
];

/// Which route `resnet bench conv` runs each layer by (`--path`).
#[derive(Clone, Copy, Debug)]
pub enum ConvRoute {
    /// The plan's choice, NCHW.
    Auto,
    /// The plan's choice in the blocked layout (input and output already blocked, as
    /// inside a network).
    Blocked,
    /// The GEMM family: the GEMM route that fits the layer.
    Gemm,
    /// The direct kernel, in the form the ladder picks for the shape.
    Direct,
    /// One forward route, forced.
    Forced(Forward),
}

impl std::str::FromStr for ConvRoute {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "auto" => ConvRoute::Auto,
            "blocked" => ConvRoute::Blocked,
            // The route named `blocked` is forced by this name: `blocked` alone is the
            // ladder's choice in the blocked layout (Winograd for some 3x3 layers).
            "blocked-direct" => ConvRoute::Forced(Forward::Blocked),
            "gemm" => ConvRoute::Gemm,
            "direct" => ConvRoute::Direct,
            other => ConvRoute::Forced(other.parse().map_err(|_| {
                format!(
                    "unknown --path {other:?}: auto, blocked, blocked-direct, gemm, direct or a \
                     forward route ({})",
                    Forward::ALL.map(|r| r.to_string()).join(", ")
                )
            })?),
        })
    }
}

impl std::fmt::Display for ConvRoute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConvRoute::Auto => f.write_str("auto"),
            ConvRoute::Blocked => f.write_str("blocked"),
            ConvRoute::Gemm => f.write_str("gemm"),
            ConvRoute::Direct => f.write_str("direct"),
            ConvRoute::Forced(r) => write!(f, "{r}"),
        }
    }
}

impl ConvRoute {
    /// The plan of a layer with `w`'s shape, stride/padding `p`, for an input of
    /// `input` shape; `None` where the route cannot run the layer.
    fn plan(self, k: &Kernels, w: [usize; 4], p: Conv2d, input: [usize; 4]) -> Option<ConvPlan> {
        let plan = ConvPlan::new(k, w, p, Mode::Inference).ok()?;
        let candidates: Vec<Forward> = match self {
            ConvRoute::Auto => return Some(plan),
            ConvRoute::Blocked => return plan.in_layout(Layout::Blocked).ok(),
            ConvRoute::Forced(r) if r.layout() == Layout::Blocked => {
                let plan = plan.in_layout(Layout::Blocked).ok()?.force_forward(r);
                return plan.routes(input).is_ok().then_some(plan);
            }
            ConvRoute::Gemm => vec![
                Forward::GemmImage,
                Forward::GemmSubsampled,
                Forward::GemmIm2col,
            ],
            ConvRoute::Direct => {
                let [oh, ow] = p.output_size(input[2], input[3], w[2], w[3]).ok()?;
                let form = DirectForm::choose(
                    p.stride,
                    [input[2], input[3]],
                    [oh, ow],
                    p.padding,
                    k.lanes(),
                );
                vec![Forward::Direct(form)]
            }
            ConvRoute::Forced(r) => vec![r],
        };
        candidates
            .into_iter()
            .map(|r| plan.force_forward(r))
            .find(|plan| plan.routes(input).is_ok())
    }
}

/// Runs the convolution table: every ResNet-50 layer at each batch size, forward with
/// prepacked weights and a bias + ReLU epilogue (a folded conv + BN + ReLU), GFLOP/s
/// counted as the direct algorithm's `2 * N * O * OH * OW * I * kh * kw`, by the route
/// `route` names (a layer it cannot run prints `n/a`).
pub fn conv(
    k: &Kernels,
    threads: usize,
    batches: &[usize],
    route: ConvRoute,
    layers: &[ConvLayer],
    budget: Duration,
    json: bool,
) -> Result<(), Box<dyn std::error::Error>> {
    let peak = measured_peak(k, threads);
    if !json {
        crate::emit(&format!(
            "conv2d forward (conv + bias + ReLU, prepacked weights, --path {route}), {threads} threads, measured FMA peak {peak:.1} GFLOP/s",
        ))?;
        crate::emit(&format!(
            "{:<28} {:>5}  {:>9} {:>9}  {:>8}  {:>6}  {:<16} microkernel",
            "layer", "batch", "ms", "GFLOP/s", "% peak", "thr", "route"
        ))?;
    }
    for &batch in batches {
        for &(name, cin, cout, ks, stride, pad, size, groups) in layers {
            let x = Tensor::randn(&[batch, cin, size, size], 0.0, 1.0, 1)?;
            let cg = cin / groups;
            let w = Tensor::randn(&[cout, cg, ks, ks], 0.0, 0.05, 2)?;
            let bias = vec![0.01f32; cout];
            let p = Conv2d::new(stride, pad).with_groups(groups);
            let [oh, ow] = p.output_size(size, size, ks, ks)?;
            let input = [batch, cin, size, size];
            let Some(plan) = route.plan(k, [cout, cg, ks, ks], p, input) else {
                if !json {
                    crate::emit(&format!(
                        "{name:<28} {batch:>5}  n/a: --path {route} does not run this layer"
                    ))?;
                }
                continue;
            };
            let forward = plan.routes(input)?.forward;
            let packed = k.pack_conv(&plan, &w)?;
            // Timed on one of rayon's workers, as `InferenceModel` and the trainer run
            // their layers (`rayon::scope` moves the loop there): called from outside the
            // pool, every call would also pay for handing its tasks to the workers and
            // waking the caller, which no layer in a network does.
            let t = rayon::scope(|_| {
                if forward.layout() == Layout::Blocked {
                    let xb = k.to_blocked(&x)?;
                    let mut y = tensor::BlockedTensor::zeros(k, [batch, cout, oh, ow])?;
                    best_time(budget, || {
                        k.blocked_conv2d_into(
                            &xb,
                            &packed,
                            &[Epilogue::Bias(&bias), Epilogue::Relu],
                            &mut y,
                        )
                    })
                } else {
                    let mut y = Tensor::zeros(&[batch, cout, oh, ow])?;
                    let steps = [Epilogue::Bias(&bias), Epilogue::Relu];
                    best_time(budget, || k.conv2d_into(&x, &packed, &steps, &mut y))
                }
            })?;
            // Real multiply-adds: each output reads its group's inputs only.
            let flops = 2.0 * (batch * cout * oh * ow * cg * ks * ks) as f64;
            let gflops = flops / t.as_secs_f64() / 1e9;
            let pct = 100.0 * gflops / peak;
            let ms = t.as_secs_f64() * 1e3;
            let kernel = forward.microkernel(k);
            if json {
                crate::emit(
                    &serde_json::json!({
                        "bench": "conv", "name": name, "batch": batch, "m": cout,
                        "n": batch * oh * ow, "k": cg * ks * ks, "groups": groups, "impl": "ours",
                        "path": route.to_string(), "route": forward.to_string(),
                        "microkernel": kernel.to_string(), "threads": threads,
                        "ms": round(ms, 3), "gflops": round(gflops, 2), "peak_pct": round(pct, 1),
                    })
                    .to_string(),
                )?;
            } else {
                crate::emit(&format!(
                    "{name:<28} {batch:>5}  {ms:>9.3} {gflops:>9.1}  {pct:>7.1}%  {threads:>6}  {:<16} {kernel}",
                    forward.to_string()
                ))?;
            }
        }
    }
    Ok(())
}

/// Whole-network inference: `InferenceModel::forward` on a random batch, with random
/// weights (speed does not depend on the values). GFLOP/s counts `2 x` the multiply-adds
/// of the convolutions and the classifier.
#[allow(clippy::too_many_arguments)]
pub fn model(
    k: &Kernels,
    threads: usize,
    arch: resnet::Arch,
    batch: usize,
    output_stride: usize,
    options: resnet::InferenceOptions,
    budget: Duration,
    profile: bool,
    json: bool,
) -> Result<(), Box<dyn std::error::Error>> {
    let peak = measured_peak(k, threads);
    let (classes, size) = if arch.is_cifar() {
        (10, 32)
    } else {
        (1000, 224)
    };
    let mut net = resnet::ResNet::new(arch, classes, 1)?;
    if output_stride != 32 {
        net.set_output_stride(output_stride)?;
    }
    let macs = net.forward_macs(size, size)?;
    // Each profiled step's multiply-adds: the convolutions by name (the stem's together,
    // as its step, `conv1`), the classifier.
    let mut step_macs: Vec<(String, f64)> = Vec::new();
    if profile {
        for layer in net.conv_layers([batch, 3, size, size])? {
            let [n, o, oh, ow] = layer.output;
            let [_, i, kh, kw] = layer.conv.weight.dims4("bench model")?;
            let m = (n * o * oh * ow * i * kh * kw) as f64;
            let name = if layer.in_stem {
                "conv1".to_string()
            } else {
                layer.name
            };
            match step_macs.iter_mut().find(|(s, _)| *s == name) {
                Some((_, total)) => *total += m,
                None => step_macs.push((name, m)),
            }
        }
        step_macs.push(("fc".into(), (batch * net.fc_weight.len()) as f64));
    }
    // What the model spends on Winograd's transformed weights beyond the direct
    // kernel's, for the options' batch.
    let spent = resnet::InferenceModel::winograd_memory_spent(k, &net, options).unwrap_or(0);
    let spent_mb = spent as f64 / 1e6;
    // Folded block by block, freeing the unfused weights as it goes: only the folded,
    // packed model stays in memory, as in an embedding application.
    let fast = resnet::InferenceModel::with_options(net, *k, options)?;
    let x = Tensor::randn(&[batch, 3, size, size], 0.0, 1.0, 2)?;
    let t = best_time(budget, || fast.forward(&x))?;
    let ms = t.as_secs_f64() * 1e3;
    let images_per_s = batch as f64 / t.as_secs_f64();
    let gflops = 2.0 * macs * batch as f64 / t.as_secs_f64() / 1e9;
    let pct = 100.0 * gflops / peak;
    if json {
        crate::emit(
            &serde_json::json!({
                "bench": "model", "arch": arch.to_string(), "batch": batch, "threads": threads,
                "output_stride": output_stride, "ms": round(ms, 3), "images_per_s": round(images_per_s, 2),
                "gflops": round(gflops, 2), "peak_pct": round(pct, 1),
                "winograd_memory_mb": round(spent_mb, 1),
            })
            .to_string(),
        )?;
    } else {
        crate::emit(&format!(
            "{arch}{} inference, batch {batch}, {threads} threads, {size}x{size}: {ms:.2} ms/batch, {images_per_s:.1} images/s, {gflops:.1} GFLOP/s ({pct:.1}% of the measured peak {peak:.1}){}",
            if output_stride == 32 {
                String::new()
            } else {
                format!(" (output stride {output_stride})")
            },
            if spent > 0 {
                format!(", Winograd weights spend {spent_mb:.1} MB more than direct ones")
            } else {
                String::new()
            }
        ))?;
    }
    if profile {
        let mut passes = Vec::new();
        let start = Instant::now();
        while passes.len() < 5 || start.elapsed() < budget {
            passes.push(fast.forward_profiled(&x)?.1);
        }
        print_model_profile(&passes, &step_macs, ms, peak, json)?;
    }
    Ok(())
}

/// `bench model --profile`'s table: each step's median time over the profiled `passes`
/// (the same steps every pass), its share of their sum, and for the convolutions and
/// the classifier (`macs`, by step name) their GFLOP/s and % of the FMA `peak`; then the
/// sum of the steps against `best_ms`, the best unprofiled pass.
fn print_model_profile(
    passes: &[Vec<(String, Duration)>],
    macs: &[(String, f64)],
    best_ms: f64,
    peak: f64,
    json: bool,
) -> Result<(), Box<dyn std::error::Error>> {
    let Some(first) = passes.first() else {
        return Ok(());
    };
    let rows: Vec<(&str, f64, f64)> = first
        .iter()
        .enumerate()
        .map(|(i, (name, _))| {
            let ms = median_ms(
                passes
                    .iter()
                    .filter_map(|p| p.get(i))
                    .map(|s| s.1)
                    .collect(),
            );
            let m = macs.iter().find(|(s, _)| s == name).map_or(0.0, |s| s.1);
            (name.as_str(), ms, m)
        })
        .collect();
    let total: f64 = rows.iter().map(|r| r.1).sum();
    let gflops = |m: f64, ms: f64| 2.0 * m / (ms * 1e-3) / 1e9;
    if json {
        for &(name, ms, m) in &rows {
            crate::emit(
                &serde_json::json!({
                    "bench": "model_profile", "step": name, "ms": round(ms, 4),
                    "gflops": round(gflops(m, ms), 1),
                    "peak_pct": round(100.0 * gflops(m, ms) / peak, 1),
                })
                .to_string(),
            )?;
        }
        crate::emit(
            &serde_json::json!({
                "bench": "model_profile_total", "steps_ms": round(total, 3),
                "best_ms": round(best_ms, 3), "passes": passes.len(),
            })
            .to_string(),
        )?;
        return Ok(());
    }
    crate::emit(&format!(
        "profile: median of {} passes; the steps sum to {total:.2} ms (best unprofiled pass \
         {best_ms:.2}); %pk: of the FMA peak {peak:.0} GFLOP/s",
        passes.len()
    ))?;
    crate::emit(&format!(
        "{:<24} {:>9} {:>7} {:>9} {:>6}",
        "step", "ms", "share", "GFLOP/s", "%pk"
    ))?;
    for &(name, ms, m) in &rows {
        let (rate, pct) = match m > 0.0 && ms > 0.0 {
            true => (
                format!("{:.1}", gflops(m, ms)),
                format!("{:.0}", 100.0 * gflops(m, ms) / peak),
            ),
            false => (String::new(), String::new()),
        };
        crate::emit(&format!(
            "{name:<24} {ms:>9.3} {:>6.1}% {rate:>9} {pct:>6}",
            100.0 * ms / total.max(f64::MIN_POSITIVE)
        ))?;
    }
    Ok(())
}

/// The process's peak resident memory in MB (Linux's `VmHWM`), or `None` elsewhere.
pub fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// One SGD training step of `arch` on a random batch (random labels): the time of the
/// whole step (forward on the tape, loss, backward, running statistics, update), the
/// activations the tape keeps for the backward pass, and the process's peak RSS.
pub fn train(
    k: &Kernels,
    threads: usize,
    arch: resnet::Arch,
    batch: usize,
    budget: Duration,
    profile: bool,
    json: bool,
) -> Result<(), Box<dyn std::error::Error>> {
    use autograd::{Sgd, SgdConfig, Tape};
    use resnet::{train_step, Freeze};
    let (classes, size) = if arch.is_cifar() {
        (10, 32)
    } else {
        (1000, 224)
    };
    let mut net = resnet::ResNet::new(arch, classes, 1)?;
    let config = SgdConfig {
        lr: 0.1,
        momentum: 0.9,
        weight_decay: 5e-4,
        ..Default::default()
    };
    let mut sgd = Sgd::new(config, net.parameters_mut().len())?;
    let x = Tensor::randn(&[batch, 3, size, size], 0.0, 1.0, 2)?;
    let targets: Vec<usize> = (0..batch).map(|i| (i * 7) % classes).collect();
    // Every step in a workspace that holds a step's buffers for the next, as the
    // trainer's does.
    let ws = tensor::Workspace::with_limit(resnet::TRAINING_WORKSPACE_LIMIT);
    let activations_mb = ws.run(|| -> Result<f64, Box<dyn std::error::Error>> {
        let mut tape = Tape::new(*k);
        net.forward_train(&mut tape, x.clone(), Freeze::None)?;
        Ok(tape.owned_bytes() as f64 / (1 << 20) as f64)
    })?;
    let t = ws.run(|| {
        best_time(budget, || {
            train_step(
                &mut net,
                &mut sgd,
                *k,
                x.clone(),
                &targets,
                Freeze::None,
                0.0,
            )
        })
    })?;
    let ms = t.as_secs_f64() * 1e3;
    let images_per_s = batch as f64 / t.as_secs_f64();
    let rss = peak_rss_mb();
    if json {
        crate::emit(
            &serde_json::json!({
                "bench": "train", "arch": arch.to_string(), "batch": batch, "threads": threads,
                "ms_per_step": round(ms, 2), "images_per_s": round(images_per_s, 1),
                "peak_rss_mb": rss.map(|r| round(r, 1)),
                "activations_mb": round(activations_mb, 1),
            })
            .to_string(),
        )?;
    } else {
        let rss_text = rss.map_or("unknown".to_string(), |r| format!("{r:.0} MB"));
        crate::emit(&format!(
            "{arch} training step, batch {batch}, {threads} threads, {size}x{size}: {ms:.1} ms/step, {images_per_s:.0} images/s; activations kept {activations_mb:.0} MB, peak RSS {rss_text}"
        ))?;
    }
    if profile {
        let mut steps = Vec::new();
        let start = Instant::now();
        while steps.len() < 3 || start.elapsed() < budget {
            steps.push(
                ws.run(|| resnet::profile_step(&mut net, &mut sgd, *k, x.clone(), &targets))?,
            );
        }
        print_train_profile(&steps, measured_peak(k, threads), json)?;
    }
    Ok(())
}

/// The median of `values` in ms.
fn median_ms(mut values: Vec<Duration>) -> f64 {
    values.sort();
    values
        .get(values.len() / 2)
        .map_or(0.0, |d| d.as_secs_f64() * 1e3)
}

/// `bench train --profile`'s table: each op's median forward and backward time over the
/// profiled steps (the same graph every step), in tape order, then the totals by kind;
/// convolutions and linear layers also as a % of the FMA `peak` (GFLOP/s), counting
/// the forward's multiply-adds twice for the backward (`dX` and `dW`), and a direct
/// convolution's multiply-adds for Winograd (its effective rate, which may pass 100%).
fn print_train_profile(
    steps: &[resnet::StepProfile],
    peak: f64,
    json: bool,
) -> Result<(), Box<dyn std::error::Error>> {
    let Some(first) = steps.first() else {
        return Ok(());
    };
    let total = median_ms(steps.iter().map(|s| s.total).collect());
    let update = median_ms(steps.iter().map(|s| s.update).collect());
    let column = |i: usize, f: fn(&autograd::OpTime) -> Duration| {
        median_ms(
            steps
                .iter()
                .filter_map(|s| s.ops.get(i))
                .map(|o| f(&o.time))
                .collect(),
        )
    };
    // % of the peak for `macs` multiply-adds in `ms`, blank when the op has none.
    let pct = |macs: u64, ms: f64| match macs > 0 && ms > 0.0 {
        true => format!(
            "{:.0}",
            100.0 * 2.0 * macs as f64 / (ms * 1e-3) / 1e9 / peak
        ),
        false => String::new(),
    };
    // (kind of op, forward ms, backward ms, forward multiply-adds), summed over the ops of
    // that kind.
    let mut kinds: Vec<(String, f64, f64, u64)> = Vec::new();
    if !json {
        crate::emit(&format!(
            "profile: median of {} steps, {total:.1} ms a step (the profiled step's own total); %pk: of the FMA peak {peak:.0} GFLOP/s",
            steps.len()
        ))?;
        crate::emit(&format!(
            "{:<30} {:>8} {:>8} {:>5} {:>6} {:>6}  {:<20} op",
            "layer", "fwd ms", "bwd ms", "step%", "fwd%pk", "bwd%pk", "shape"
        ))?;
    }
    for (i, row) in first.ops.iter().enumerate() {
        let (fwd, bwd) = (column(i, |t| t.forward), column(i, |t| t.backward));
        let op = &row.time.op;
        // The kind: the description up to its routes (`conv2d 3x3 s1: ...` -> `conv2d
        // 3x3 s1`, with the forward route), without the fusions' wording.
        let kind = match op.split_once(": ") {
            Some((head, routes)) => {
                let forward = routes.split(" / ").next().unwrap_or("");
                format!("{} ({forward})", head.replace(" of a normalised input", ""))
            }
            None => op
                .replace(" of a normalised input", "")
                .replace(" (deferred)", ""),
        };
        let macs = row.time.macs;
        match kinds.iter_mut().find(|(k, ..)| *k == kind) {
            Some(k) => {
                k.1 += fwd;
                k.2 += bwd;
                k.3 += macs;
            }
            None => kinds.push((kind, fwd, bwd, macs)),
        }
        if json {
            crate::emit(
                &serde_json::json!({
                    "bench": "train_profile", "layer": row.layer, "op": op,
                    "shape": row.time.shape, "forward_ms": round(fwd, 3),
                    "backward_ms": round(bwd, 3), "macs": macs,
                })
                .to_string(),
            )?;
        } else {
            crate::emit(&format!(
                "{:<30} {fwd:>8.2} {bwd:>8.2} {:>5.1} {:>6} {:>6}  {:<20} {op}",
                row.layer,
                100.0 * (fwd + bwd) / total,
                pct(macs, fwd),
                pct(2 * macs, bwd),
                format!("{:?}", row.time.shape),
            ))?;
        }
    }
    kinds.sort_by(|a, b| (b.1 + b.2).total_cmp(&(a.1 + a.2)));
    let (fwd_sum, bwd_sum) = kinds.iter().fold((0.0, 0.0), |a, k| (a.0 + k.1, a.1 + k.2));
    let rest = total - fwd_sum - bwd_sum - update;
    if json {
        for (kind, fwd, bwd, macs) in &kinds {
            crate::emit(
                &serde_json::json!({
                    "bench": "train_profile_kind", "kind": kind,
                    "forward_ms": round(*fwd, 3), "backward_ms": round(*bwd, 3), "macs": macs,
                })
                .to_string(),
            )?;
        }
        crate::emit(
            &serde_json::json!({
                "bench": "train_profile_total", "step_ms": round(total, 2),
                "forward_ms": round(fwd_sum, 2), "backward_ms": round(bwd_sum, 2),
                "update_ms": round(update, 2), "rest_ms": round(rest, 2),
            })
            .to_string(),
        )?;
        return Ok(());
    }
    crate::emit("\nby kind of op (forward route for convolutions):")?;
    crate::emit(&format!(
        "{:<44} {:>9} {:>9} {:>6} {:>6} {:>6}",
        "kind", "fwd ms", "bwd ms", "step%", "fwd%pk", "bwd%pk"
    ))?;
    for (kind, fwd, bwd, macs) in &kinds {
        crate::emit(&format!(
            "{kind:<44} {fwd:>9.2} {bwd:>9.2} {:>6.1} {:>6} {:>6}",
            100.0 * (fwd + bwd) / total,
            pct(*macs, *fwd),
            pct(2 * macs, *bwd),
        ))?;
    }
    crate::emit(&format!(
        "{:<44} {fwd_sum:>9.2} {bwd_sum:>9.2} {:>6.1}",
        "all ops",
        100.0 * (fwd_sum + bwd_sum) / total
    ))?;
    crate::emit(&format!(
        "{:<44} {update:>9.2} {:>9} {:>6.1}",
        "update (running statistics, SGD)",
        "",
        100.0 * update / total
    ))?;
    crate::emit(&format!(
        "{:<44} {rest:>9.2} {:>9} {:>6.1}",
        "the rest (freeing the step's memory, medians' skew)",
        "",
        100.0 * rest / total
    ))?;
    Ok(())
}

/// `v` rounded to `digits` decimals, for JSON output as tidy as the text tables (a
/// non-finite value, which JSON cannot hold, becomes `null`).
fn round(v: f64, digits: i32) -> Option<f64> {
    let scale = 10f64.powi(digits);
    v.is_finite().then(|| (v * scale).round() / scale)
}
