//! The small test harness shared by the kernel suites (`harness = false` binaries).
//!
//! Each suite is a list of named checks, each taking one tier's [`Kernels`]. [`run`]
//! runs every check in every tier the CPU supports and prints a `SKIP` line for every
//! tier it cannot run, so a missing tier is never counted as a pass; the last line is
//! `<suite>: N passed, N failed, N skipped`.

#![allow(dead_code)]

use std::panic::{catch_unwind, AssertUnwindSafe};

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use tensor::{isa, Isa, Kernels};

pub type CheckResult = Result<(), String>;
pub type Check = fn(Kernels) -> CheckResult;

pub fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

/// Runs a property over `cases()` random inputs; on failure, the message carries the
/// shrunk input.
pub fn prop<S: Strategy>(
    strategy: S,
    test: impl Fn(S::Value) -> Result<(), TestCaseError>,
) -> CheckResult
where
    S::Value: std::fmt::Debug,
{
    let config = Config {
        cases: cases(),
        failure_persistence: None,
        ..Config::default()
    };
    TestRunner::new(config)
        .run(&strategy, test)
        .map_err(|e| e.to_string())
}

/// Compares element by element; the message names the first offending index.
pub fn close(
    what: &str,
    got: &[f32],
    want: &[f32],
    tol: impl Fn(usize) -> f32,
) -> Result<(), TestCaseError> {
    if got.len() != want.len() {
        return Err(TestCaseError::fail(format!(
            "{what}: {} elements, expected {}",
            got.len(),
            want.len()
        )));
    }
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let t = tol(i);
        // NaN where the reference has NaN (a NaN input propagates, as in PyTorch).
        let ok = if w.is_nan() {
            g.is_nan()
        } else if t == 0.0 {
            g.to_bits() == w.to_bits() || g == w
        } else {
            (g - w).abs() <= t
        };
        if !ok {
            return Err(TestCaseError::fail(format!(
                "{what}: element {i}: got {g:e}, reference {w:e}, |diff| {:e} > tolerance {t:e}",
                (g - w).abs()
            )));
        }
    }
    Ok(())
}

pub fn fail(e: impl std::fmt::Display) -> TestCaseError {
    TestCaseError::fail(e.to_string())
}

/// Runs every check in every tier (or the one `RESNET_ISA` selects), prints a line per
/// check and a SKIP line per tier that cannot run, and exits non-zero on any failure.
pub fn run(suite: &str, checks: &[(&str, Check)]) {
    // Every argument not starting with `-` is a filter; a check runs if any matches.
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let selected =
        |name: &str| filters.is_empty() || filters.iter().any(|f| name.contains(f.as_str()));
    // RESNET_ISA narrows the run to one tier (CI runs it once with `generic`); a bad
    // value fails the run instead of quietly testing something else.
    let forced = match std::env::var(isa::ISA_ENV) {
        Ok(v) if !v.trim().is_empty() => match isa::choose(Some(&v)) {
            Ok(choice) => Some(choice.isa()),
            Err(e) => {
                println!("FAILED  {}={v:?}: {e}", isa::ISA_ENV);
                println!("{suite}: 0 passed, 1 failed, 0 skipped");
                std::process::exit(1);
            }
        },
        _ => None,
    };
    let (mut passed, mut failed, mut skipped) = (0, 0, 0);
    for isa in Isa::ALL {
        let names: Vec<_> = checks
            .iter()
            .filter(|(n, _)| selected(&format!("{isa}::{n}")))
            .collect();
        if names.is_empty() {
            continue;
        }
        if forced.is_some_and(|f| f != isa) {
            println!(
                "SKIP    {isa}: not selected ({}={}) ({} checks not run)",
                isa::ISA_ENV,
                forced.map_or("", |f| f.name()),
                names.len()
            );
            skipped += names.len();
            continue;
        }
        let k = match Kernels::for_isa(isa) {
            Ok(k) => k,
            Err(why) => {
                println!("SKIP    {isa}: {why} ({} checks not run)", names.len());
                skipped += names.len();
                continue;
            }
        };
        for (name, check) in names {
            let full = format!("{isa}::{name}");
            let outcome = catch_unwind(AssertUnwindSafe(|| check(k))).unwrap_or_else(|p| {
                Err(format!(
                    "panicked: {:?}",
                    p.downcast_ref::<String>()
                        .map(|s| s.as_str())
                        .or(p.downcast_ref::<&str>().copied())
                ))
            });
            match outcome {
                Ok(()) => {
                    println!("ok      {full}");
                    passed += 1;
                }
                Err(msg) => {
                    println!("FAILED  {full}\n        {msg}");
                    failed += 1;
                }
            }
        }
    }
    println!("{suite}: {passed} passed, {failed} failed, {skipped} skipped");
    if failed > 0 {
        std::process::exit(1);
    }
}
