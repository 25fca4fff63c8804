//! The ladder's choices that depend on the image a layer is planned for
//! (`ConvPlan::with_planned_input`): Winograd F(4x4, 3x3) for 3x3 stride-1 layers wider
//! than `WINOGRAD_MAX_CHANNELS` only where the planned plane is large enough to pay for
//! the transformed weights; and those that depend on the batch it meets: `dW` by one
//! GEMM over each thread's images only while their columns are few.

use tensor::{Conv2d, ConvPlan, Forward, Kernels, Layout, Mode, WeightGrad};

/// The forward route the ladder picks for a 3x3 stride-1 "same" layer of `c` channels in
/// the blocked layout, planned for `planned` (or not), run on a `side x side` input.
fn route(c: usize, planned: Option<usize>, side: usize) -> Forward {
    let k = Kernels::active().unwrap();
    let mut plan = ConvPlan::new(&k, [c, c, 3, 3], Conv2d::new(1, 1), Mode::Inference)
        .and_then(|p| p.in_layout(Layout::Blocked))
        .unwrap();
    if let Some(s) = planned {
        plan = plan.with_planned_input(s, s);
    }
    assert_eq!(plan.planned_input(), planned.map(|s| [s, s]));
    plan.routes([1, c, side, side]).unwrap().forward
}

#[test]
fn wide_layers_take_winograd_only_where_planned_for_a_large_plane() {
    // Up to 128 channels: Winograd whatever the plan knows.
    assert_eq!(route(128, None, 28), Forward::BlockedWinograd);
    assert_eq!(route(128, Some(7), 7), Forward::BlockedWinograd);
    // 256 channels: only planned for at least 28 x 28 (Wide ResNet-50-2's layer2), and
    // then for any input it meets (the weights are packed for the route); at 14 x 14
    // with the weights transformed per call (no memory beyond the direct kernel's).
    assert_eq!(route(256, None, 28), Forward::Blocked);
    assert_eq!(route(256, Some(7), 7), Forward::Blocked);
    assert_eq!(route(256, Some(14), 14), Forward::BlockedWinogradOnTheFly);
    assert_eq!(route(256, Some(28), 28), Forward::BlockedWinograd);
    assert_eq!(route(256, Some(56), 9), Forward::BlockedWinograd);
    // Wider than 256: never by the ladder.
    assert_eq!(route(512, Some(56), 56), Forward::Blocked);
    // Winograd off wins over the plan.
    let k = Kernels::active().unwrap();
    let off = ConvPlan::new(&k, [256, 256, 3, 3], Conv2d::new(1, 1), Mode::Inference)
        .and_then(|p| p.in_layout(Layout::Blocked))
        .unwrap()
        .with_planned_input(28, 28)
        .with_winograd(false);
    assert_eq!(
        off.routes([1, 256, 28, 28]).unwrap().forward,
        Forward::Blocked
    );
}

/// [`route`] with the plan allowed to spend memory for speed on Winograd.
fn route_spending(c: usize, planned: usize, side: usize) -> Forward {
    let k = Kernels::active().unwrap();
    let plan = ConvPlan::new(&k, [c, c, 3, 3], Conv2d::new(1, 1), Mode::Inference)
        .and_then(|p| p.in_layout(Layout::Blocked))
        .unwrap()
        .with_planned_input(planned, planned)
        .with_winograd_memory(true);
    assert!(plan.winograd_memory());
    plan.routes([1, c, side, side]).unwrap().forward
}

#[test]
fn spending_memory_keeps_winograd_weights_for_wide_layers_down_to_14_x_14() {
    // 256 channels at 14 x 14: the transformed weights kept only when the plan may
    // spend the memory, else transformed per call.
    assert_eq!(route(256, Some(14), 14), Forward::BlockedWinogradOnTheFly);
    assert_eq!(route_spending(256, 14, 14), Forward::BlockedWinograd);
    // Not below 14 x 14, and never wider than 256 channels.
    assert_eq!(route_spending(256, 7, 7), Forward::Blocked);
    assert_eq!(route_spending(512, 14, 14), Forward::Blocked);
    // Up to 128 channels it changes nothing.
    assert_eq!(route_spending(128, 7, 7), Forward::BlockedWinograd);
}

