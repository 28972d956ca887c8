"""Reproduce the race `clipatlas._io.open_npy` guards: threads opening .npy files at once on CPython
3.11.0-3.11.7 / 3.12.0-3.12.1 (python/cpython#106905) can fail with "SystemError: AST constructor
recursion depth mismatch", because numpy parses each header with ast.literal_eval.

    .venv/bin/python bench/npy_race.py plain 20   # np.load: SystemErrors on an affected interpreter
    .venv/bin/python bench/npy_race.py lock 20    # open_npy: none

Three threads open one small .npy file in a loop while a fourth makes garbage whose finalizer runs Python
code (a collection inside one parse then hands the GIL to another thread), for SECONDS seconds.
"""

from __future__ import annotations

import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from clipatlas import _io  # noqa: E402


class Cycle:
    def __del__(self):
        sum(range(50))  # Python code in a finalizer: the eval loop may switch threads here


def main() -> None:
    how, seconds = sys.argv[1], float(sys.argv[2])
    if how not in ("plain", "lock"):
        sys.exit("usage: npy_race.py plain|lock SECONDS")
    path = Path(tempfile.mkdtemp()) / "a.npy"
    np.save(path, np.ones((3, 4)))
    errors: list[str] = []
    stop = time.time() + seconds

    def reader() -> None:
        while time.time() < stop:
            try:
                _io.open_npy(path) if how == "lock" else np.load(path, mmap_mode="r")
            except SystemError as exc:
                errors.append(str(exc))

    def garbage() -> None:
        while time.time() < stop:
            cycle = Cycle()
            cycle.self = cycle

    sys.setswitchinterval(1e-6)
    threads = [threading.Thread(target=reader) for _ in range(3)] + [threading.Thread(target=garbage)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    shared = "shares" if _io.AST_BUILD_IS_SHARED else "does not share"
    print(f"Python {sys.version.split()[0]} ({shared} the AST builder's state), {how}: {len(errors)} SystemErrors")
    if errors:
        print(f"  e.g. {errors[0]}")


if __name__ == "__main__":
    main()
