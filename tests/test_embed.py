"""`clipatlas embed` end to end with a tiny random CLIP: broken inputs, metadata, exactness, NaN
guard, and a run killed with SIGKILL that resumes to byte-identical shards."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from clipatlas.cli import main
from clipatlas.encoders import load_encoder
from clipatlas.sources import iter_source, open_uri
from clipatlas.store import Store, StoreError, embed

REPO = Path(__file__).resolve().parents[1]
N_GOOD = 20
SKIPPED = {
    "bomb.png": "too many pixels",
    "empty.jpg": "empty file",
    "readme.jpg": "not an image",
    "truncated.jpg": "truncated or corrupt image",
}


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> Path:
    """A tiny random CLIP vision tower and processor, saved like a real checkpoint."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny_clip")
    CLIPVisionModelWithProjection(
        CLIPVisionConfig(
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=32,
            patch_size=8,
            projection_dim=16,
        )
    ).save_pretrained(path)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(path)
    return path


def encode(image: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def random_image(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    height, width = rng.integers(20, 80, size=2)
    base = rng.integers(0, 256, 3)
    noise = rng.integers(-40, 40, (height, width, 3))
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))


def bomb_png() -> bytes:
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0))
        + chunk(b"IEND", b"")
    )


def make_corpus(root: Path, n_good: int = N_GOOD) -> Path:
    """`n_good` generated images (png/jpg, some captioned), an EXIF-rotated photo, and broken files."""
    root.mkdir(parents=True)
    for i in range(n_good):
        fmt, suffix = ("PNG", "png") if i % 2 == 0 else ("JPEG", "jpg")
        (root / f"img_{i:02d}.{suffix}").write_bytes(encode(random_image(i), fmt))
        if i % 3 == 0:
            (root / f"img_{i:02d}.txt").write_text(f"generated image number {i}\n")
    exif = Image.Exif()
    exif[0x0112] = 6
    (root / "rotated.jpg").write_bytes(encode(Image.new("RGB", (30, 20), (200, 30, 30)), "JPEG", exif=exif))
    broken = root / "broken"
    broken.mkdir()
    (broken / "empty.jpg").write_bytes(b"")
    jpeg = encode(random_image(99).resize((64, 64)), "JPEG")
    (broken / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (broken / "readme.jpg").write_text("not an image at all\n")
    (broken / "bomb.png").write_bytes(bomb_png())
    (broken / "cmyk.jpg").write_bytes(encode(Image.new("CMYK", (24, 16), (0, 255, 0, 0)), "JPEG"))
    (broken / "cmyk.caption").write_text("a magenta CMYK picture")
    (broken / "photo.dat").write_bytes(encode(random_image(7)))
    return root


def embed_cli(sources, workspace, encoder, *extra) -> int:
    return main(["embed", *map(str, sources), "-w", str(workspace), "--encoder", encoder, "--no-progress", *extra])


def store_files(workspace: Path) -> dict[str, bytes]:
    store = workspace / "store"
    return {p.relative_to(store).as_posix(): p.read_bytes() for p in sorted(store.rglob("*")) if p.is_file()}


def test_embed_cli_on_a_messy_folder(tmp_path, tiny_clip, capsys):
    corpus = make_corpus(tmp_path / "corpus")
    workspace = tmp_path / "ws"
    assert (
        embed_cli([corpus], workspace, f"hf:{tiny_clip}", "--batch-size", "4", "--shard-size", "8", "--workers", "2")
        == 0
    )
    out = capsys.readouterr().out
    assert f"embedded {N_GOOD + 3} images this run" in out and "skipped 4" in out
    for reason in SKIPPED.values():
        assert f"1 {reason}" in out

    store = Store.open(workspace)
    manifest = store.manifest
    assert manifest["complete"] and manifest["count"] == N_GOOD + 3 == len(store)
    assert manifest["consumed"] == N_GOOD + 3 + len(SKIPPED)
    assert [s["count"] for s in manifest["shards"]] == [8, 8, 7]
    assert manifest["encoder"] == f"hf:{tiny_clip}" and store.d == 16 and store.dtype == np.float16
    assert {Path(e["uri"]).name: e["reason"] for e in manifest["skipped"]} == SKIPPED
    assert len(manifest["skipped"]) == len(SKIPPED)

    # rows follow the source order, minus the skipped files; metadata describes each image
    expected_uris = [item.uri for item in iter_source(str(corpus)) if Path(item.uri).name not in SKIPPED]
    rows = store.metadata.to_pylist()
    assert [row["uri"] for row in rows] == expected_uris
    for row in rows:
        raw = Path(row["uri"]).read_bytes()
        assert row["sha256"] == hashlib.sha256(raw).hexdigest()
        assert (row["width"], row["height"]) == open_uri(row["uri"]).size
        assert row["source"] == str(corpus)
    by_name = {Path(row["uri"]).name: row for row in rows}
    assert (by_name["rotated.jpg"]["width"], by_name["rotated.jpg"]["height"]) == (20, 30)  # upright
    assert by_name["img_03.jpg"]["caption"] == "generated image number 3"
    assert by_name["img_01.jpg"]["caption"] is None
    assert by_name["cmyk.jpg"]["caption"] == "a magenta CMYK picture"
    assert (by_name["img_04.png"]["width"], by_name["img_04.png"]["height"]) == random_image(4).size
    assert len({row["image_id"] for row in rows}) == len(rows)

    # the stored embeddings are the encoder's, within float16 rounding
    encoder = load_encoder(f"hf:{tiny_clip}", device="cpu")
    expected = encoder.encode_images([open_uri(row["uri"]) for row in rows], batch_size=5)
    stored = store.to_array()
    np.testing.assert_allclose(stored, expected, rtol=2e-3, atol=2e-3)
    assert np.abs(stored - expected).max() <= np.abs(expected).max() * 2**-10
    png_row = [row["uri"] for row in rows].index(str(corpus / "img_04.png"))
    np.testing.assert_allclose(stored[png_row], encoder.encode_images([random_image(4)])[0], rtol=2e-3, atol=2e-3)

    assert main(["info", "-w", str(workspace), "--verify"]) == 0
    info = capsys.readouterr().out
    assert f"store: {N_GOOD + 3} embeddings of dimension 16 (float16) from encoder hf:{tiny_clip}" in info
    assert "3 shards, complete" in info and "all shards intact" in info
    assert "skipped 4: " in info and all(reason in info for reason in SKIPPED.values())


def test_complete_store_resume_does_nothing_and_encoder_change_is_refused(tmp_path, tiny_clip, capsys):
    corpus = make_corpus(tmp_path / "corpus", n_good=6)
    workspace = tmp_path / "ws"
    args = ("--batch-size", "4", "--shard-size", "4", "--workers", "0")
    assert embed_cli([corpus], workspace, f"hf:{tiny_clip}", *args) == 0
    before = store_files(workspace)
    capsys.readouterr()
    assert embed_cli([corpus], workspace, f"hf:{tiny_clip}", *args) == 0
    out = capsys.readouterr().out
    assert "embedded 0 images this run" in out and f"resumed after {6 + 3 + 4} inputs" in out
    assert store_files(workspace) == before

    other = tmp_path / "other_clip"
    shutil.copytree(tiny_clip, other)
    assert embed_cli([corpus], workspace, f"hf:{other}", *args) == 2
    err = capsys.readouterr().err
    message = next(line for line in err.splitlines() if line.startswith("error: "))
    assert "encoder=" in message and "new workspace" in message
    assert "Traceback" not in err
    with pytest.raises(StoreError, match="shard_size"):
        embed([str(corpus)], workspace, encoder=f"hf:{tiny_clip}", shard_size=5, workers=0, progress=False)
    assert store_files(workspace) == before


def test_images_added_to_a_folder_later_are_embedded_and_nothing_is_lost(tmp_path, tiny_clip, capsys):
    """A file that sorts into the middle of an embedded folder shifts the listing: a position-based
    resume would skip it; the changed listing is detected and only the new images are embedded."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for name, seed in (("a.png", 1), ("c.png", 3), ("e.png", 5)):
        (folder / name).write_bytes(encode(random_image(seed)))
    workspace = tmp_path / "ws"
    args = ("--batch-size", "2", "--shard-size", "2", "--workers", "0")
    assert embed_cli([folder], workspace, f"hf:{tiny_clip}", *args) == 0
    first = Store.open(workspace)
    original = {first.meta(i)["image_id"]: first[i] for i in range(len(first))}
    capsys.readouterr()

    (folder / "b.png").write_bytes(encode(random_image(2)))
    (folder / "d.jpg").write_bytes(encode(random_image(4), "JPEG"))
    assert embed_cli([folder], workspace, f"hf:{tiny_clip}", *args) == 0
    assert "sources changed" in capsys.readouterr().out
    store = Store.open(workspace)
    ids = store.metadata.column("image_id").to_pylist()
    assert len(ids) == len(set(ids)) == 5
    uris = sorted(Path(store.meta(i)["uri"]).name for i in range(len(store)))
    assert uris == ["a.png", "b.png", "c.png", "d.jpg", "e.png"]
    for image_id, embedding in original.items():  # the rows already there are untouched
        np.testing.assert_array_equal(store[store.row_of(image_id)], embedding)
    encoder = load_encoder(f"hf:{tiny_clip}")
    new_row = next(i for i in range(len(store)) if store.meta(i)["uri"].endswith("b.png"))
    np.testing.assert_allclose(store[new_row], encoder.encode_images([open_uri(str(folder / "b.png"))])[0], atol=2e-3)
    assert store.verify() == [] and store.complete


def test_nan_embeddings_stop_the_run_and_never_reach_the_store(tmp_path, tiny_clip, monkeypatch, capsys):
    corpus = make_corpus(tmp_path / "corpus", n_good=10)
    from clipatlas.store import pipeline

    real_load = pipeline.load_encoder
    calls = []

    def poisoned_load(*args, **kwargs):
        encoder = real_load(*args, **kwargs)
        real_encode = encoder.encode_tensors

        def encode_tensors(pixels):
            calls.append(len(pixels))
            out = real_encode(pixels).clone()
            if len(calls) == 3:
                out[1, 5] = float("nan")
            return out

        encoder.encode_tensors = encode_tensors
        return encoder

    monkeypatch.setattr(pipeline, "load_encoder", poisoned_load)
    settings = {"encoder": f"hf:{tiny_clip}", "batch_size": 2, "shard_size": 4, "workers": 0, "progress": False}
    with pytest.raises(StoreError, match="NaN"):
        embed([str(corpus)], tmp_path / "ws", **settings)
    assert len(calls) == 3
    store = Store.open(tmp_path / "ws")
    assert not store.complete and len(store) == 4  # the first shard, committed before the bad batch
    assert np.isfinite(store.to_array()).all()

    calls.clear()
    assert (
        embed_cli(
            [corpus], tmp_path / "ws_cli", f"hf:{tiny_clip}", "--batch-size", "2", "--shard-size", "4", "--workers", "0"
        )
        == 2
    )
    assert "NaN" in capsys.readouterr().err
    assert np.isfinite(Store.open(tmp_path / "ws_cli").to_array()).all()

    # once the encoder is fixed, the same command finishes the interrupted store exactly
    monkeypatch.setattr(pipeline, "load_encoder", real_load)
    embed([str(corpus)], tmp_path / "ws", **settings)
    embed([str(corpus)], tmp_path / "ref", **settings)
    assert store_files(tmp_path / "ws") == store_files(tmp_path / "ref")


def feed_fifo(path: Path, data: bytes) -> threading.Thread:
    """Serve `data` once to the next reader of the named pipe `path`."""

    def serve():
        with open(path, "wb") as fh:  # blocks until a reader opens the pipe
            fh.write(data)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


def wait_until_blocked(process: subprocess.Popen, manifest_path: Path, timeout: float = 120.0) -> None:
    """Until the process waits for a writer on the named pipe (or, where the kernel does not say,
    until its manifest has not changed for 3 s)."""
    deadline = time.monotonic() + timeout
    last, since = None, time.monotonic()
    while time.monotonic() < deadline and process.poll() is None:
        try:
            wchan = Path(f"/proc/{process.pid}/wchan").read_text().strip()
        except OSError:
            wchan = ""
        current = manifest_path.read_bytes() if manifest_path.is_file() else None
        if current is not None and "partner" in wchan:
            return
        if current != last:
            last, since = current, time.monotonic()
        elif current is not None and time.monotonic() - since > 3.0:
            return
        time.sleep(0.05)


def test_killed_run_resumes_to_byte_identical_shards(tmp_path, tiny_clip, capsys):
    """The run is killed (SIGKILL) while blocked on input 25, a named pipe nobody writes to yet
    (a stalled network mount): shards before it are committed, rows and a skip after the last
    shard are pending and lost. The resumed store must equal an uninterrupted one byte for byte."""
    images = tmp_path / "images"
    images.mkdir()
    entries = []
    for i in range(36):
        (images / f"img_{i:02d}.png").write_bytes(encode(random_image(100 + i)))
        entries.append(f"img_{i:02d}.png")
    (images / "empty.png").write_bytes(b"")
    jpeg = encode(random_image(5).resize((64, 64)), "JPEG")
    (images / "truncated.jpg").write_bytes(jpeg[:300])
    entries.insert(5, "empty.png")
    entries.insert(21, "truncated.jpg")
    entries.insert(25, "slow.png")
    os.mkfifo(images / "slow.png")
    slow_bytes = encode(random_image(999))
    listing = images / "list.txt"
    listing.write_text("# a list with a slow network mount in the middle\n" + "\n".join(entries) + "\n")
    args = ["--encoder", f"hf:{tiny_clip}", "--batch-size", "2", "--shard-size", "4", "--workers", "0", "--no-progress"]

    killed = tmp_path / "killed"
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    with open(tmp_path / "killed.log", "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "clipatlas", "embed", str(listing), "-w", str(killed), *args],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            manifest_path = killed / "store" / "manifest.json"
            wait_until_blocked(process, manifest_path)
            assert process.poll() is None, (tmp_path / "killed.log").read_text()
            process.send_signal(signal.SIGKILL)
            assert process.wait(timeout=30) == -signal.SIGKILL
        finally:
            if process.poll() is None:
                process.kill()
    partial_files = store_files(killed)
    partial = json.loads(partial_files["manifest.json"])
    # Blocked in the batch of inputs 24-25. A batch never straddles shards, so the batch with the
    # empty file closed shard 1 early at 3 rows; the last commit was at input 20, and the 3 rows
    # and the truncated-file skip of inputs 20-23 were pending when the process died.
    assert not partial["complete"] and partial["consumed"] == 20 and partial["count"] == 19
    assert [shard["count"] for shard in partial["shards"]] == [4, 3, 4, 4, 4]
    assert partial["skipped"] == [{"uri": str(images / "empty.png"), "reason": "empty file"}]
    shard_count = len(partial["shards"])
    assert sorted(partial_files) == sorted(
        ["manifest.json"]
        + [f"img_emb/img_emb_{i:05d}.npy" for i in range(shard_count)]
        + [f"metadata/metadata_{i:05d}.parquet" for i in range(shard_count)]
    )
    assert "embedded" not in (tmp_path / "killed.log").read_text()  # it never got to its summary

    feeder = feed_fifo(images / "slow.png", slow_bytes)
    assert main(["embed", str(listing), "-w", str(killed), *args]) == 0
    feeder.join(timeout=10)
    assert not feeder.is_alive()
    assert f"resumed after {partial['consumed']} inputs" in capsys.readouterr().out

    reference = tmp_path / "reference"
    feeder = feed_fifo(images / "slow.png", slow_bytes)
    assert main(["embed", str(listing), "-w", str(reference), *args]) == 0
    feeder.join(timeout=10)
    assert not feeder.is_alive()

    resumed_files, reference_files = store_files(killed), store_files(reference)
    assert sorted(resumed_files) == sorted(reference_files)  # no stray temporary files either
    shard_names = [name for name in reference_files if name.startswith(("img_emb/", "metadata/"))]
    assert len(shard_names) == 2 * len(json.loads(reference_files["manifest.json"])["shards"])
    for name, data in partial_files.items():  # what survived the kill was already final
        if name != "manifest.json":
            assert data == reference_files[name], name
    for name in shard_names:
        assert hashlib.sha256(resumed_files[name]).hexdigest() == hashlib.sha256(reference_files[name]).hexdigest(), (
            name
        )
        if name.endswith(".npy"):
            np.testing.assert_array_equal(np.load(killed / "store" / name), np.load(reference / "store" / name))
    resumed_manifest = json.loads(resumed_files["manifest.json"])
    reference_manifest = json.loads(reference_files["manifest.json"])
    assert resumed_manifest == reference_manifest
    assert reference_manifest["count"] == 37 and reference_manifest["consumed"] == 39 and reference_manifest["complete"]
    assert [e["reason"] for e in reference_manifest["skipped"]] == ["empty file", "truncated or corrupt image"]
    store = Store.open(killed)
    slow_row = store.row_of(next(i.image_id for i in iter_source(str(listing)) if i.uri.endswith("slow.png")))
    assert store.meta(slow_row)["sha256"] == hashlib.sha256(slow_bytes).hexdigest()


def test_nothing_embeddable_exits_non_zero_with_one_line(tmp_path, tiny_clip, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert embed_cli([empty], tmp_path / "ws", f"hf:{tiny_clip}") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: no files in") and "\n" not in err
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "notes.txt.jpg").write_bytes(b"not an image at all")
    (junk / "zero.png").write_bytes(b"")
    assert embed_cli([junk], tmp_path / "ws2", f"hf:{tiny_clip}") == 2
    err = capsys.readouterr().err.strip()
    assert "nothing in" in err and "could be embedded" in err and "manifest.json" in err and "\n" not in err


def test_hub_encoder_without_network_fails_fast_with_the_offline_options(tmp_path, monkeypatch, capsys):
    import huggingface_hub.constants

    folder = tmp_path / "imgs"
    folder.mkdir()
    random_image(0).save(folder / "a.png")
    # HF_HUB_OFFLINE is set for the whole test session: the first answer says so
    assert main(["embed", str(folder), "-w", str(tmp_path / "ws"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "HF_HUB_OFFLINE" in err and "efficientnet-lite0" in err and "\n" not in err
    # a user without that variable and without a network: one attempt (refused by the test's socket guard)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    assert main(["embed", str(folder), "-w", str(tmp_path / "ws"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "cannot reach the Hugging Face hub" in err and "kandinsky-clip:PRIOR" in err and "\n" not in err


def test_labels_from_folder_then_from_a_csv_relabel_without_re_embedding(tmp_path, tiny_clip, capsys):
    corpus = tmp_path / "corpus"
    for i, cls in enumerate(["cats", "cats", "dogs"]):
        (corpus / cls).mkdir(parents=True, exist_ok=True)
        (corpus / cls / f"{i}.png").write_bytes(encode(random_image(i)))
    workspace = tmp_path / "ws"
    args = ("--batch-size", "2", "--workers", "0")
    assert embed_cli([corpus], workspace, f"hf:{tiny_clip}", *args, "--labels-from", "folder") == 0
    store = Store.open(workspace)
    assert store.metadata.column("label").to_pylist() == ["cats", "cats", "dogs"]
    embeddings = store.to_array()

    (tmp_path / "labels.csv").write_text("path,label\ncorpus/cats/0.png,tabby\n")
    capsys.readouterr()
    assert embed_cli([corpus], workspace, f"hf:{tiny_clip}", *args, "--labels-from", str(tmp_path / "labels.csv")) == 0
    out = capsys.readouterr().out
    assert "embedded 0 images this run" in out and "labelled 1 images already in the store" in out
    store = Store.open(workspace)
    assert store.metadata.column("label").to_pylist() == ["tabby", "cats", "dogs"]  # unnamed rows keep theirs
    np.testing.assert_array_equal(store.to_array(), embeddings)
    assert store.verify() == []
