"""A workspace in a few lines: the store, and what later stages left beside it.

It reads every stage's output, so it sits above the stages (like `demo`), not inside one.
"""

from __future__ import annotations

import collections
from pathlib import Path

from clipatlas._io import SchemaError, read_json
from clipatlas.atlas.check import BrokenWorkspace, check_store, check_workspace
from clipatlas.store.core import Store
from clipatlas.workspace import SAEFiles, Workspace


def workspace_summary(workspace: str | Path, verify: bool = False) -> tuple[str, list[str]]:
    """(printable summary, problems found); `verify` re-hashes every shard."""
    ws = Workspace(workspace)
    check_store(ws)  # a missing or unreadable shard is one line naming it, not a traceback
    store = Store.open(ws.root)
    manifest = store.manifest
    reasons = collections.Counter(entry["reason"] for entry in manifest.get("skipped", []))
    lines = [
        f"workspace {ws.root}",
        f"store: {len(store)} embeddings of dimension {store.d} ({store.dtype}) from encoder {store.encoder}",
        f"  {len(manifest['shards'])} shards, "
        + ("complete" if store.complete else "INCOMPLETE: re-run clipatlas embed to finish"),
        f"  sources: {', '.join(manifest.get('sources', [])) or '-'}",
        f"  skipped {sum(reasons.values())}"
        + (": " + ", ".join(f"{n} {r}" for r, n in reasons.most_common()) if reasons else ""),
    ]
    problems = store.verify() if verify else []
    if verify:
        lines.append("  checksums: " + ("all shards intact" if not problems else "; ".join(problems)))
    for name in ws.sae_names():
        files = ws.sae(name)
        try:
            check_workspace(ws, name, ("sae", "atlas") if files.atlas_db.is_file() else ("sae",), verify=verify)
        except BrokenWorkspace as exc:
            problems.append(str(exc))
            lines.append(f"sae {name}: BROKEN: {exc}")
            continue
        lines.append(_sae_line(files, ws))
    return "\n".join(lines), problems


def _sae_line(files: SAEFiles, ws: Workspace) -> str:
    from clipatlas.sae.metrics import Metrics

    parts = [f"sae {files.name}:"]
    if files.metrics.is_file():
        try:
            metrics = Metrics.from_dict(read_json(files.metrics))  # schema-checked, like every file clipatlas writes
        except SchemaError as exc:
            parts.append(f"{exc};")
        else:
            held_out = f"explained variance {metrics.explained_variance:.3f}, L0 {metrics.l0:.1f}"
            parts.append(f"{held_out}, {metrics.silent_text()};")
    else:
        parts.append("not evaluated (clipatlas eval);")
    if files.atlas_db.is_file():
        from clipatlas.atlas import Atlas

        summary = Atlas.open(ws, files.name).summary()
        parts.append(
            f"atlas built, {summary['dead_over_store']:.1%} dead over the store ({summary['n_images']:,} images); "
            f"{summary['n_labelled']:,} features labelled, {summary['n_scored']:,} scored, {summary['n_named']:,} named"
        )
    else:
        parts.append("no atlas yet (clipatlas atlas)")
    return " ".join(parts)
