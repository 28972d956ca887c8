"""`clipatlas release`: a folder ready for the Hugging Face hub, and `push` to upload it.

The folder holds the SAE exactly as trained (`sae.safetensors` copied byte for byte and `cfg.json` less
the store's local path, so `SAE.from_pretrained(folder or hub id)` loads the same tensors), `metrics.json`,
the evaluation report where `clipatlas evaluate` wrote one, and a model card `README.md`: the hub's
metadata header (license, tags, base encoder, dataset) and the measured numbers, each printed from
the file it comes from.
`with_atlas` adds the atlas (its database, arrays and thumbnails) and the icons.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clipatlas._io import atomic_write_bytes, atomic_write_json, read_json
from clipatlas.errors import UserError
from clipatlas.sae.metrics import Metrics
from clipatlas.share.config import ReleaseConfig
from clipatlas.store import Store
from clipatlas.workspace import SAEFiles, Workspace

TAGS = ("sparse-autoencoder", "interpretability", "clip", "vision", "clipatlas")


@dataclass(frozen=True)
class Release:
    dir: Path
    files: list[str]  # relative paths, sorted
    bytes: int

    def summary_line(self) -> str:
        return f"release of {len(self.files)} files ({self.bytes / 1e6:,.1f} MB) in {self.dir}"


def hub_model_id(encoder: str) -> str:
    """The hub repo of a store's encoder id ('kandinsky-clip:org/repo@rev' -> 'org/repo'), else ''."""
    repo = encoder.split(":", 1)[-1].split("@", 1)[0]
    return repo if repo.count("/") == 1 and not Path(repo).is_absolute() else ""


def release(workspace, name: str | None, out: str | Path, config: ReleaseConfig | None = None) -> Release:
    """Write the release folder of SAE `name` into `out` (see the module's docstring)."""
    config = config or ReleaseConfig()
    ws = Workspace.of(workspace)
    files = ws.sae(name)
    if not files.weights.is_file():
        raise UserError(f"SAE {files.name} has no weights yet; train it first: clipatlas train -w {ws.root}")
    if not files.metrics.is_file():
        raise UserError(
            f"SAE {files.name} has no metrics.json; measure it first: clipatlas eval -w {ws.root} --name {files.name}"
        )
    target = SAEFiles(Path(out))
    if target.dir.exists() and any(target.dir.iterdir()) and not target.config.is_file():
        raise UserError(f"{target.dir} is not empty and is no SAE release; give an empty or new folder with -o")
    target.dir.mkdir(parents=True, exist_ok=True)
    # cfg.json as trained, less the store's local path: it means nothing on the hub and tells a folder layout
    atomic_write_json(target.config, {**read_json(files.config), "store": None})
    copied = [(files.weights, target.weights), (files.metrics, target.metrics)]
    copied += [
        (src, dst)
        for src, dst in [(files.eval_report, target.eval_report), (files.eval_markdown, target.eval_markdown)]
        if src.is_file()
    ]
    for source, destination in copied:
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, destination)
    if config.with_atlas:
        for folder, destination in ((files.atlas_dir, target.atlas_dir), (files.icons_dir, target.icons_dir)):
            if folder.is_dir():
                shutil.copytree(folder, destination, dirs_exist_ok=True)
    atomic_write_bytes(target.model_card, model_card(ws, files, config).encode())
    written = sorted(p for p in target.dir.rglob("*") if p.is_file())
    return Release(
        target.dir, [str(p.relative_to(target.dir)) for p in written], sum(p.stat().st_size for p in written)
    )


def model_card(ws: Workspace, files: SAEFiles, config: ReleaseConfig) -> str:
    """README.md: the hub's YAML metadata header, then what the SAE is, how to load it and its numbers."""
    from huggingface_hub import ModelCardData

    store = Store.open(ws.root)
    cfg = read_json(files.config)
    training = cfg.get("training", {})
    metrics = Metrics.from_dict(read_json(files.metrics))
    base_model = config.base_model or hub_model_id(store.encoder)
    data = ModelCardData(
        license=config.license,
        library_name="clipatlas",
        tags=list(TAGS),
        base_model=base_model or None,
        datasets=[config.dataset] if config.dataset else None,
    )
    rows = [
        ("architecture", cfg["arch"], "cfg.json"),
        ("input width (d_in)", cfg["d_in"], "cfg.json"),
        ("latents (d_sae)", cfg["d_sae"], "cfg.json"),
        *((key, cfg[key], "cfg.json") for key in ("k", "l1") if cfg.get(key) is not None),
        ("input scale", cfg["input_scale"], "cfg.json: embeddings are multiplied by it before encoding"),
        ("encoder", store.encoder, "the store's manifest.json"),
        ("images in the store", store.manifest.get("count", len(store)), "the store's manifest.json"),
        *(
            (key, training[key], "cfg.json training")
            for key in ("n_train", "n_eval", "trained_steps", "batch_size", "lr")
            if key in training
        ),
    ]
    measured = [
        ("held-out images", metrics.n_samples),
        ("FVU (fraction of variance unexplained)", metrics.fvu),
        ("explained variance", metrics.explained_variance),
        ("L0 (mean active latents per image)", metrics.l0),
        ("silent fraction (latents active on no held-out image)", metrics.silent_fraction),
        ("dense fraction", metrics.dense_fraction),
        ("cosine of embedding and reconstruction", metrics.cosine),
        *((("train FVU", metrics.train_fvu),) if metrics.train_fvu is not None else ()),
    ]
    if files.atlas_db.is_file():
        from clipatlas.atlas import Atlas

        summary = Atlas.open(ws, files.name).summary()
        measured.append(
            (f"dead fraction over all {summary['n_images']:,} store images (atlas)", summary["dead_over_store"])
        )
    lines = [
        "---",
        data.to_yaml(),
        "---",
        "",
        f"# {files.name}: a sparse autoencoder on {store.encoder} image embeddings",
        "",
        f"A {cfg['arch']} sparse autoencoder with {cfg['d_sae']:,} latents over {cfg['d_in']}-d image embeddings, "
        "trained with clipatlas.",
        "",
        "```python",
        "from clipatlas.sae import SAE",
        'sae = SAE.from_pretrained("THIS_REPO_OR_FOLDER")  # encode(x) takes the raw embeddings',
        "```",
        "",
        "## Configuration and data",
        "",
        "| setting | value | from |",
        "| --- | --- | --- |",
        *(f"| {key} | {_cell(value)} | {source} |" for key, value, source in rows),
        "",
        "## Measured (metrics.json, `clipatlas eval`)",
        "",
        "| metric | value |",
        "| --- | --- |",
        *(f"| {key} | {_cell(value)} |" for key, value in measured),
        "",
    ]
    if files.eval_markdown.is_file():
        lines += [
            "## Evaluation (eval/report.md, `clipatlas evaluate`)",
            "",
            files.eval_markdown.read_text().strip(),
            "",
        ]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    """Numbers as Python writes them (repr), so the card shows exactly what the JSON file holds."""
    return repr(value) if isinstance(value, float) else str(value)


def push(folder: str | Path, repo_id: str, private: bool = False) -> str:
    """Upload a release folder to the hub model repo `repo_id` (created if missing); returns the commit URL."""
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        commit = api.upload_folder(
            folder_path=str(folder), repo_id=repo_id, repo_type="model", commit_message="clipatlas release"
        )
    except Exception as exc:  # the hub raises many types: offline, auth, permissions
        raise UserError(f"could not push {folder} to {repo_id} ({exc}); log in with: huggingface-cli login") from exc
    return str(getattr(commit, "commit_url", commit))
