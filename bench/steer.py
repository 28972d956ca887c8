"""Steering benchmark.

    .venv/bin/python bench/steer.py [--only edits,retrieval] [--rows 1400000] [--d-sae 163840]
    .venv/bin/python bench/steer.py --only success,icons,queries --demo demo-atlas [--template-file F.png]
    .venv/bin/python bench/steer.py --only scale --demo demo-atlas [--rows 1400000]

- edits: a stack of 100 edits on a seed-size SAE (random weights).
- retrieval: plain cosine top-16 over a synthetic float16 store of seed size (1.4M x 1280).
- success (needs --demo W, a workspace with an atlas): steering success against strength for single set
  edits on every alive feature firing on >= 10 images (3 source images each), for the retrieval decoder
  as it was (plain cosine, the source allowed), plain cosine without the source, and the edit-aware
  ranking with a soft and the default rank_weight. Writes bench/out/steer-success.{json,png}.
- icons (--demo): the icon causal check for templates (store mean, the store image nearest it, a flat
  grey image, --template-file images) x (plain cosine icons as before, the edit-aware ranking with one
  image per feature), at the default strength and at 7.5x.
- montage (--demo [--sample N]): montage icons: every alive feature's candidates (single image and 2x2 grid of
  its top images, strongest first and most dominant first) drawn, re-encoded by the store's encoder and coded
  by the SAE; rank-0 and top-5 shares per candidate kind and for the best one (the icon), over all alive
  features and over those firing on >= 10 images.
- queries (--demo): time per edit-aware query and per plain cosine scan at the demo's size.
- scale (--demo): the same at --rows rows: a float16 store of the demo's rows plus noise, their codes tiled.

Synthetic stores are written once to --store-dir and reused by later runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from clipatlas.sae import ARCHITECTURES, ReLUConfig
from clipatlas.steer import Edit, SteerContext, steer_embedding
from clipatlas.steer.ranking import CosineIndex

OUT = Path(__file__).parent / "out"


def timed(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def edit_stack(n: int, d_sae: int, rng: np.random.Generator) -> list[Edit]:
    features = rng.choice(d_sae, n, replace=False)
    ops = ["set", "add", "scale", "ban"]
    return [
        Edit(
            ops[i % 4],
            feature=int(f),
            value=0.0 if ops[i % 4] == "ban" else float(rng.uniform(0.5, 3)),
            relative=ops[i % 4] in ("set", "add"),
        )
        for i, f in enumerate(features)
    ]


def bench_edits(args) -> None:
    torch.manual_seed(0)
    sae = ARCHITECTURES["relu"](ReLUConfig(d_in=args.d, d_sae=args.d_sae)).eval()
    rng = np.random.default_rng(0)
    x = rng.normal(size=args.d).astype(np.float32)
    edits = edit_stack(100, args.d_sae, rng)
    ctx = SteerContext(latents_of=lambda ref: None, max_activation=lambda f: 2.0)
    times = timed(lambda: steer_embedding(sae, x, edits, ctx), args.repeats)
    print(
        f"100 stacked edits, SAE {args.d}x{args.d_sae}: median {statistics.median(times) * 1e3:.1f} ms "
        f"(min {min(times) * 1e3:.1f}, {args.repeats} runs; encode, 100 edits, decode of the changed rows)"
    )


def synthetic_store(store_dir: Path, rows: int, d: int, make_rows=None):
    """A float16 store of `rows` rows written once; `make_rows(begin, end)` gives them (default: Gaussian)."""
    from clipatlas.store import Store, write_store

    if (store_dir / "store" / "manifest.json").is_file():
        store = Store.open(store_dir)
        if len(store) == rows and store.d == d:
            return store
        raise SystemExit(f"{store_dir} holds a different store; pass another --store-dir")
    start = time.perf_counter()
    rng = np.random.default_rng(0)
    emb = np.empty((rows, d), dtype=np.float16)
    for begin in range(0, rows, 100_000):  # chunks keep the float32 draw small
        end = min(rows, begin + 100_000)
        emb[begin:end] = make_rows(begin, end) if make_rows else rng.standard_normal((end - begin, d), dtype=np.float32)
    write_store(store_dir, emb, dtype="float16", shard_size=200_000)
    del emb
    store = Store.open(store_dir)
    print(f"wrote a {rows:,} x {d} float16 store in {time.perf_counter() - start:.0f} s")
    return store


def bench_retrieval(args) -> None:
    store = synthetic_store(args.store_dir, args.rows, args.d)
    queries = np.random.default_rng(1).normal(size=(2, store.d)).astype(np.float32)
    start = time.perf_counter()
    index = CosineIndex(store)  # built once per server / CLI run
    print(f"retrieval index build: {time.perf_counter() - start:.1f} s")
    times = timed(lambda: index.search(queries, 16), args.repeats)
    gb = len(store) * store.d * store.dtype.itemsize / 1e9
    print(
        f"retrieval preview (before + after, top 16) over {len(store):,} rows ({gb:.2f} GB): median "
        f"{statistics.median(times):.2f} s (min {min(times):.2f}, {args.repeats} runs)"
    )


# -- on a real atlas -----------------------------------------------------------------------------------
class UnguidedRetrieval:
    """The retrieval decoder before edit-aware ranking: plain cosine, the source allowed."""

    def __init__(self, decoder):
        self.decoder = decoder

    def result_embeddings(self, embeddings, *, guides=None, **kwargs):
        return self.decoder.result_embeddings(embeddings, guides=None, **kwargs)


VARIANTS = {
    "retrieval as it was (plain cosine, source allowed)": ("retrieval-unguided", ()),
    "plain cosine, source and near-duplicates left out": (
        "retrieval",
        (("activation_weight", 0), ("rank_weight", 0)),
    ),
    "cos + 0.1 act + 0.3 top5": ("retrieval", (("rank_weight", 0.3),)),
    "cos + 0.1 act + 1 top5 (default)": ("retrieval", ()),
}


def bench_success(args) -> None:
    from clipatlas.steer import decoders
    from clipatlas.steer.config import SuccessConfig
    from clipatlas.steer.engine import steerer_for
    from clipatlas.steer.success import measure_success, plot_success

    steerer = steerer_for(args.demo, args.name)
    retrieval = steerer.decoder("retrieval")  # made here: the factory below runs under the steerer's lock
    decoders.DECODERS["retrieval-unguided"] = lambda arg, ctx: UnguidedRetrieval(retrieval)
    curves, rows = [], []
    for label, (decoder, settings) in VARIANTS.items():
        config = SuccessConfig(decoder=decoder, settings=settings, n_features=100_000)
        start = time.perf_counter()
        curve = measure_success(args.demo, args.name, config, save=False)
        seconds = time.perf_counter() - start
        curves.append((label, curve))
        rows.append((label, curve, seconds))
    strengths = [p.strength for p in curves[0][1].points]
    print(
        f"\nsteering success, {curves[0][1].points[0].n} single set edits per strength on {curves[0][1].n_features} "
        "features (alive, >= 10 images; 3 sources each where the feature is silent; success = not the source "
        "and the feature in the result's top 5 latents)"
    )
    print("| ranking | " + " | ".join(f"{s:g}x" for s in strengths) + " | default | seconds |")
    print("|---" * (len(strengths) + 3) + "|")
    for label, curve, seconds in rows:
        cells = " | ".join(f"{p.success:.1%}" for p in curve.points)
        default = f"{curve.default_strength:g}x" if curve.default_strength is not None else "none"
        print(f"| {label} | {cells} | {default} | {seconds:.0f} |")
    print("\nsame runs, rank 0 / mean activation (x max) / cosine to the source / cosine of the other features' codes")
    for label, curve, _ in rows:
        cells = " | ".join(
            f"{p.rank0:.0%} / {p.activation:.2f} / {p.source_cosine:.2f} / {p.unedited_cosine:.2f}"
            for p in curve.points
        )
        print(f"| {label} | {cells} |")
    OUT.mkdir(exist_ok=True)
    (OUT / "steer-success.json").write_text(json.dumps({label: c.to_dict() for label, c in curves}, indent=1))
    plot_success(curves, OUT / "steer-success.png")
    print(f"wrote {OUT / 'steer-success.json'} and {OUT / 'steer-success.png'}")


def bench_icons(args) -> None:
    from PIL import Image

    from clipatlas.steer.config import IconConfig
    from clipatlas.steer.edits import set_embeddings
    from clipatlas.steer.engine import steerer_for
    from clipatlas.steer.icons import _assignment, icon_report, template_embedding
    from clipatlas.steer.success import default_strength

    steerer = steerer_for(args.demo, args.name)
    atlas, store = steerer.atlas, steerer.store
    features = np.flatnonzero(atlas.feature_table().alive)
    top = atlas.feature_table().max_activation
    mean, _ = template_embedding(steerer, "mean")
    nearest = int(steerer.decoder("retrieval").ranker.index.search(mean[None], 1)[0][0, 0])
    grey = Path(tempfile.mkdtemp()) / "grey.png"
    Image.new("RGB", (256, 256), (128, 128, 128)).save(grey)
    templates = {
        "store mean embedding (default)": "mean",
        f"store image nearest the mean ({store.meta(nearest)['image_id']})": store.meta(nearest)["image_id"],
        "flat grey 256 px image": str(grey),
        **{f"image file {Path(f).name}": f for f in args.template_file},
    }
    measured = default_strength(atlas, "retrieval")
    strengths = sorted({measured.value, 7.5})
    print(f"\nicons for {len(features)} alive features; default strength {measured.source}")
    print("| template | strength | ranking | rank 0 | top 5 | normalised rank 0 | distinct | rank-0 ceiling |")
    print("|---|---|---|---|---|---|---|---|")
    index = steerer.decoder("retrieval").ranker.index
    for label, ref in templates.items():
        x, _ = template_embedding(steerer, ref)
        for strength in strengths:
            ys = set_embeddings(steerer.sae, x, features, strength * top[features])
            plain = index.search(ys, 1)[0][:, 0]
            chosen = _assignment(steerer, IconConfig(template=ref), x, strength, features.tolist())
            ranked = np.array([chosen[f] for f in features])
            for name, rows in (("plain cosine (as before)", plain), ("edit-aware + one image each", ranked)):
                distinct = len(np.unique(rows)) / len(rows)
                report = icon_report(
                    steerer,
                    {"decoder": "retrieval", "strength": strength, "template_ref": ref},
                    x,
                    features,
                    store.rows(rows),
                    distinct,
                )
                print(
                    f"| {label} | {strength:g}x | {name} | {report['top1_share']:.1%} | {report['top5_share']:.1%} "
                    f"| {report['normalised_top1_share']:.1%} | {distinct:.1%} | {report['top1_ceiling']:.1%} |"
                )


def bench_montage(args) -> None:
    from clipatlas.steer.engine import steerer_for
    from clipatlas.steer.icons import FREQUENT_IMAGES
    from clipatlas.steer.montage import draw_montage, icon_encoder, montage_config, top_orders
    from clipatlas.steer.success import own_ranks

    steerer = steerer_for(args.demo, args.name)
    atlas, store, cfg = steerer.atlas, steerer.store, montage_config({})
    encoder, codes, table = icon_encoder(steerer), atlas.image_codes(), atlas.feature_table()
    features = np.flatnonzero(table.alive)
    if args.sample:
        features = np.sort(np.random.default_rng(args.seed).choice(features, min(args.sample, len(features)), False))
    kinds = {
        "single image, strongest": lambda strongest, dominant: strongest[:1],
        "single image, most dominant": lambda strongest, dominant: dominant[:1],
        "2x2 grid, strongest first": lambda strongest, dominant: [strongest[i % len(strongest)] for i in range(4)],
        "2x2 grid, most dominant first": lambda strongest, dominant: [dominant[i % len(dominant)] for i in range(4)],
    }
    candidates = {f: [tuple(kind(*top_orders(atlas, codes, int(f)))) for kind in kinds.values()] for f in features}
    unique = sorted({rows for rows_of in candidates.values() for rows in rows_of})
    owner = {rows: i for i, rows in enumerate(unique)}
    started = time.perf_counter()
    embeddings = np.concatenate(
        [
            encoder.encode_images([draw_montage(store, rows, cfg.size) for rows in unique[s : s + 64]])
            for s in range(0, len(unique), 64)
        ]
    )
    seconds = time.perf_counter() - started
    with torch.no_grad():
        z_unique = steerer.sae.encode(torch.from_numpy(embeddings)).numpy()
    ranks, activations = [], []
    for k in range(len(kinds)):
        z = z_unique[[owner[candidates[f][k]] for f in features]]
        rank, act = own_ranks(z, features)
        ranks.append(rank)
        activations.append(act)
    ranks, activations = np.stack(ranks), np.stack(activations)
    best = np.lexsort((-activations, ranks), axis=0)[0]  # per feature: lowest rank, then largest activation
    chosen = ranks[best, np.arange(len(features))]
    frequent = table.count[features] >= FREQUENT_IMAGES
    print(
        f"\nmontage candidates for {len(features)} alive features ({frequent.sum()} firing on >= {FREQUENT_IMAGES} "
        f"images): {len(unique)} distinct collages re-encoded in {seconds:.0f} s"
    )
    at_least = f">= {FREQUENT_IMAGES} images"
    print(f"| candidate | rank 0 (all) | top 5 (all) | rank 0 ({at_least}) | top 5 ({at_least}) |")
    print("|---|---|---|---|---|")
    for label, r in [*zip(kinds, ranks), ("best of them (the montage icon)", chosen)]:
        print(
            f"| {label} | {(r == 0).mean():.1%} | {(r < 5).mean():.1%} | {(r[frequent] == 0).mean():.1%} "
            f"| {(r[frequent] < 5).mean():.1%} |"
        )
    print("chosen: " + ", ".join(f"{label} {np.mean(best == k):.1%}" for k, label in enumerate(kinds)))


def time_queries(ranker, x, decoder_rows, features, max_activation) -> dict[str, list[float]]:
    """Per query: the edit-aware rank (k=16, source left out) of a 2x set edit on a random source, and a
    plain cosine scan for the same embedding."""
    from clipatlas.steer.config import RetrievalConfig
    from clipatlas.steer.ranking import Guide

    rng = np.random.default_rng(0)
    cfg = RetrievalConfig()
    times: dict[str, list[float]] = {"edit-aware (k=16)": [], "plain cosine scan (k=16)": []}
    for f in features:
        source = x[int(rng.integers(len(x)))].astype(np.float32)
        y = source + 2 * max_activation[f] * decoder_rows[f]
        guide = Guide(raised=(int(f),), source=source)
        start = time.perf_counter()
        ranker.rank(y, guide, cfg, 16)
        times["edit-aware (k=16)"].append(time.perf_counter() - start)
        start = time.perf_counter()
        ranker.index.search(y[None], 16)
        times["plain cosine scan (k=16)"].append(time.perf_counter() - start)
    return times


def report_times(label: str, times: dict[str, list[float]]) -> None:
    for name, values in times.items():
        ms = np.array(values) * 1e3
        print(
            f"{label}: {name}: median {np.median(ms):.2f} ms, p95 {np.quantile(ms, 0.95):.2f} ms, "
            f"max {ms.max():.1f} ms over {len(ms)} queries"
        )


def demo_parts(args):
    """The demo's steerer, feature table, raw-scale decoder rows and the features firing on >= 10 images."""
    from clipatlas.steer.engine import steerer_for

    steerer = steerer_for(args.demo, args.name)
    table = steerer.atlas.feature_table()
    sae = steerer.sae
    decoder_rows = sae.W_dec.detach().float().numpy() / sae.cfg.input_scale
    return steerer, table, decoder_rows, np.flatnonzero(table.alive & (table.count >= 10))


