"""The workspace layout: the one place where file and folder names are spelled.

```
W/
  store/                         the embedding store (its inner layout: clipatlas.store.core)
  saes/<name>/                   one SAE (`SAEFiles`): cfg.json, sae.safetensors, metrics.json,
                                 train_log.jsonl, checkpoints/, atlas/, icons/, eval/,
                                 interp/ (VLM answer cache, label report and plot)
  eval/                          `clipatlas evaluate --compare`: several SAEs side by side
  recipes/                       steering recipes written by `clipatlas demo`
  web/uploads/                   images uploaded to the playground (.png) and their embeddings (.npy)
  web/jobs/<atlas build id>/     playground generations (`clipatlas serve`), shared by its worker processes
  index/retrieval.faiss          the approximate retrieval index over the store (`clipatlas index`),
  index/retrieval.json           and what it was built from (the store's shards, its settings)
```

Every stage asks `Workspace` (or `SAEFiles`, for an SAE folder anywhere, such as a release)
for a path instead of composing one; see docs/ARCHITECTURE.md.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from clipatlas.errors import UserError

STORE_DIR = "store"
SAES_DIR = "saes"
RECIPES_DIR = "recipes"
UPLOADS_DIR = "web/uploads"
JOBS_DIR = "web/jobs"
INDEX_DIR = "index"
RETRIEVAL_INDEX = "retrieval.faiss"
RETRIEVAL_INDEX_META = "retrieval.json"
UPLOAD_ID = re.compile(r"[0-9a-f]{32}")  # an upload is named by its hash: no id can name another file

SAE_CONFIG = "cfg.json"
SAE_WEIGHTS = "sae.safetensors"
SAE_METRICS = "metrics.json"
MODEL_CARD = "README.md"  # a release folder's model card, with the hub's metadata header
TRAIN_LOG = "train_log.jsonl"
CHECKPOINTS_DIR = "checkpoints"
ATLAS_DIR = "atlas"
ATLAS_DB = "atlas.sqlite"
ICONS_DIR = "icons"
EVAL_DIR = "eval"
ICON_MANIFEST = "icons.json"
ICON_VERIFY_REPORT = "verify.json"
STEERING_SUCCESS = "steering-success"
EVAL_REPORT = "report.json"
EVAL_MARKDOWN = "report.md"
EVAL_SECTIONS_DIR = "sections"  # finished sections, reused when an interrupted evaluation is re-run
COMPARE_REPORT = "compare.json"
COMPARE_MARKDOWN = "compare.md"
INTERP_DIR = "interp"
VLM_CACHE = "vlm_cache.sqlite"
INTERP_REPORT = "report.md"
INTERP_PLOT = "auroc.png"


class WorkspaceError(UserError):
    """The workspace lacks what a command needs; the message says which command makes it."""


@dataclass(frozen=True)
class SAEFiles:
    """The files of one SAE folder: inside a workspace (`Workspace.sae`) or anywhere else."""

    dir: Path

    @property
    def name(self) -> str:
        return self.dir.name

    @property
    def config(self) -> Path:
        return self.dir / SAE_CONFIG

    @property
    def weights(self) -> Path:
        return self.dir / SAE_WEIGHTS

    @property
    def metrics(self) -> Path:
        return self.dir / SAE_METRICS

    @property
    def model_card(self) -> Path:
        return self.dir / MODEL_CARD

    @property
    def train_log(self) -> Path:
        return self.dir / TRAIN_LOG

    @property
    def checkpoints_dir(self) -> Path:
        return self.dir / CHECKPOINTS_DIR

    @property
    def atlas_dir(self) -> Path:
        return self.dir / ATLAS_DIR

    @property
    def atlas_db(self) -> Path:
        return self.atlas_dir / ATLAS_DB

    @property
    def icons_dir(self) -> Path:
        return self.dir / ICONS_DIR

    @property
    def eval_dir(self) -> Path:
        return self.dir / EVAL_DIR

    @property
    def eval_report(self) -> Path:
        return self.eval_dir / EVAL_REPORT

    @property
    def eval_markdown(self) -> Path:
        return self.eval_dir / EVAL_MARKDOWN

    def eval_plot(self, kind: str) -> Path:
        return self.eval_dir / f"{kind}.png"

    def eval_section(self, section: str) -> Path:
        return self.eval_dir / EVAL_SECTIONS_DIR / f"{section}.json"

    @property
    def interp_dir(self) -> Path:
        return self.dir / INTERP_DIR

    @property
    def vlm_cache(self) -> Path:
        """Every VLM answer, keyed by model, prompt version, feature and images: re-runs cost nothing twice."""
        return self.interp_dir / VLM_CACHE

    @property
    def interp_report(self) -> Path:
        return self.interp_dir / INTERP_REPORT

    @property
    def interp_plot(self) -> Path:
        return self.interp_dir / INTERP_PLOT

    def icon(self, feature: int) -> Path:
        return self.icons_dir / f"{int(feature)}.png"

    @property
    def icon_manifest(self) -> Path:
        """What the icons were made from: their identity and, for retrieval, each feature's image."""
        return self.icons_dir / ICON_MANIFEST

    @property
    def icon_verify_report(self) -> Path:
        return self.icons_dir / ICON_VERIFY_REPORT

    def steering_success(self, decoder: str) -> Path:
        """The steering success curve measured with `decoder` (a registry name such as retrieval)."""
        return self.eval_dir / f"{STEERING_SUCCESS}-{decoder}.json"

    def steering_success_plot(self, decoder: str) -> Path:
        return self.eval_dir / f"{STEERING_SUCCESS}-{decoder}.png"

    @property
    def is_trained(self) -> bool:
        return self.config.is_file()


