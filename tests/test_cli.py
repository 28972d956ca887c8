"""The command line's own contract: every option explains itself and shows its default."""

from __future__ import annotations

import argparse
import re

import pytest

from clipatlas.cli import build_parser


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


def test_every_option_has_help():
    missing = [
        f"{name} {action.option_strings or action.dest}"
        for name, sub in _subcommands().items()
        for action in sub._actions
        if not isinstance(action, argparse._HelpAction) and not action.help
    ]
    assert missing == []


@pytest.mark.parametrize(
    "command,option,default",
    [
        ("steer", "--decoder", "retrieval"),
        ("icons", "--features", "alive"),
        ("icons", "--decoder", "retrieval"),
        ("serve", "--port", "8000"),
        ("train", "--device", "auto"),
        ("embed", "--device", "auto"),
        ("atlas", "--device", "auto"),
        ("eval", "--device", "auto"),
    ],
)
def test_help_shows_the_configs_default(command, option, default):
    action = next(a for a in _subcommands()[command]._actions if option in a.option_strings)
    assert f"(default: {default})" in action.help


def test_help_says_where_a_measured_default_comes_from():
    action = next(a for a in _subcommands()["icons"]._actions if "--strength" in a.option_strings)
    assert "(default: the smallest strength at which this SAE's measured steering success" in " ".join(
        action.help.split()
    )


def test_flags_not_given_leave_the_config_default(tmp_path):
    from clipatlas.cli.flags import given
    from clipatlas.store.config import EmbedConfig

    args = _subcommands()["embed"].parse_args(["x", "-w", str(tmp_path), "--batch-size", "8"])
    assert given(args, EmbedConfig) == {"batch_size": 8}
    assert EmbedConfig(**given(args, EmbedConfig)) == EmbedConfig(batch_size=8)


def test_tables_are_never_cut(monkeypatch, capsys):
    """In a pipe: Markdown with every cell whole; in a narrow terminal: rich folds cells instead of '…'."""
    import sys

    import rich.console

    from clipatlas.cli.tables import print_table

    rows = [["sweep-batchtopk-x16-k64-l1_decoder_normFalse", "0.123", "a long explanation of a number"]]
    print_table(["sae", "FVU", "note"], rows)
    out = capsys.readouterr().out
    assert "| sweep-batchtopk-x16-k64-l1_decoder_normFalse | 0.123 | a long explanation of a number |" in out
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    real_console = rich.console.Console
    monkeypatch.setattr(rich.console, "Console", lambda **kw: real_console(width=30, **kw))
    print_table(["sae", "FVU", "note"], rows)
    narrow = re.sub(r"\x1b\[[0-9;]*m", "", capsys.readouterr().out)  # without the terminal's bold codes
    assert "…" not in narrow and max(len(line) for line in narrow.splitlines()) <= 30
    first_column = "".join(line.split("│")[1].strip() for line in narrow.splitlines() if line.startswith("│"))
    assert first_column == rows[0][0]  # folded over lines, every character kept


def test_small_images_are_enlarged_sharply_in_thumbnails():
    from PIL import Image

    from clipatlas.atlas.thumbs import thumbnail_image

    tiny = Image.new("L", (28, 28), 0)
    tiny.putpixel((3, 5), 255)
    thumb = thumbnail_image(tiny, 128)
    assert thumb.size == (112, 112) and thumb.mode == "RGB"
    assert thumb.getpixel((3 * 4, 5 * 4)) == (255, 255, 255) and thumb.getpixel((3 * 4 + 3, 5 * 4 + 3)) == (
        255,
        255,
        255,
    )
    assert thumb.getpixel((3 * 4 + 4, 5 * 4)) == (0, 0, 0)  # nearest neighbour: no blur into the next pixel
    assert thumbnail_image(Image.new("RGB", (1000, 500)), 128).size == (128, 64)
