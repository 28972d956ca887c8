"""Sources -> encoder -> store: the resumable embedding pipeline.

Images are read, decoded and preprocessed in DataLoader workers; the main process only runs the
model and appends to the store. Inputs are listed in a deterministic order and batched from a
fixed origin, and a batch is never split across shards, so the store's `consumed` count is always
a batch boundary: a killed run, started again, skips what is on disk, forms the very same
batches, and ends with shards byte-identical to an uninterrupted run.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from clipatlas.encoders import Encoder, load_encoder
from clipatlas.errors import UserError
from clipatlas.sources import ImageDecodeError, SourceItem, iter_items, read_image, with_labels
from clipatlas.store.config import EmbedConfig
from clipatlas.store.core import MANIFEST, Store, StoreWriter, store_dir_of

DUPLICATE_REASON = "duplicate image_id"


@dataclass(frozen=True)
class EmbedSummary:
    store_dir: Path
    embedded_now: int
    skipped_now: int
    resumed_from: int  # inputs already on disk when this run started
    total_rows: int
    skipped_by_reason: dict[str, int] = field(default_factory=dict)  # over the whole store
    seconds: float = 0.0
    added_to_changed_sources: bool = False  # the sources changed since the store was written
    relabelled: int = 0  # stored rows whose label this run wrote or changed

    def format(self) -> str:
        reasons = ", ".join(
            f"{n} {reason}" for reason, n in sorted(self.skipped_by_reason.items(), key=lambda kv: -kv[1])
        )
        skipped_total = sum(self.skipped_by_reason.values())
        rate = self.embedded_now / self.seconds if self.seconds > 0 else 0.0
        lines = [f"embedded {self.embedded_now} images this run ({rate:.1f} images/s), skipped {self.skipped_now}"]
        if self.added_to_changed_sources:
            lines.append("the sources changed since the store was written: only images not yet in it were added")
        elif self.resumed_from:
            lines.append(f"resumed after {self.resumed_from} inputs already in the store")
        if self.relabelled:
            lines.append(f"labelled {self.relabelled} images already in the store")
        lines.append(
            f"store {self.store_dir}: {self.total_rows} embeddings, skipped {skipped_total}"
            + (f" ({reasons})" if reasons else "")
        )
        return "\n".join(lines)


def decode_item(
    item: SourceItem, preprocess: Callable[[Any], torch.Tensor], max_pixels: int
) -> tuple[torch.Tensor | None, dict[str, Any] | None, tuple[str, str] | None]:
    """(pixels, metadata row, None) of one input, or (None, None, (uri, reason)): failures never raise."""
    try:
        decoded = read_image(item.uri, max_pixels)
        pixels = preprocess(decoded.image)
    except ImageDecodeError as exc:
        return None, None, (item.uri, exc.reason)
    except (OSError, ValueError, RuntimeError) as exc:  # a decoder or processor choking on odd data
        return None, None, (item.uri, f"cannot preprocess ({type(exc).__name__})")
    row = {
        "image_id": item.image_id,
        "uri": item.uri,
        "caption": item.caption,
        "source": item.source,
        "width": decoded.image.width,
        "height": decoded.image.height,
        "sha256": decoded.sha256,
        "label": item.label,
    }
    return pixels, row, None


class _DecodeDataset(Dataset):
    """Reads, decodes and preprocesses one item (`decode_item`) in a DataLoader worker."""

    def __init__(self, items: Sequence[SourceItem], preprocess: Callable[[Any], torch.Tensor], max_pixels: int):
        self.items, self.preprocess, self.max_pixels = items, preprocess, max_pixels

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        return decode_item(self.items[index], self.preprocess, self.max_pixels)


def collate(samples):
    """Decoded items to (pixels (n, C, H, W) | None, metadata rows, failures [(uri, reason)])."""
    ok = [s for s in samples if s[0] is not None]
    pixels = torch.stack([s[0] for s in ok]) if ok else None
    return pixels, [s[1] for s in ok], [s[2] for s in samples if s[0] is None]


def _worker_init(_worker_id: int) -> None:
    torch.set_num_threads(1)  # workers decode; the main process owns the cores for the model


def embed(
    sources: Sequence[str],
    workspace: str | Path,
    *,
    config: EmbedConfig | None = None,
    progress: bool = True,
    **overrides: Any,
) -> EmbedSummary:
    """Embed every image of `sources` into the store of `workspace`, resuming a partial store."""
    config = replace(config or EmbedConfig(), **overrides)
    if not sources:
        raise UserError("give at least one SOURCE: a folder, a .tar shard, a .txt/.parquet list, or demo:samples")
    started = time.perf_counter()
    items = with_labels(list(iter_items(list(sources), config.limit)), config.labels_from)
    if not items:
        raise UserError(
            f"no files in {', '.join(map(str, sources))}; give a folder of images, a .tar shard, a list file"
        )
    encoder = load_encoder(config.encoder, device=config.device, dtype=config.dtype)
    writer = StoreWriter(
        store_dir_of(workspace),
        encoder=encoder.id,
        d=encoder.dim,
        dtype=config.store_dtype,
        shard_size=config.shard_size,
        sources=[str(s) for s in sources],
        encoder_info=encoder.info(),
    )
    resumed_from = writer.consumed
    relabelled = writer.set_labels({i.image_id: i.label for i in items if i.label and writer.has(i.image_id)})
    todo, changed = _remaining(items, writer)
    embedded, skipped = _run(todo, encoder, writer, config, progress)
    writer.close()
    manifest = Store.open(writer.dir).manifest
    reasons = collections.Counter(entry["reason"] for entry in manifest["skipped"])
    if int(manifest["count"]) == 0:
        why = ", ".join(f"{n} {reason}" for reason, n in reasons.most_common())
        raise UserError(
            f"nothing in {', '.join(map(str, sources))} could be embedded ({why}); the reasons per file are in "
            f"{writer.dir / MANIFEST}"
        )
    return EmbedSummary(
        writer.dir,
        embedded,
        skipped,
        resumed_from,
        int(manifest["count"]),
        dict(reasons),
        time.perf_counter() - started,
        changed,
        relabelled,
    )


def _remaining(items: list[SourceItem], writer: StoreWriter) -> tuple[list[SourceItem], bool]:
    """(inputs still to embed, whether the sources changed under an existing store).

    Normally the listing is what it was, and the run continues after the `consumed` inputs on disk,
    which re-forms the same batches as an uninterrupted run. When files were added to or removed from
    a source in between, that position no longer means the same inputs: then every input whose
    image_id is not stored and that was not skipped before is embedded, and nothing is lost.
    """
    consumed = writer.consumed
    if consumed == 0:
        return items, False
    skipped = writer.skipped_uris
    expected = [item.image_id for item in items[:consumed] if item.uri not in skipped]
    if consumed <= len(items) and expected == writer.resumed_image_ids:
        return items[consumed:], False
    return [item for item in items if not writer.has(item.image_id) and item.uri not in skipped], True


def batch_positions(n_items: int, batch_size: int) -> list[range]:
    """The batches of a run, from a fixed origin: a resumed run forms the same ones."""
    return [range(i, min(i + batch_size, n_items)) for i in range(0, n_items, batch_size)]


def _run(
    remaining: list[SourceItem], encoder: Encoder, writer: StoreWriter, config: EmbedConfig, progress: bool
) -> tuple[int, int]:
    if not remaining:
        return 0, 0
    if config.engine == "ray":
        from clipatlas.store.ray_engine import encoded_batches

        return write_batches(writer, encoded_batches(remaining, encoder, config), len(remaining), progress)
    loader = DataLoader(
        _DecodeDataset(remaining, encoder.preprocessor(), config.max_pixels),
        batch_sampler=[list(batch) for batch in batch_positions(len(remaining), config.batch_size)],
        num_workers=config.worker_count,
        collate_fn=collate,
        worker_init_fn=_worker_init,
        pin_memory=encoder.device.type == "cuda",
    )
    return write_batches(writer, loader, len(remaining), progress, encode=lambda p: encoder.encode_tensors(p).numpy())


def write_batches(
    writer: StoreWriter,
    batches: Iterable[tuple[Any, list[dict[str, Any]], list[tuple[str, str]]]],
    total: int,
    progress: bool,
    encode: Callable[[Any], np.ndarray] = np.asarray,
) -> tuple[int, int]:
    """Append batches, in order, to the store: (pixels or embeddings, metadata rows, failures) each;
    `encode` turns the first into embeddings (after duplicates are dropped). Returns (embedded, skipped)."""
    embedded = skipped = 0
    with tqdm(total=total, unit="img", desc="embedding", disable=not progress, dynamic_ncols=True) as bar:
        for pixels, rows, failures in batches:
            pixels, rows, failures = _drop_duplicates(writer, pixels, rows, failures)
            if len(rows) > writer.rows_until_flush:
                writer.flush()  # close the shard at a batch boundary: resumes re-form the same batches
            for uri, reason in failures:
                writer.skip(uri, reason)
            if rows:
                writer.add(encode(pixels), rows)
            embedded, skipped = embedded + len(rows), skipped + len(failures)
            bar.update(len(rows) + len(failures))
            bar.set_postfix(skipped=skipped, refresh=False)
    return embedded, skipped


def _drop_duplicates(writer: StoreWriter, pixels, rows, failures):
    """Rows whose image_id is already stored (two sources naming the same image) become skips."""
    keep, seen = [], set()
    for position, row in enumerate(rows):
        if writer.has(row["image_id"]) or row["image_id"] in seen:
            failures = failures + [(row["uri"], DUPLICATE_REASON)]
        else:
            keep.append(position)
            seen.add(row["image_id"])
    if len(keep) == len(rows):
        return pixels, rows, failures
    return (pixels[keep] if keep else None), [rows[i] for i in keep], failures
