//! Learning-rate schedules: the rate as a function of the epoch (or step) count `t`,
//! matching PyTorch's `StepLR`, `MultiStepLR`, `CosineAnnealingLR` (for `t <= t_max`;
//! past it this one stays at `eta_min`, where PyTorch's closed form climbs back up the
//! cosine) and a linear warm-up (`LinearLR` from `start_factor` to 1) chained before
//! any of them.

/// A schedule of the learning rate over `t = 0, 1, 2, ...` (epochs or steps, as the
/// trainer counts them).
#[derive(Debug, Clone, PartialEq)]
pub enum Schedule {
    /// The base rate throughout.
    Constant,
    /// `base * gamma^(t / step_size)` (integer division; a `step_size` of 0 counts as
    /// 1, where PyTorch would refuse it).
    Step {
        /// Epochs or steps between decays (0 counts as 1).
        step_size: usize,
        /// Factor the rate is multiplied by at each decay.
        gamma: f32,
    },
    /// `base * gamma^(number of milestones <= t)`.
    MultiStep {
        /// The `t`s from which the rate is multiplied by `gamma` once more, in any order
        /// (one listed twice counts twice).
        milestones: Vec<usize>,
        /// Factor the rate is multiplied by at each milestone.
        gamma: f32,
    },
    /// `eta_min + (base - eta_min) (1 + cos(pi t / t_max)) / 2`, held at `eta_min`
    /// after `t_max`.
    Cosine {
        /// Length of the decay (half a cosine period) in epochs or steps; 0 gives
        /// `eta_min` throughout.
        t_max: usize,
        /// The lowest rate, reached at `t_max` and held after it.
        eta_min: f32,
    },
    /// A linear ramp from `base * start_factor` at `t = 0` to `base` at `t = steps`,
    /// then `then` with its clock started at the end of the ramp.
    Warmup {
        /// Length of the ramp in epochs or steps (0: `then` from the start).
        steps: usize,
        /// Fraction of the base rate at `t = 0`.
        start_factor: f32,
        /// The schedule after the ramp, its `t` counted from the end of the ramp.
        then: Box<Schedule>,
    },
}

impl Schedule {
    /// The learning rate at `t` for base rate `base`.
    pub fn lr(&self, base: f32, t: usize) -> f32 {
        match self {
            Schedule::Constant => base,
            Schedule::Step { step_size, gamma } => {
                base * gamma.powi((t / (*step_size).max(1)) as i32)
            }
            Schedule::MultiStep { milestones, gamma } => {
                base * gamma.powi(milestones.iter().filter(|&&m| m <= t).count() as i32)
            }
            Schedule::Cosine { t_max, eta_min } => {
                if *t_max == 0 || t >= *t_max {
                    return *eta_min;
                }
                let progress = t as f64 / *t_max as f64;
                let cos = (1.0 + (std::f64::consts::PI * progress).cos()) / 2.0;
                (*eta_min as f64 + (base - eta_min) as f64 * cos) as f32
            }
            Schedule::Warmup {
                steps,
                start_factor,
                then,
            } => {
                if t < *steps {
                    let f = start_factor + (1.0 - start_factor) * t as f32 / *steps as f32;
                    base * f
                } else {
                    then.lr(base, t - steps)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_match_pytorch_formulas() {
        let s = Schedule::Step {
            step_size: 3,
            gamma: 0.1,
        };
        assert_eq!(s.lr(1.0, 2), 1.0);
        assert!((s.lr(1.0, 3) - 0.1).abs() < 1e-7);
        let m = Schedule::MultiStep {
            milestones: vec![2, 5],
            gamma: 0.5,
        };
        assert_eq!([m.lr(1.0, 1), m.lr(1.0, 2), m.lr(1.0, 5)], [1.0, 0.5, 0.25]);
        let c = Schedule::Cosine {
            t_max: 10,
            eta_min: 0.0,
        };
        assert_eq!(c.lr(0.2, 0), 0.2);
        assert!((c.lr(0.2, 5) - 0.1).abs() < 1e-6);
        assert_eq!(c.lr(0.2, 10), 0.0);
        let w = Schedule::Warmup {
            steps: 4,
            start_factor: 0.25,
            then: Box::new(Schedule::Constant),
        };
        assert_eq!(
            [w.lr(1.0, 0), w.lr(1.0, 2), w.lr(1.0, 4)],
            [0.25, 0.625, 1.0]
        );
    }
}
