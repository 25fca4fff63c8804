//! JPEG decoding (this crate's libjpeg-exact decoder) on the test photos, in pixels per
//! second, one thread: decoding runs once per image per epoch in an image-folder data
//! set, so it is compared with PIL's libjpeg-turbo (SIMD) on the same files by
//! `python3 scripts/pil_decode_speed.py`.
//!
//! `cargo bench -p resnet-benches --bench decode`

use std::path::Path;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};

/// The JPEGs of the preprocessing fixture: a 640x427 4:4:4 photo and 320x280 crops,
/// baseline and progressive, 4:2:0 and 4:4:4, grey.
pub const FILES: [&str; 6] = [
    "rocket.jpg",
    "generated/baseline420.jpg",
    "generated/baseline444.jpg",
    "generated/progressive420.jpg",
    "generated/progressive444.jpg",
    "generated/grey.jpg",
];

fn bench(c: &mut Criterion) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../crates/resnet/tests/images");
    let mut g = c.benchmark_group("decode");
    g.sample_size(20).measurement_time(Duration::from_secs(2));
    for name in FILES {
        let path = dir.join(name);
        let bytes = std::fs::read(&path).expect("test image");
        let img = resnet::preprocess::decode_rgb8(&path, &bytes).expect("decodes");
        g.throughput(Throughput::Elements((img.width() * img.height()) as u64));
        g.bench_function(name, |b| {
            b.iter(|| resnet::preprocess::decode_rgb8(&path, &bytes).expect("decodes"))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
