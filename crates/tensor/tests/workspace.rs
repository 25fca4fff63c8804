//! The workspace: dropped large tensors are reused by the workspace they were made in,
//! their stale contents never show, two workspaces never share, the kernels' scratch is
//! held (and bounded, and released) by the workspace they run in.

use tensor::workspace::{self, Workspace};
use tensor::{Conv2d, ConvPlan, Kernels, Layout, Mode, Tensor};

#[test]
fn dropped_buffers_are_reused_within_the_limit() {
    let ws = Workspace::with_limit(64 << 20);
    ws.run(|| reuse_within_the_limit(&ws));
}

fn reuse_within_the_limit(ws: &Workspace) {
    assert_eq!(ws.held_bytes(), 0);

    // Small tensors are left to the allocator.
    drop(Tensor::full(&[workspace::MIN_FLOATS - 1], 1.0).unwrap());
    assert_eq!(ws.held_bytes(), 0);

    // A large one comes back for the next tensor of its size, with the new contents.
    let n = 100_000;
    let a = Tensor::full(&[n], 7.0).unwrap();
    let ptr = a.data().as_ptr();
    drop(a);
    assert_eq!(ws.held_bytes(), n * 4);
    let z = Tensor::zeros(&[10, n / 10]).unwrap();
    assert_eq!(z.data().as_ptr(), ptr, "the pooled buffer was not reused");
    assert!(z.data().iter().all(|&v| v == 0.0), "stale values leaked");
    assert_eq!(ws.held_bytes(), 0);

    // Up to twice the size is reused (shortened); past that it is not.
    drop(z);
    let half = Tensor::full(&[n / 2], 3.0).unwrap();
    assert_eq!(half.data().as_ptr(), ptr);
    assert_eq!(half.len(), n / 2);
    assert!(half.data().iter().all(|&v| v == 3.0));
    drop(half);
    let smaller = Tensor::full(&[n / 2 - 1], 1.0).unwrap();
    assert_ne!(smaller.data().as_ptr(), ptr);
    drop(smaller);
    // A shortened buffer grows back within its capacity.
    let full = Tensor::full(&[n], 2.0).unwrap();
    assert_eq!(full.data().as_ptr(), ptr);
    assert!(full.data().iter().all(|&v| v == 2.0));

    // Clones take pooled buffers too and copy every element.
    let other = Tensor::randn(&[n], 0.0, 1.0, 5).unwrap();
    let other_ptr = other.data().as_ptr();
    drop(other);
    let c = full.clone();
    assert_eq!(c.data().as_ptr(), other_ptr);
    assert_eq!(c, full);

    // The limit: past it, buffers go back to the allocator; lowering it frees.
    ws.release();
    ws.set_limit(n * 4);
    drop(c);
    drop(full);
    assert_eq!(ws.held_bytes(), n * 4);
    ws.set_limit(0);
    assert_eq!(ws.held_bytes(), 0);
    drop(Tensor::zeros(&[n]).unwrap());
    assert_eq!(ws.held_bytes(), 0);

    // `into_vec` hands the buffer to the caller, not to the pool.
    ws.set_limit(workspace::DEFAULT_LIMIT);
    let v = Tensor::full(&[n], 1.0).unwrap().into_vec();
    assert_eq!(v.len(), n);
    assert_eq!(ws.held_bytes(), 0);
    let r = Tensor::from_vec(&[n], v)
        .unwrap()
        .reshape(&[2, n / 2])
        .unwrap();
    assert_eq!(ws.held_bytes(), 0);
    drop(r);
    assert_eq!(ws.held_bytes(), n * 4);
    ws.release();
    assert_eq!(ws.held_bytes(), 0);

    // Bypassed: drops free, and nothing pooled is handed out.
    drop(Tensor::zeros(&[n]).unwrap());
    let kept = ws.held_bytes();
    assert_eq!(kept, n * 4);
    workspace::bypass(|| {
        let t = Tensor::zeros(&[n]).unwrap();
        assert_eq!(ws.held_bytes(), kept, "a bypassed allocation took a buffer");
        drop(t);
        assert_eq!(ws.held_bytes(), kept, "a bypassed drop kept its buffer");
    });
    drop(Tensor::zeros(&[n]).unwrap());
    assert_eq!(ws.held_bytes(), kept);

    // A buffer no recent request could use is not kept: a tensor made from a Vec of a
    // size nobody asked for (a decoded photo, a data loader's batch).
    ws.release();
    drop(Tensor::from_vec(&[7 * n], vec![0.5; 7 * n]).unwrap());
    assert_eq!(
        ws.held_bytes(),
        0,
        "a buffer of an unrequested size was kept"
    );

    // A buffer nobody takes is freed after MAX_AGE pool operations; one that is taken
    // and given back keeps circulating.
    drop(Tensor::zeros(&[3 * n]).unwrap()); // never asked for again
    for _ in 0..workspace::MAX_AGE {
        drop(Tensor::zeros(&[n]).unwrap()); // a take and a give per round
    }
    assert_eq!(ws.held_bytes(), n * 4, "the stale buffer is still held");

    // Threads taking and giving at once never share a buffer: each fills its tensor
    // with its own value and finds only that value there.
    let sizes = [n, n + 1, 2 * n, 3 * n / 2];
    std::thread::scope(|scope| {
        for t in 0..4usize {
            scope.spawn(move || {
                ws.run(|| {
                    for i in 0..100 {
                        let value = (t * 1000 + i) as f32;
                        let a = Tensor::full(&[sizes[(t + i) % 4]], value).unwrap();
                        let b = a.clone();
                        assert!(a.data().iter().chain(b.data()).all(|&v| v == value));
                    }
                })
            });
        }
    });
    assert!(ws.held_bytes() <= ws.limit());
}

