//! The ladder's choices that depend on the image a layer is planned for
//! (`ConvPlan::with_planned_input`): Winograd F(4x4, 3x3) for 3x3 stride-1 layers wider
//! than `WINOGRAD_MAX_CHANNELS` only where the planned plane is large enough to pay for
//! the transformed weights.

use tensor::{Conv2d, ConvPlan, Forward, Kernels, Layout, Mode};

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
    // then for any input it meets (the weights are packed for the route).
    assert_eq!(route(256, None, 28), Forward::Blocked);
    assert_eq!(route(256, Some(14), 14), Forward::Blocked);
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