@dataclass(frozen=True)
class Workspace:
    root: Path

    def __init__(self, root: str | Path):
        object.__setattr__(self, "root", Path(root).expanduser().resolve())

    @classmethod
    def of(cls, workspace: str | Path | Workspace) -> Workspace:
        """A Workspace from a path, or the Workspace itself."""
        return workspace if isinstance(workspace, Workspace) else cls(workspace)

    @property
    def store_dir(self) -> Path:
        return self.root / STORE_DIR

    @property
    def saes_dir(self) -> Path:
        return self.root / SAES_DIR

    @property
    def recipes_dir(self) -> Path:
        return self.root / RECIPES_DIR

    @property
    def uploads_dir(self) -> Path:
        return self.root / UPLOADS_DIR

    def jobs_dir(self, atlas_build_id: str) -> Path:
        """Generation jobs of the web server for one atlas build: a rebuilt atlas never meets old results."""
        return self.root / JOBS_DIR / (atlas_build_id or "unversioned")

    def upload(self, upload_id: str) -> Path:
        """The file of an image uploaded to the playground (re-encoded PNG) by its id."""
        if not UPLOAD_ID.fullmatch(upload_id):
            raise UserError(f"{upload_id!r} is not an upload id (32 hex digits); upload the image again")
        return self.uploads_dir / f"{upload_id}.png"

    def upload_embedding(self, upload_id: str) -> Path:
        """The encoder's embedding of an uploaded image (.npy beside it), for every server process."""
        return self.upload(upload_id).with_suffix(".npy")

    @property
    def retrieval_index(self) -> Path:
        return self.root / INDEX_DIR / RETRIEVAL_INDEX

    @property
    def retrieval_index_meta(self) -> Path:
        return self.root / INDEX_DIR / RETRIEVAL_INDEX_META

    @property
    def eval_dir(self) -> Path:
        return self.root / EVAL_DIR

    @property
    def compare_report(self) -> Path:
        return self.eval_dir / COMPARE_REPORT

    @property
    def compare_markdown(self) -> Path:
        return self.eval_dir / COMPARE_MARKDOWN

    def compare_plot(self, kind: str) -> Path:
        return self.eval_dir / f"compare_{kind}.png"

    def sae_names(self, hidden: bool = False) -> list[str]:
        """The trained SAEs; names starting with "." (auxiliary SAEs, e.g. `evaluate`'s seed partners)
        only with `hidden`, so they never make a workspace's one SAE ambiguous."""
        if not self.saes_dir.is_dir():
            return []
        names = (p.name for p in self.saes_dir.iterdir() if SAEFiles(p).is_trained)
        return sorted(name for name in names if hidden or not name.startswith("."))

    def sae(self, name: str | None = None, *, must_exist: bool = True) -> SAEFiles:
        """The files of SAE `name`; with no name, the workspace's only SAE."""
        if name is not None:
            files = SAEFiles(self.saes_dir / name)
            if must_exist and not files.is_trained:
                known = ", ".join(self.sae_names()) or "none"
                raise WorkspaceError(
                    f"no SAE named {name!r} in {self.root} (trained: {known}); "
                    f"train it with: clipatlas train -w {self.root} --name {name}"
                )
            return files
        names = self.sae_names()
        if not names:
            raise WorkspaceError(f"no trained SAE in {self.root}; run: clipatlas train -w {self.root}")
        if len(names) > 1:
            raise WorkspaceError(f"{self.root} has several SAEs ({', '.join(names)}); choose one with --name")
        return SAEFiles(self.saes_dir / names[0])