#[test]
fn tensors_return_to_the_workspace_they_were_made_in() {
    let (a, b) = (Workspace::new(), Workspace::new());
    let n = 100_000;
    let t = a.run(|| Tensor::zeros(&[n]).unwrap());
    // Dropped while `b` is current, it still goes back to `a`.
    b.run(|| drop(t));
    assert_eq!((a.held_bytes(), b.held_bytes()), (n * 4, 0));
    // `b` does not hand out `a`'s buffer.
    let u = b.run(|| Tensor::zeros(&[n]).unwrap());
    assert_eq!(a.held_bytes(), n * 4, "a tensor of b took a's buffer");
    drop(u);
    assert_eq!(b.held_bytes(), n * 4);
    // A clone handle is the same workspace; `release` frees it for every handle.
    let a2 = a.clone();
    assert!(a2.same(&a) && !a2.same(&b));
    a2.release();
    assert_eq!(a.held_bytes(), 0);
    // A tensor outlives its workspace: dropped after it, it frees its buffer.
    let kept = {
        let gone = Workspace::new();
        gone.run(|| Tensor::zeros(&[n]).unwrap())
    };
    drop(kept);
    // Bypassed, a new tensor belongs to no workspace.
    let v = a.run(|| workspace::bypass(|| Tensor::zeros(&[n]).unwrap()));
    drop(v);
    assert_eq!(a.held_bytes(), 0);
}

/// A convolution whose routes use scratch (the padded image of the direct kernel, the
/// GEMM's packed B), in both layouts' plans.
fn conv_case(k: &Kernels) -> (Tensor, tensor::ConvWeights) {
    let x = Tensor::randn(&[2, 16, 24, 24], 0.0, 1.0, 1).unwrap();
    let w = Tensor::randn(&[32, 16, 3, 3], 0.0, 0.1, 2).unwrap();
    let plan = ConvPlan::new(k, [32, 16, 3, 3], Conv2d::new(1, 1), Mode::Inference)
        .unwrap()
        .in_layout(Layout::Nchw)
        .unwrap();
    let weights = k.pack_conv(&plan, &w).unwrap();
    (x, weights)
}

