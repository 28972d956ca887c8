"""`embed --engine ray`: the embedding run on Ray Data, writing the same store as the local run.

The inputs still left are cut into the local run's batches (`pipeline.batch_positions`); each batch
is one row of a Ray dataset. Ray tasks read, decode and preprocess a batch (`pipeline.decode_item`,
the local workers' code), a pool of actors, each holding the encoder once, embeds it, and this
process receives the batches in order and appends them with `pipeline.write_batches`. So shards,
manifest, skip records and resumes are exactly the local run's; only the work moves to the cluster.
Every node must be able to read the sources' paths (a shared filesystem or the same mounts).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from clipatlas._ray import connect, has_gpus
from clipatlas.encoders import Encoder, load_encoder
from clipatlas.sources import SourceItem
from clipatlas.store.config import EmbedConfig
from clipatlas.store.pipeline import batch_positions, collate, decode_item

MAX_BLOCKS = 1024  # input blocks (each a share of the batches): enough to spread over a cluster
_NO_PIXELS = np.zeros((0, 1, 1, 1), np.float32)  # a batch where every input failed (same rank as pixels)


def _decode_batch(row: dict[str, Any], preprocess, max_pixels: int) -> dict[str, Any]:
    items = [SourceItem(**fields) for fields in json.loads(row["items"])]
    pixels, rows, failures = collate([decode_item(item, preprocess, max_pixels) for item in items])
    return {
        "pixels": _NO_PIXELS if pixels is None else pixels.numpy(),
        "rows": json.dumps(rows),
        "failures": json.dumps(failures),
    }


class _EncodeActor:
    """One encoder, loaded once per actor; embeds one decoded batch per call."""

    def __init__(self, encoder: str, device: str, dtype: str):
        self.encoder = load_encoder(encoder, device=device, dtype=dtype)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        pixels = batch["pixels"][0]
        embeddings = (
            self.encoder.encode_tensors(torch.from_numpy(np.ascontiguousarray(pixels))).numpy()
            if len(pixels)
            else np.zeros((0, self.encoder.dim), np.float32)
        )
        return {"embeddings": embeddings[None], "rows": batch["rows"], "failures": batch["failures"]}


def encoded_batches(
    items: list[SourceItem], encoder: Encoder, config: EmbedConfig
) -> Iterator[tuple[np.ndarray, list[dict[str, Any]], list[tuple[str, str]]]]:
    """(embeddings, metadata rows, failures) of each batch of `items`, in order, computed on Ray."""
    connect(config.address)
    import ray.data

    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True  # the store appends batches in input order
    context.enable_progress_bars = False  # write_batches shows one bar for the whole run
    batches = [
        {"items": json.dumps([dataclasses.asdict(items[i]) for i in positions])}
        for positions in batch_positions(len(items), config.batch_size)
    ]
    gpus = has_gpus(ray) and config.device != "cpu"
    dataset = ray.data.from_items(batches, override_num_blocks=min(len(batches), MAX_BLOCKS))
    dataset = dataset.map(
        _decode_batch, fn_kwargs={"preprocess": encoder.preprocessor(), "max_pixels": config.max_pixels}, num_cpus=1
    )
    dataset = dataset.map_batches(
        _EncodeActor,
        fn_constructor_kwargs={"encoder": config.encoder, "device": config.device, "dtype": config.dtype},
        batch_size=1,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=config.ray_encoders),
        **({"num_gpus": 1} if gpus else {"num_cpus": 1}),
    )
    for row in dataset.iter_rows():
        yield row["embeddings"], json.loads(row["rows"]), [tuple(f) for f in json.loads(row["failures"])]
