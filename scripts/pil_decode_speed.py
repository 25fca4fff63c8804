#!/usr/bin/env python3
"""PIL's JPEG decoding speed on the files `cargo bench -p resnet-benches --bench decode`
decodes: `Image.open(BytesIO(b)).convert("RGB")`, as torchvision's ImageFolder reads an
image, in megapixels per second (best of 5 runs of at least 0.5 s each, one thread).

    python3 scripts/pil_decode_speed.py
"""
import io
import os
import time

from PIL import Image, features

FILES = [
    "rocket.jpg",
    "generated/baseline420.jpg",
    "generated/baseline444.jpg",
    "generated/progressive420.jpg",
    "generated/progressive444.jpg",
    "generated/grey.jpg",
]


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.join(here, "..", "crates", "resnet", "tests", "images")
    print(f"Pillow {Image.__version__}, libjpeg-turbo {features.version('libjpeg_turbo')}")
    for name in FILES:
        data = open(os.path.join(root, name), "rb").read()
        w, h = Image.open(io.BytesIO(data)).size
        best = float("inf")
        for _ in range(5):
            n, t0 = 0, time.perf_counter()
            while True:
                Image.open(io.BytesIO(data)).convert("RGB")
                n += 1
                t = time.perf_counter() - t0
                if t >= 0.5:
                    break
            best = min(best, t / n)
        print(f"{name:32} {w}x{h}  {best * 1e6:8.1f} us  {w * h / best / 1e6:7.1f} Mpixel/s")


if __name__ == "__main__":
    main()
