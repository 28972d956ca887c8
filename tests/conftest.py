"""Test-wide guards: offline, one torch thread, no network connections."""

from __future__ import annotations

import os
import socket

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("OMP_NUM_THREADS", "1")

import ast  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from clipatlas import _io  # noqa: E402

torch.set_num_threads(1)

if _io.AST_BUILD_IS_SHARED:
    # pytest's assertion rewriting parses plugin modules (schemathesis, hypothesis) imported lazily in the
    # middle of a test, while that test's server threads open .npy files: the race `_io.AST_LOCK` guards
    # (CI's CPython 3.11.7 failed test_fuzz with "AST constructor recursion depth mismatch").
    _parse, _ast_lock = ast.parse, _io.AST_LOCK

    def _parse_in_turn(*args, **kwargs):
        with _ast_lock:
            return _parse(*args, **kwargs)

    ast.parse = _parse_in_turn

_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex
_LOOPBACK_PREFIXES = ("127.", "::1", "localhost")


def _is_local(address) -> bool:
    if isinstance(address, (str, bytes)):  # AF_UNIX
        return True
    host = str(address[0])
    return host.startswith(_LOOPBACK_PREFIXES)


def _guarded_connect(self, address):
    if not _is_local(address):
        raise OSError(f"tests are offline: refused connection to {address!r}")
    return _real_connect(self, address)


def _guarded_connect_ex(self, address):
    if not _is_local(address):
        raise OSError(f"tests are offline: refused connection to {address!r}")
    return _real_connect_ex(self, address)


@pytest.fixture(autouse=True, scope="session")
def _no_network():
    """Any attempt to reach a non-loopback address fails the test that made it."""
    socket.socket.connect = _guarded_connect
    socket.socket.connect_ex = _guarded_connect_ex
    yield
    socket.socket.connect = _real_connect
    socket.socket.connect_ex = _real_connect_ex


DEMO_IMAGES = 400


@pytest.fixture(scope="session")
def demo_workspace(tmp_path_factory):
    """Real demo images (tuxpaint stamps, then emoji) embedded with efficientnet-lite0, a small
    TopK SAE named "demo" and its atlas; built once per session. Treat it as read-only."""
    from clipatlas.atlas import AtlasConfig, build_atlas
    from clipatlas.interp.config import LabelConfig, ScoreConfig
    from clipatlas.interp.run import label, score
    from clipatlas.sae import TopKConfig, TrainConfig, train
    from clipatlas.sources import available_demo_sets
    from clipatlas.store import embed

    sets = [name for name in ("tuxpaint", "emoji") if name in available_demo_sets()]
    if not sets:
        pytest.skip("the demo images are not installed (make demo-data installs them as root)")
    root = tmp_path_factory.mktemp("demo_workspace")
    embed([f"demo:{name}" for name in sets], root, encoder="efficientnet-lite0", limit=DEMO_IMAGES, progress=False)
    train(root, TrainConfig(name="demo", sae=TopKConfig(k=8), expansion=2, steps=300, batch_size=128))
    build_atlas(root, "demo", config=AtlasConfig(top_k=16, map_method="pca"))
    # Named as `clipatlas demo` names it: captions labels scored by the captions judge.
    label(root, "demo", LabelConfig(labeller="captions"))
    score(root, "demo", ScoreConfig(judge="captions"))
    return root


def name_with_scored_label(atlas, feature: int, text: str, value: float = 0.99, source: str = "vlm") -> int:
    """Add a label that was scored and beat its baseline (so it names the feature); returns its id."""
    return add_scored_label(atlas, feature, text, value, source=source)


def add_scored_label(
    atlas,
    feature: int,
    text: str,
    value: float,
    baseline: float = 0.5,
    p: float | None = None,
    n: int = 20,
    source="vlm",
) -> int:
    """Add a label with a captions-judge detection score (both its p-values `p`, where given); returns its id.
    With p > 0.05 a label that beats its baseline and chance is its feature's best guess, not its name."""
    from clipatlas.atlas import Label, Score
    from clipatlas.atlas.annotations import add_labels, add_scores
    from clipatlas.atlas.types import P_AGAINST_CHANCE, P_AGAINST_SHUFFLED

    (label_id,) = add_labels(atlas, [Label(feature, source, text, model="test-vlm", prompt_version="label-v1")])
    details = {} if p is None else {P_AGAINST_CHANCE: p, P_AGAINST_SHUFFLED: p}
    score = Score(
        feature, label_id, "detection", "captions", "auroc", value, baseline, n, validation=0.99, details=details
    )
    add_scores(atlas, [score])
    return label_id


def add_guess_and_coin_flip(atlas) -> tuple[int, int]:
    """On two features no label names: "dark birds", beating its baseline and chance with p 0.061 on 8 + 8
    images (a best guess), and "coin flip", above its baseline but below chance (nothing). Their ids."""
    unnamed = [int(f) for f in atlas.map_points().feature if int(f) in atlas.unnamed_reasons()]
    guessed, coin = unnamed[0], unnamed[1]
    add_scored_label(atlas, guessed, "dark birds", 0.95, baseline=0.62, p=0.061, n=16)
    add_scored_label(atlas, coin, "coin flip", 0.45, baseline=0.40, p=0.6, n=16)
    return guessed, coin


@pytest.fixture(scope="session")
def scored_label():
    """`name_with_scored_label`, for tests that need a feature named by a label of their choice."""
    return name_with_scored_label


TOPICS = ("cat", "dog", "car", "boat", "tree", "lamp", "fish", "bird")
COLOURS = ("red", "green", "blue", "yellow", "white", "black")


@pytest.fixture(scope="session")
def captioned_workspace(tmp_path_factory):
    """240 captioned images ("a red cat ..."), each a real PNG, embedded as topic + colour one-hots, and
    a TopK SAE (k=2) whose feature t fires on topic t (t < 8) and feature 8 + c on colour c; its atlas.
    Every caption is distinct (a serial number), so every image is its own caption group."""
    import numpy as np
    from PIL import Image

    from clipatlas.atlas import AtlasConfig, build_atlas
    from clipatlas.sae import ARCHITECTURES, make_config
    from clipatlas.store import write_store

    root = tmp_path_factory.mktemp("captioned")
    rng = np.random.default_rng(0)
    n, d = 240, 16
    x = rng.normal(0, 0.05, (n, d)).astype(np.float32)
    rows = []
    for i in range(n):
        topic, colour = i % len(TOPICS), (i // len(TOPICS)) % len(COLOURS)
        x[i, topic] += 3.0 * (1 + rng.random())  # varied strengths: the split interleaves by activation
        x[i, len(TOPICS) + colour] += 1.0 + rng.random()
        path = root / "images" / f"{i:03d}.png"
        path.parent.mkdir(exist_ok=True)
        Image.new("RGB", (24, 24), tuple(int(v) for v in rng.integers(0, 255, 3))).save(path)
        caption = f"a {COLOURS[colour]} {TOPICS[topic]}, photo {i:03d}"
        rows.append({"image_id": f"img{i:03d}", "uri": str(path), "source": "test", "caption": caption})
    write_store(root, x, rows)
    sae = ARCHITECTURES["topk"](make_config("topk", d_in=d, d_sae=d, k=2))
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(d))
        sae.b_enc.zero_()
        sae.W_dec.copy_(torch.eye(d))
        sae.b_dec.zero_()
    sae.save_pretrained(root / "saes" / "t")
    build_atlas(root, "t", config=AtlasConfig(top_k=8, map_method="pca", thumbnails=False))
    return root
