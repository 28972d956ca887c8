"""The README's own-folder walkthrough and its sweep example, run as a newcomer would run them."""

from __future__ import annotations

import logging
import re
import shlex
import shutil
from pathlib import Path

import pytest

from clipatlas.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"
TUXPAINT = Path("/usr/share/tuxpaint/stamps")


def _block_after(marker: str) -> str:
    """The fenced code block that follows an HTML comment containing `marker`."""
    text = README.read_text()
    found = re.search(rf"<!-- {re.escape(marker)}[^>]*-->\s*```\w*\n(.*?)```", text, re.S)
    assert found, f"README has no code block after <!-- {marker} -->"
    return found.group(1)


def _commands(block: str) -> list[list[str]]:
    lines = [line.split("#")[0].strip() for line in block.splitlines()]
    return [shlex.split(line)[1:] for line in lines if line.startswith("clipatlas ")]


@pytest.mark.skipif(not TUXPAINT.is_dir(), reason="needs Debian's tuxpaint-stamps-default for real images")
def test_readme_own_folder_walkthrough_runs_end_to_end(tmp_path, monkeypatch, capsys, caplog):
    import clipatlas.web.server

    caplog.set_level(logging.INFO)
    photos = tmp_path / "my-photos"
    photos.mkdir()
    for path in sorted(TUXPAINT.rglob("*.png"))[:80]:
        shutil.copy(path, photos / f"{path.parent.name}-{path.name}")
    (photos / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    served = []
    monkeypatch.setattr(clipatlas.web.server, "serve", lambda *args: served.append(args))
    workspace = tmp_path / "my-atlas"
    commands = _commands(_block_after("own-folder-walkthrough"))
    assert [c[0] for c in commands] == ["embed", "train", "atlas", "icons", "serve"]
    for args in commands:
        args = [str(photos) if a == "~/my-photos" else str(workspace) if a == "my-atlas" else a for a in args]
        assert main(args) == 0, args
    out = capsys.readouterr().out
    assert "embedded 80 images" in out and "1 not an image" in out
    # 72 training rows: the settings derived from that size are printed (starred) before training
    assert "72 training rows -> batch 64*, epochs 50*, steps 57, expansion 0.0625*, k 16*, lr 0.001*" in caplog.text
    assert "features alive over 80 images" in out
    assert served and served[0][0] == workspace


def test_readme_sweep_example_runs(tmp_path):
    import numpy as np

    from clipatlas.sae.sweep import load_sweep
    from clipatlas.store import write_store

    sweep = tmp_path / "sweep.toml"
    sweep.write_text(_block_after("sweep-example"))
    names = [c.name for c in load_sweep(sweep)]
    assert names == ["sweep-topk-x2-k8", "sweep-topk-x2-k16", "sweep-batchtopk-x2-k8", "sweep-batchtopk-x2-k16"]
    write_store(tmp_path / "ws", np.random.default_rng(0).normal(size=(300, 16)).astype(np.float32))
    args = ["train", "-w", str(tmp_path / "ws"), "--sweep", str(sweep), "--epochs", "2", "--no-eval"]
    assert main(args) == 0
    assert sorted(p.name for p in (tmp_path / "ws" / "saes").iterdir()) == sorted(names)