#[test]
fn kernels_take_their_scratch_from_the_workspace_they_run_in() {
    // Scratch is kept per worker thread, and which workers take a batch's images depends on
    // scheduling: one worker makes the amount the same from call to call.
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    let k = Kernels::active().unwrap();
    let (x, w) = conv_case(&k);
    let (ws, other) = (Workspace::new(), Workspace::new());
    let y = pool.install(|| ws.run(|| k.conv2d(&x, &w, &[]).unwrap()));
    assert!(ws.scratch_bytes() > 0, "the convolution parked no scratch");
    assert_eq!(other.held_bytes(), 0);
    // Again: the same scratch, no more.
    let held = ws.scratch_bytes();
    let again = pool.install(|| ws.run(|| k.conv2d(&x, &w, &[]).unwrap()));
    assert_eq!(again, y);
    assert_eq!(ws.scratch_bytes(), held, "a second call grew the scratch");
    ws.release();
    assert_eq!(ws.held_bytes(), 0);

    // A workspace of limit 0 keeps nothing and computes the same result.
    let none = Workspace::with_limit(0);
    let bounded = none.run(|| k.conv2d(&x, &w, &[]).unwrap());
    assert_eq!(bounded, y);
    assert_eq!(none.held_bytes(), 0);
    // A limit below the scratch it needs: nothing parked past the limit.
    let small = Workspace::with_limit(held / 2);
    let y2 = small.run(|| k.conv2d(&x, &w, &[]).unwrap());
    assert_eq!(y2, y);
    assert!(small.held_bytes() <= held / 2);
    // Lowering the limit frees scratch too.
    let ws = Workspace::new();
    ws.run(|| k.conv2d(&x, &w, &[]).unwrap());
    ws.set_limit(0);
    assert_eq!(ws.held_bytes(), 0);
}

#[test]
fn the_scratch_of_rayon_workers_goes_to_the_callers_workspace() {
    // A batch that splits one image per thread runs each image's convolution on a rayon
    // worker: their scratch is parked in the workspace the caller ran in.
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    let k = Kernels::active().unwrap();
    let (x, w) = conv_case(&k);
    let ws = Workspace::new();
    let global_before = Workspace::global().scratch_bytes();
    pool.install(|| ws.run(|| k.conv2d(&x, &w, &[]).unwrap()));
    assert!(ws.scratch_bytes() > 0);
    assert_eq!(
        Workspace::global().scratch_bytes(),
        global_before,
        "a worker's scratch went to the global workspace"
    );
}

/// A convolution's backward borrows its large temporaries (each thread's partial `dW`,
/// `W^T` packed, the column matrices, the weight gradient's scratch) from the workspace
/// it runs in: a second call gets them back holding the first call's values and must
/// give the same gradients bit for bit, as must a workspace of limit 0, which keeps
/// nothing. Three cases: one whose `dW` is a GEMM over each thread's images and whose
/// `dX` goes through col2im (512 outputs at 7 x 7), one on the outer-product kernel, and
/// the same layer by Winograd (its blocked copies, transforms and summed products).
#[test]
fn backward_temporaries_are_lent_by_the_workspace() {
    use tensor::{ConvBackward, Taps, WeightGrad};
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    let k = Kernels::active().unwrap();
    for (n, c, o, hw, dw_route) in [
        (4, 128, 512, 7, WeightGrad::Gemm),
        (4, 64, 64, 16, WeightGrad::OuterProduct(Taps::PhasePlanes)),
        (4, 64, 64, 16, WeightGrad::Winograd),
    ] {
        let x = Tensor::randn(&[n, c, hw, hw], 0.0, 1.0, 1).unwrap();
        let w = Tensor::randn(&[o, c, 3, 3], 0.0, 0.1, 2).unwrap();
        let gy = Tensor::randn(&[n, o, hw, hw], 0.0, 1.0, 3).unwrap();
        let plan = ConvPlan::new(&k, [o, c, 3, 3], Conv2d::new(1, 1), Mode::Training)
            .unwrap()
            .force_weight_grad(dw_route);
        let grads = |ws: &Workspace| {
            pool.install(|| {
                ws.run(|| {
                    let g = k
                        .conv2d_backward(&x, &w, &gy, &plan, ConvBackward::new(true, true))
                        .unwrap();
                    (g.dx.unwrap(), g.dw.unwrap())
                })
            })
        };
        let ws = Workspace::new();
        let first = grads(&ws);
        assert!(
            ws.held_bytes() > 0,
            "{dw_route:?}: the backward left nothing to reuse"
        );
        for _ in 0..2 {
            assert_eq!(
                grads(&ws),
                first,
                "{dw_route:?}: a reused buffer changed the result"
            );
        }
        let none = Workspace::with_limit(0);
        assert_eq!(grads(&none), first, "{dw_route:?}: limit 0");
        assert_eq!(none.held_bytes(), 0);
    }
}
