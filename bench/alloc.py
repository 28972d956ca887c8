"""The CPU allocator setting (`clipatlas._alloc.tune_cpu_allocator`) against glibc's defaults, each in
its own process: EfficientNet-Lite0 encodes N random 224 px images in batches of 64.

    OMP_NUM_THREADS=2 .venv/bin/python bench/alloc.py [--images 256] [--repeats 2]
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import time

CHILD = "child"


def child(tuned: bool, n_images: int) -> None:
    import numpy as np
    from PIL import Image

    import clipatlas._alloc as alloc

    if not tuned:
        alloc.tune_cpu_allocator = lambda: False  # load_encoder would set it otherwise
    from clipatlas.encoders import load_encoder

    encoder = load_encoder("efficientnet-lite0", device="cpu")
    rng = np.random.default_rng(0)
    images = [Image.fromarray((rng.random((224, 224, 3)) * 255).astype("uint8")) for _ in range(n_images)]
    before, started = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    encoder.encode_images(images, batch_size=64)
    after = resource.getrusage(resource.RUSAGE_SELF)
    wall, user, system = (
        time.perf_counter() - started,
        after.ru_utime - before.ru_utime,
        after.ru_stime - before.ru_stime,
    )
    print(f"{'tuned' if tuned else 'glibc defaults'}: wall {wall:.1f} s, user {user:.1f} s, system {system:.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    for _ in range(args.repeats):
        for tuned in (False, True):
            command = [sys.executable, __file__, CHILD, str(int(tuned)), str(args.images)]
            print(subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip(), flush=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == CHILD:
        child(bool(int(sys.argv[2])), int(sys.argv[3]))
    else:
        main()
