"""The command line's own contract: every option explains itself and shows its default."""

from __future__ import annotations

import argparse

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
        ("icons", "--strength", "7.5"),
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


def test_flags_not_given_leave_the_config_default(tmp_path):
    from clipatlas.cli.flags import given
    from clipatlas.store.config import EmbedConfig

    args = _subcommands()["embed"].parse_args(["x", "-w", str(tmp_path), "--batch-size", "8"])
    assert given(args, EmbedConfig) == {"batch_size": 8}
    assert EmbedConfig(**given(args, EmbedConfig)) == EmbedConfig(batch_size=8)