/// The `dW` route the ladder picks for a `c -> o` layer with a `k x k` kernel (stride
/// `s`, "same" padding) on `n` images of `side x side`, run in a pool of `threads`.
fn dw_route(threads: usize, [o, c, k, s]: [usize; 4], n: usize, side: usize) -> WeightGrad {
    let kern = Kernels::active().unwrap();
    let plan = ConvPlan::new(&kern, [o, c, k, k], Conv2d::new(s, k / 2), Mode::Training).unwrap();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    pool.install(|| {
        plan.routes([n, c, side, side])
            .unwrap()
            .weight_grad
            .unwrap()
    })
}

#[test]
fn dw_by_one_gemm_only_for_small_planes_of_wide_layers_and_few_images_a_thread() {
    let gemm = WeightGrad::Gemm;
    // ResNet-50's 7 x 7 layers at batch 8 on 2 threads: 4 images of 49 pixels a group.
    assert_eq!(dw_route(2, [512, 2048, 1, 1], 8, 7), gemm);
    assert_eq!(dw_route(2, [2048, 1024, 1, 2], 8, 14), gemm);
    assert_eq!(dw_route(2, [512, 512, 3, 1], 8, 7), gemm);
    assert_eq!(dw_route(2, [512, 512, 3, 2], 8, 14), gemm);
    // Batch 32 on 2 threads (784 columns a group): the outer-product kernel; on 16
    // threads (98 columns) the GEMM again.
    assert_ne!(dw_route(2, [512, 2048, 1, 1], 32, 7), gemm);
    assert_eq!(dw_route(16, [512, 2048, 1, 1], 32, 7), gemm);
    // Fewer images than threads: one group of them all.
    assert_eq!(dw_route(16, [512, 512, 3, 1], 8, 7), gemm);
    assert_ne!(dw_route(16, [512, 512, 3, 1], 12, 7), gemm);
    // Planes of 14 x 14, or fewer than 512 outputs: never.
    assert_ne!(dw_route(2, [512, 1024, 1, 1], 2, 14), gemm);
    assert_ne!(dw_route(2, [256, 256, 3, 1], 8, 7), gemm);
    assert_ne!(dw_route(2, [64, 64, 3, 1], 128, 8), gemm);
}

#[test]
fn dw_by_winograd_for_3x3_layers_of_32_to_256_channels_with_enough_tiles() {
    let winograd = WeightGrad::Winograd;
    // ResNet-20 at batch 128: its 64- and 32-channel stride-1 layers, not its 16-channel
    // ones (products 16 long) nor its strided ones.
    assert_eq!(dw_route(2, [64, 64, 3, 1], 128, 8), winograd);
    assert_eq!(dw_route(2, [32, 32, 3, 1], 128, 16), winograd);
    assert_ne!(dw_route(2, [16, 16, 3, 1], 128, 32), winograd);
    assert_ne!(dw_route(2, [64, 32, 3, 2], 128, 16), winograd);
    // ResNet-18/50 at 224 x 224: 64 to 256 channels, not 512.
    assert_eq!(dw_route(2, [64, 64, 3, 1], 8, 56), winograd);
    assert_eq!(dw_route(2, [256, 256, 3, 1], 8, 14), winograd);
    assert_ne!(dw_route(2, [512, 512, 3, 1], 8, 7), winograd);
    // A ResNeXt-50 group of its last stage (32 channels at 7 x 7): 32 tiles at batch 8
    // are too few for the 36 products (`WINOGRAD_DW_MIN_PRODUCT`); 128 at batch 32 are
    // enough.
    assert_ne!(dw_route(2, [32, 32, 3, 1], 8, 7), winograd);
    assert_eq!(dw_route(2, [32, 32, 3, 1], 32, 7), winograd);
}
