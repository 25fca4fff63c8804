//! The buffer pool: dropped large tensors are reused, their stale contents never show,
//! and the limit holds. One test function: the pool is process-wide, and this file is
//! its own process, so no other test takes or gives buffers meanwhile.

use tensor::{recycle, Tensor};

#[test]
fn dropped_buffers_are_reused_within_the_limit() {
    recycle::set_limit(64 << 20);
    recycle::release();
    assert_eq!(recycle::held_bytes(), 0);

    // Small tensors are left to the allocator.
    drop(Tensor::full(&[recycle::MIN_FLOATS - 1], 1.0).unwrap());
    assert_eq!(recycle::held_bytes(), 0);

    // A large one comes back for the next tensor of its size, with the new contents.
    let n = 100_000;
    let a = Tensor::full(&[n], 7.0).unwrap();
    let ptr = a.data().as_ptr();
    drop(a);
    assert_eq!(recycle::held_bytes(), n * 4);
    let z = Tensor::zeros(&[10, n / 10]).unwrap();
    assert_eq!(z.data().as_ptr(), ptr, "the pooled buffer was not reused");
    assert!(z.data().iter().all(|&v| v == 0.0), "stale values leaked");
    assert_eq!(recycle::held_bytes(), 0);

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
    recycle::release();
    recycle::set_limit(n * 4);
    drop(c);
    drop(full);
    assert_eq!(recycle::held_bytes(), n * 4);
    recycle::set_limit(0);
    assert_eq!(recycle::held_bytes(), 0);
    drop(Tensor::zeros(&[n]).unwrap());
    assert_eq!(recycle::held_bytes(), 0);

    // `into_vec` hands the buffer to the caller, not to the pool.
    recycle::set_limit(recycle::DEFAULT_LIMIT);
    let v = Tensor::full(&[n], 1.0).unwrap().into_vec();
    assert_eq!(v.len(), n);
    assert_eq!(recycle::held_bytes(), 0);
    let r = Tensor::from_vec(&[n], v)
        .unwrap()
        .reshape(&[2, n / 2])
        .unwrap();
    assert_eq!(recycle::held_bytes(), 0);
    drop(r);
    assert_eq!(recycle::held_bytes(), n * 4);
    recycle::release();
    assert_eq!(recycle::held_bytes(), 0);

    // Bypassed: drops free, and nothing pooled is handed out.
    drop(Tensor::zeros(&[n]).unwrap());
    let kept = recycle::held_bytes();
    assert_eq!(kept, n * 4);
    recycle::bypass(|| {
        let t = Tensor::zeros(&[n]).unwrap();
        assert_eq!(
            recycle::held_bytes(),
            kept,
            "a bypassed allocation took a buffer"
        );
        drop(t);
        assert_eq!(
            recycle::held_bytes(),
            kept,
            "a bypassed drop kept its buffer"
        );
    });
    drop(Tensor::zeros(&[n]).unwrap());
    assert_eq!(recycle::held_bytes(), kept);

    // A buffer no recent request could use is not kept: a tensor made from a Vec of a
    // size nobody asked for (a decoded photo, a data loader's batch).
    recycle::release();
    drop(Tensor::from_vec(&[7 * n], vec![0.5; 7 * n]).unwrap());
    assert_eq!(
        recycle::held_bytes(),
        0,
        "a buffer of an unrequested size was kept"
    );

    // A buffer nobody takes is freed after MAX_AGE pool operations; one that is taken
    // and given back keeps circulating.
    drop(Tensor::zeros(&[3 * n]).unwrap()); // never asked for again
    for _ in 0..recycle::MAX_AGE {
        drop(Tensor::zeros(&[n]).unwrap()); // a take and a give per round
    }
    assert_eq!(
        recycle::held_bytes(),
        n * 4,
        "the stale buffer is still held"
    );

    // Threads taking and giving at once never share a buffer: each fills its tensor
    // with its own value and finds only that value there.
    let sizes = [n, n + 1, 2 * n, 3 * n / 2];
    std::thread::scope(|scope| {
        for t in 0..4usize {
            scope.spawn(move || {
                for i in 0..100 {
                    let value = (t * 1000 + i) as f32;
                    let a = Tensor::full(&[sizes[(t + i) % 4]], value).unwrap();
                    let b = a.clone();
                    assert!(a.data().iter().chain(b.data()).all(|&v| v == value));
                }
            });
        }
    });
    assert!(recycle::held_bytes() <= recycle::limit());
}
