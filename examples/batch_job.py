"""A batch job: featurise a folder of .npy files into rows of a shared (n, k) array.

Each item (a file path and its row number) is independent; results land directly in row i
of a shared output array, and a tqdm bar shows progress. Verified against a serial run.

Run: python examples/batch_job.py [--files N]
"""

from __future__ import annotations

import argparse
import os
import tempfile

import numpy as np

import shmpool

K = 6  # features per file


def featurise(signal: np.ndarray) -> np.ndarray:
    """Six summary features of one signal."""
    spectrum = np.abs(np.fft.rfft(signal))
    return np.array(
        [signal.mean(), signal.std(), signal.min(), signal.max(), spectrum.argmax(), np.median(signal)]
    )


def make_files(folder: str, count: int) -> list[str]:
    """Write ``count`` random signals of varying length as .npy files."""
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        path = os.path.join(folder, f"signal_{i:04d}.npy")
        np.save(path, rng.standard_normal(rng.integers(1_000, 5_000)))
        paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=300)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        paths = make_files(folder, args.files)
        expected = np.array([featurise(np.load(p)) for p in paths])

        with shmpool.SharedPool() as pool:
            features = pool.zeros((len(paths), K))  # shared: workers write their row

            def job(item: tuple[int, str]) -> None:
                row, path = item
                features[row] = featurise(np.load(path))  # `features` arrives by reference

            bar = {"desc": "files", "total": len(paths)}  # enumerate() has no len()
            for _ in pool.imap(job, enumerate(paths), ordered=False, chunksize=8, progress=bar):
                pass
            assert np.allclose(features, expected), "parallel features differ from serial"
            print(f"featurised {len(paths)} files into a {features.shape} shared array; matches serial")


if __name__ == "__main__":
    main()
