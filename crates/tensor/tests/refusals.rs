//! Every refusal names the argument that is wrong, with the shape expected and the shape
//! given (issue: messages that blamed the wrong input).

use tensor::{Kernels, MatMut, MatRef, Tensor};

fn message<T: std::fmt::Debug>(r: tensor::Result<T>) -> String {
    r.expect_err("the call was accepted").to_string()
}

#[test]
fn scale_shift_names_the_parameter_of_the_wrong_length() {
    let k = Kernels::active().unwrap();
    let x = Tensor::zeros(&[1, 4, 2, 2]).unwrap();
    let e = message(k.scale_shift(&x, &[1.0; 4], &[0.0; 3], &[]));
    assert!(
        e.contains("shift") && !e.contains("scale has") && e.contains("[3]") && e.contains("[4]"),
        "{e}"
    );
    let e = message(k.scale_shift(&x, &[1.0; 5], &[0.0; 4], &[]));
    assert!(
        e.contains("scale") && e.contains("[5]") && e.contains("[4]"),
        "{e}"
    );
}

#[test]
fn gemm_names_the_matrix_that_does_not_fit() {
    let k = Kernels::active().unwrap();
    let (a, b) = (vec![0.0f32; 6], vec![0.0f32; 12]);
    let mut c = vec![0.0f32; 8];
    // A is 2x3, B 4x3: B's rows must be A's 3 columns.
    let e = message(k.gemm(
        MatRef::row_major(&a, 2, 3).unwrap(),
        MatRef::row_major(&b, 4, 3).unwrap(),
        &mut MatMut::row_major(&mut c, 2, 4).unwrap(),
        &[],
    ));
    assert!(
        e.contains("B") && e.contains("[4, 3]") && e.contains("[3, 3]"),
        "{e}"
    );
    // A 2x3, B 3x4, C 4x2 where 2x4 is needed.
    let e = message(k.gemm(
        MatRef::row_major(&a, 2, 3).unwrap(),
        MatRef::row_major(&b, 3, 4).unwrap(),
        &mut MatMut::row_major(&mut c, 4, 2).unwrap(),
        &[],
    ));
    assert!(
        e.contains("C") && e.contains("[4, 2]") && e.contains("[2, 4]"),
        "{e}"
    );
    // Two shapes in the message, of two numbers each: no six-number "shape".
    assert!(!e.contains("[2, 3, 3, 4"), "{e}");
}

#[test]
fn linear_names_its_bias() {
    let k = Kernels::active().unwrap();
    let w = k
        .pack_linear_weights(&Tensor::zeros(&[10, 8]).unwrap())
        .unwrap();
    let x = Tensor::zeros(&[2, 8]).unwrap();
    let e = message(k.linear(&x, &w, Some(&[0.0; 3])));
    assert!(
        e.starts_with("linear") && e.contains("bias") && e.contains("[3]") && e.contains("[10]"),
        "{e}"
    );
    let e = message(k.linear(&Tensor::zeros(&[2, 7]).unwrap(), &w, None));
    assert!(
        e.contains("x") && e.contains("[2, 7]") && e.contains("[2, 8]"),
        "{e}"
    );
}
