"""Test-wide guards: offline, one torch thread, no network connections."""

from __future__ import annotations

import os
import socket

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

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
    return root
