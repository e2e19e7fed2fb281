"""A chunked in-place map: a 3x3 box blur of every image in a stack.

Run: python examples/image_filter.py [--images N]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import shmpool


def box_blur(images: np.ndarray, out: np.ndarray) -> None:
    """Blur each image of a chunk of the stack (edges replicated) into ``out``."""
    for i in range(images.shape[0]):
        padded = np.pad(images[i], 1, mode="edge")
        acc = np.zeros(images.shape[1:], dtype=np.float64)
        for dy in range(3):
            for dx in range(3):
                acc += padded[dy : dy + images.shape[1], dx : dx + images.shape[2]]
        out[i] = acc / 9.0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--size", type=int, default=128)
    args = parser.parse_args()
    stack = np.random.default_rng(0).random((args.images, args.size, args.size), dtype=np.float32)

    expected = np.empty_like(stack)
    start = time.perf_counter()
    box_blur(stack, expected)
    serial = time.perf_counter() - start

    with shmpool.SharedPool() as pool:
        images = pool.asarray(stack)  # copied into shared memory once
        blurred = pool.empty_like(images)  # written in place by the workers
        start = time.perf_counter()
        pool.map(box_blur, images, blurred)  # each call gets a few images, as views
        parallel = time.perf_counter() - start
        assert np.allclose(blurred, expected), "parallel result differs from serial"
        print(
            f"{args.images} images of {args.size}x{args.size}: serial {serial:.3f} s, "
            f"{pool.workers} workers {parallel:.3f} s; results match"
        )


if __name__ == "__main__":
    main()
