"""Issue 15: a broken workspace file is one line naming it and the command that rebuilds it, in every
command that reads it; the command line refuses a missing output folder and a non-finite edit."""

from __future__ import annotations

import shutil

import pytest

from clipatlas.atlas.check import BrokenWorkspace, check_workspace
from clipatlas.atlas.synthetic import SyntheticAtlasConfig, write_synthetic_atlas
from clipatlas.cli import main


@pytest.fixture(scope="module")
def intact(tmp_path_factory):
    return write_synthetic_atlas(
        tmp_path_factory.mktemp("check"), SyntheticAtlasConfig(n_features=64, n_images=40)
    ).root


@pytest.fixture
def ws(intact, tmp_path):
    copy = tmp_path / "ws"
    shutil.copytree(intact, copy)
    return copy


def garbage(path, size=3000):
    path.write_bytes(bytes(range(256)) * (size // 256))


ATLAS = "saes/synthetic/atlas"
BREAKS = {
    "garbage atlas": (lambda w: garbage(w / ATLAS / "atlas.sqlite"), "atlas.sqlite is damaged", "clipatlas atlas -w"),
    "truncated atlas": (
        lambda w: (w / ATLAS / "atlas.sqlite").write_bytes((w / ATLAS / "atlas.sqlite").read_bytes()[:4096]),
        "atlas.sqlite is damaged",
        "clipatlas atlas -w",
    ),
    "no arrays": (lambda w: shutil.rmtree(w / ATLAS / "arrays-synthetic"), "arrays-synthetic is missing", "atlas -w"),
    "truncated hist": (
        lambda w: (w / ATLAS / "arrays-synthetic/hist.npy").write_bytes(b"\x93NUMPY"),
        "hist.npy is unreadable",
        "clipatlas atlas -w",
    ),
    "no metadata shard": (
        lambda w: (w / "store/metadata/metadata_00000.parquet").unlink(),
        "metadata_00000.parquet is missing",
        "clipatlas embed array -w",
    ),
    "garbage metadata shard": (
        lambda w: garbage(w / "store/metadata/metadata_00000.parquet"),
        "metadata_00000.parquet is unreadable",
        "clipatlas embed",
    ),
    "no store shard": (
        lambda w: (w / "store/img_emb/img_emb_00000.npy").unlink(),
        "img_emb_00000.npy is missing",
        "clipatlas embed",
    ),
    "garbage manifest": (
        lambda w: (w / "store/manifest.json").write_text("{garbage"),
        "manifest.json is not a store manifest",
        "clipatlas embed SOURCE -w",
    ),
    "garbage weights": (
        lambda w: (w / "saes/synthetic/sae.safetensors").write_bytes(b"x"),
        "sae.safetensors is unreadable",
        "clipatlas train -w",
    ),
}


@pytest.mark.parametrize("broken", list(BREAKS))
def test_check_names_the_broken_file_and_its_rebuild(ws, broken):
    breaks, named, command = BREAKS[broken]
    check_workspace(ws)
    breaks(ws)
    with pytest.raises(BrokenWorkspace) as found:
        check_workspace(ws)
    message = str(found.value)
    assert named in message and command in message and str(ws) in message and "\n" not in message


@pytest.mark.parametrize(
    "broken", ["garbage atlas", "truncated atlas", "no arrays", "no metadata shard", "no store shard"]
)
@pytest.mark.parametrize("command", ["steer", "serve"])
def test_commands_print_one_line_and_exit_2(ws, broken, command, capsys):
    """Before: a raw traceback (exit 1) for a damaged atlas.sqlite or a missing arrays folder."""
    breaks, named, rebuild = BREAKS[broken]
    breaks(ws)
    argv = {"steer": ["steer", "img000001", "--edit", "ban:3", "-o", str(ws / "out.png")], "serve": ["serve"]}[command]
    assert main([*argv, "-w", str(ws)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and named in err and rebuild in err
    assert not (ws / "out.png").exists()


def test_info_verify_names_a_damaged_atlas(ws, capsys):
    garbage(ws / ATLAS / "atlas.sqlite")
    assert main(["info", "-w", str(ws), "--verify"]) == 1
    out = capsys.readouterr().out
    assert "sae synthetic: BROKEN" in out and "atlas.sqlite is damaged" in out and "clipatlas atlas -w" in out


def test_verify_rehashes_store_shards(ws):
    shard = ws / "store/img_emb/img_emb_00000.npy"
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF  # same size and header: only the checksum can tell
    shard.write_bytes(bytes(data))
    check_workspace(ws)
    with pytest.raises(BrokenWorkspace, match="img_emb_00000.npy does not match its checksum"):
        check_workspace(ws, verify=True)


# ---- the command line's own inputs -------------------------------------------------------------------
def test_output_folder_must_exist(ws, tmp_path, capsys):
    """Before: `-o /nonexistent/dir/out.png` silently created the folders."""
    missing = tmp_path / "no" / "such" / "dir"
    with pytest.raises(SystemExit) as exit_:
        main(["steer", "img000001", "-w", str(ws), "--edit", "ban:3", "-o", str(missing / "out.png")])
    assert exit_.value.code == 2
    assert f"no folder {missing}" in capsys.readouterr().err and not missing.parent.exists()


def test_overflowing_edit_exits_2_with_one_line(ws, capsys):
    """Before: exit 0, an arbitrary image written and `cosine nan` printed."""
    out = ws / "out.png"
    assert (
        main(["steer", "img000001", "-w", str(ws), "--edit", "set:3=1e30", "--edit", "scale:3=1e30", "-o", str(out)])
        == 2
    )
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "NaN or infinite" in err and not out.exists()


def test_command_line_may_read_a_file_the_user_names(ws, tmp_path, capsys):
    """The web refuses files; the command line reads the one the user typed (embedded by the store's encoder,
    which a synthetic store lacks: the error is then about the encoder, not about the file)."""
    from PIL import Image

    image = tmp_path / "mine.png"
    Image.new("RGB", (16, 16), (10, 200, 30)).save(image)
    main(["steer", str(image), "-w", str(ws), "--edit", "ban:3", "-o", str(tmp_path / "out.png")])
    assert "neither a store image id" not in capsys.readouterr().err
