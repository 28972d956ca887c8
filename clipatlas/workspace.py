"""Paths inside a workspace directory (see docs/ARCHITECTURE.md for the layout)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from clipatlas.errors import UserError


class WorkspaceError(UserError):
    """The workspace lacks what a command needs; the message says which command makes it."""


@dataclass(frozen=True)
class Workspace:
    root: Path

    def __init__(self, root: str | Path):
        object.__setattr__(self, "root", Path(root).expanduser().resolve())

    @property
    def store_dir(self) -> Path:
        return self.root / "store"

    @property
    def saes_dir(self) -> Path:
        return self.root / "saes"

    def sae_names(self) -> list[str]:
        if not self.saes_dir.is_dir():
            return []
        return sorted(p.name for p in self.saes_dir.iterdir() if (p / "cfg.json").is_file())

    def sae_dir(self, name: str | None = None, *, must_exist: bool = True) -> Path:
        """The directory of SAE `name`; with no name, the workspace's only SAE."""
        if name is not None:
            path = self.saes_dir / name
            if must_exist and not (path / "cfg.json").is_file():
                known = ", ".join(self.sae_names()) or "none"
                raise WorkspaceError(
                    f"no SAE named {name!r} in {self.root} (trained: {known}); "
                    f"train it with: clipatlas train -w {self.root} --name {name}"
                )
            return path
        names = self.sae_names()
        if not names:
            raise WorkspaceError(f"no trained SAE in {self.root}; run: clipatlas train -w {self.root}")
        if len(names) > 1:
            raise WorkspaceError(f"{self.root} has several SAEs ({', '.join(names)}); choose one with --name")
        return self.saes_dir / names[0]

    def atlas_dir(self, name: str | None = None) -> Path:
        return self.sae_dir(name) / "atlas"
