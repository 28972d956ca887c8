"""Embedding throughput: the whole `embed()` pipeline against the bare model forward.

    .venv/bin/python bench/embed.py                      # 300 tuxpaint stamps, efficientnet-lite0, CPU
    .venv/bin/python bench/embed.py --n 2000 --device cuda

`pipeline` = one `clipatlas.store.embed(...)` call with default workers: listing, encoder load,
reading + decoding + preprocessing in DataLoader workers, the model, and the store writes.
`bare forward` = `encoder.encode_tensors` over the same images, decoded and preprocessed
beforehand, in batches of the same size, in the same process. Each is the best of `--repeats`
runs, alternated (bare, pipeline, bare, pipeline...) so that load from other processes on a
shared machine hits both alike. `ratio` = pipeline images/s over bare images/s.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from clipatlas.encoders import load_encoder
from clipatlas.sources import available_demo_sets, iter_items, read_image
from clipatlas.store import Store, embed


def bench_sources(n: int, folder: Path) -> list[str]:
    """demo:tuxpaint when installed, else the sample photos listed again and again."""
    if "tuxpaint" in available_demo_sets():
        return ["demo:tuxpaint"]
    if "samples" not in available_demo_sets():
        raise SystemExit("no demo images on this machine: install tuxpaint-stamps-default or scikit-image")
    paths = [item.uri for item in iter_items(["demo:samples"])]
    listing = folder / "samples_repeated.txt"
    listing.write_text("\n".join(paths[i % len(paths)] for i in range(n)) + "\n")
    return [str(listing)]


def bare_forward(encoder, batches: list[torch.Tensor]) -> float:
    start = time.perf_counter()
    for batch in batches:
        encoder.encode_tensors(batch)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300, help="images (default 300)")
    parser.add_argument("--encoder", default="efficientnet-lite0")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument(
        "--workers", type=int, default=None, help="DataLoader workers (default: the pipeline's default)"
    )
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default="bench/out/embed.json")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="clipatlas-bench-embed-") as tmp:
        tmp_path = Path(tmp)
        sources = bench_sources(args.n, tmp_path)
        items = list(iter_items(sources, args.n))
        load_started = time.perf_counter()
        encoder = load_encoder(args.encoder, device=args.device)
        load_seconds = time.perf_counter() - load_started
        tensors = [encoder.preprocess(read_image(item.uri).image) for item in items]
        batches = [torch.stack(tensors[i : i + args.batch_size]) for i in range(0, len(tensors), args.batch_size)]
        bare_forward(encoder, batches[:1])  # warm-up

        bare_times, pipeline_times, embedded = [], [], 0
        for repeat in range(args.repeats):
            bare_times.append(bare_forward(encoder, batches))
            workspace = tmp_path / f"ws{repeat}"
            started = time.perf_counter()
            summary = embed(
                sources,
                workspace,
                encoder=args.encoder,
                device=args.device,
                batch_size=args.batch_size,
                limit=args.n,
                workers=args.workers,
                progress=False,
            )
            pipeline_times.append(time.perf_counter() - started)
            embedded = summary.embedded_now
            assert len(Store.open(workspace)) == embedded

    from clipatlas.store.pipeline import EmbedConfig

    workers = EmbedConfig(workers=args.workers).worker_count
    bare_rate = len(items) / min(bare_times)
    pipeline_rate = embedded / min(pipeline_times)
    result = {
        "n": len(items),
        "embedded": embedded,
        "sources": sources,
        "encoder": args.encoder,
        "device": args.device,
        "batch_size": args.batch_size,
        "workers": workers,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg(),
        "encoder_load_seconds": load_seconds,
        "bare_seconds": bare_times,
        "pipeline_seconds": pipeline_times,
        "bare_images_per_s": bare_rate,
        "pipeline_images_per_s": pipeline_rate,
        "ratio": pipeline_rate / bare_rate,
    }
    print(
        f"{len(items)} images from {', '.join(sources)}; {args.encoder} on {args.device}, batch {args.batch_size}, "
        f"{workers} workers, {torch.get_num_threads()} torch threads, load average {os.getloadavg()[0]:.1f}"
    )
    print(f"| run | seconds (best of {args.repeats}) | images/s |")
    print("|---|---|---|")
    print(f"| bare forward (pre-decoded tensors) | {min(bare_times):.2f} | {bare_rate:.1f} |")
    print(f"| pipeline (`embed()`, whole call) | {min(pipeline_times):.2f} | {pipeline_rate:.1f} |")
    print(f"ratio pipeline / bare forward: {result['ratio']:.0%} (encoder load alone: {load_seconds:.2f} s)")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