def bench_queries(args) -> None:
    steerer, table, decoder_rows, eligible = demo_parts(args)
    ranker = steerer.decoder("retrieval").ranker
    features = np.random.default_rng(0).choice(eligible, min(200, len(eligible)), replace=False)
    x = steerer.store.to_array()
    time_queries(ranker, x, decoder_rows, features[:5], table.max_activation)  # warm-up: index, posting lists
    times = time_queries(ranker, x, decoder_rows, features, table.max_activation)
    report_times(f"demo ({len(x):,} rows)", times)


def tiled_codes(codes, source: np.ndarray):
    """The atlas codes of a store whose row i is a copy of demo row source[i]."""
    from clipatlas.atlas.types import ImageCodes

    lengths = np.diff(codes.indptr)
    tiled_lengths = lengths[source]
    starts = codes.indptr[:-1][source]
    within = np.arange(tiled_lengths.sum()) - np.repeat(np.cumsum(tiled_lengths) - tiled_lengths, tiled_lengths)
    entry = np.repeat(starts, tiled_lengths) + within
    return ImageCodes(
        np.concatenate([[0], np.cumsum(tiled_lengths)]).astype(np.int64),
        np.asarray(codes.features)[entry],
        np.asarray(codes.values)[entry],
    )


def bench_scale(args) -> None:
    from clipatlas.steer.ranking import EditRanker

    steerer, table, decoder_rows, eligible = demo_parts(args)
    atlas = steerer.atlas
    demo = steerer.store.to_array()
    n0 = len(demo)
    rng = np.random.default_rng(0)
    store = synthetic_store(
        args.store_dir,
        args.rows,
        demo.shape[1],
        lambda begin, end: (
            demo[np.arange(begin, end) % n0]
            + rng.standard_normal((end - begin, demo.shape[1]), dtype=np.float32) * 0.05
        ),
    )
    tiled = tiled_codes(atlas.image_codes(), np.arange(args.rows) % n0)
    start = time.perf_counter()
    index = CosineIndex(store)
    print(f"{args.rows:,}-row index built in {time.perf_counter() - start:.0f} s")
    ranker = EditRanker(index, tiled, table.max_activation)
    start = time.perf_counter()
    postings = ranker.postings(5)
    sizes = np.diff(postings.start)
    print(
        f"posting lists built in {time.perf_counter() - start:.1f} s: {len(postings.rows):,} entries, per feature "
        f"median {np.median(sizes[sizes > 0]):.0f}, max {sizes.max():,}"
    )
    features = list(rng.choice(eligible, 20, replace=False)) + [int(sizes.argmax())]
    # Sources are demo rows; their noisy copies are in the big store, and differ enough to be shown.
    report_times(f"{args.rows:,} rows", time_queries(ranker, demo, decoder_rows, features, table.max_activation))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--only", default="edits,retrieval", help="comma-separated: edits,retrieval,success,icons,montage,queries,scale"
    )
    parser.add_argument("--demo", type=Path, help="a workspace with an atlas (success, icons, queries, scale)")
    parser.add_argument("--name", help="its SAE (default: the only one)")
    parser.add_argument("--template-file", action="append", default=[], help="also measure icons from this image")
    parser.add_argument("--rows", type=int, default=1_400_000)
    parser.add_argument("--d", type=int, default=1280)
    parser.add_argument("--d-sae", type=int, default=163_840)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sample", type=int, help="montage: a seeded sample of this many alive features")
    parser.add_argument("--seed", type=int, default=0, help="montage: the sample's seed")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--store-dir", type=Path, default=Path(tempfile.gettempdir()) / "clipatlas-steer-bench")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    parts = {
        "edits": bench_edits,
        "retrieval": bench_retrieval,
        "success": bench_success,
        "icons": bench_icons,
        "montage": bench_montage,
        "queries": bench_queries,
        "scale": bench_scale,
    }
    for part in args.only.split(","):
        if part != "edits" and part != "retrieval" and args.demo is None:
            raise SystemExit(f"--only {part} needs --demo W (a workspace with an atlas)")
        parts[part](args)


if __name__ == "__main__":
    main()
