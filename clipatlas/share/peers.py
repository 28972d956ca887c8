"""`clipatlas import-sae`: SAEs trained by other tools, converted into a workspace SAE.

Each reader (`READERS`, recognised by `recognise`) turns a peer's saved files into `PeerSAE`: our
architecture, tensors in our convention and the input scale. Our SAE computes

    pre = (x * s - b_dec) @ W_enc + b_enc        z = act(pre)        x_hat = (z @ W_dec + b_dec) / s

so a peer that does not subtract b_dec before encoding gets b_enc + b_dec @ W_enc, and one that
scales codes by decoder norms has them folded into the encoder and decoder. The converted SAE gives
the peer's codes and reconstructions (tests/test_share_peers.py checks them on files the peers wrote).

- SAELens (`cfg.json` + `sae_weights.safetensors`): standard (ReLU), topk, jumprelu.
- saev 0.1 (one file: a JSON line of its config, then `torch.save(state_dict)`): ReLU.
- overcomplete (`torch.save(model.state_dict())` of TopKSAE / BatchTopKSAE with the default linear
  encoder): the state dict holds neither k nor BatchTopK's running threshold, so `--k` (and
  `--threshold` for BatchTopK) give them.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from clipatlas.errors import UserError
from clipatlas.sae import ARCHITECTURES, SAE, make_config
from clipatlas.share.config import ImportConfig
from clipatlas.store import Store
from clipatlas.workspace import Workspace

SAELENS_CONFIG = "cfg.json"
SAELENS_WEIGHTS = "sae_weights.safetensors"
SAELENS_ARCHS = {"standard": "relu", "topk": "topk", "jumprelu": "jumprelu"}
MIN_THRESHOLD = 1e-12  # a JumpReLU threshold at or below 0 acts as ReLU; ours is stored as a log


@dataclass
class PeerSAE:
    arch: str
    W_enc: torch.Tensor  # (d_in, d_sae)
    b_enc: torch.Tensor
    W_dec: torch.Tensor  # (d_sae, d_in)
    b_dec: torch.Tensor
    input_scale: float = 1.0
    settings: dict[str, Any] = field(default_factory=dict)  # k, threshold
    source: dict[str, Any] = field(default_factory=dict)  # the peer's own config, kept in cfg.json

    @property
    def d_in(self) -> int:
        return self.W_enc.shape[0]

    @property
    def d_sae(self) -> int:
        return self.W_enc.shape[1]

    def subtract_b_dec_first(self) -> None:
        """For a peer encoding x @ W_enc + b_enc: the same pre-activations from (x - b_dec) @ W_enc + b_enc'."""
        self.b_enc = self.b_enc + self.b_dec @ self.W_enc

    def to_sae(self, encoder: str | None, store: str | None) -> SAE:
        fields = {k: v for k, v in self.settings.items() if k == "k"}
        cfg = make_config(
            self.arch,
            d_in=self.d_in,
            d_sae=self.d_sae,
            input_scale=self.input_scale,
            encoder=encoder,
            store=store,
            **fields,
        )
        sae = ARCHITECTURES[self.arch](cfg)
        # our decode divides by the input scale, a peer's works in the scaled space: the same numbers
        state = {"W_enc": self.W_enc, "b_enc": self.b_enc, "W_dec": self.W_dec, "b_dec": self.b_dec}
        if self.arch == "jumprelu":
            state["log_threshold"] = self.settings["threshold"].clamp_min(MIN_THRESHOLD).log()
        if self.arch == "batchtopk":  # overcomplete keeps codes >= its threshold, ours those > it
            threshold = torch.tensor(float(self.settings["threshold"]))
            state["threshold"] = torch.nextafter(threshold, torch.tensor(-math.inf))
        sae.load_state_dict({k: v.detach().float().contiguous() for k, v in state.items()})
        return sae


def read_saelens(path: Path, config: ImportConfig) -> PeerSAE:
    from safetensors.torch import load_file

    cfg = json.loads((path / SAELENS_CONFIG).read_text())
    architecture = cfg.get("architecture", "standard")
    if architecture not in SAELENS_ARCHS:
        raise UserError(
            f"SAELens architecture {architecture!r} is not importable; clipatlas reads {', '.join(SAELENS_ARCHS)}"
        )
    norm = cfg.get("normalize_activations", "none")
    if norm not in ("none", "expected_average_only_in"):
        raise UserError(
            f"this SAELens SAE normalises each input at run time ({norm}); clipatlas SAEs scale by a constant only"
        )
    if norm == "expected_average_only_in" and not config.input_scale:
        raise UserError("this SAELens SAE expects inputs scaled by its norm scaling factor: give it with --input-scale")
    if cfg.get("reshape_activations", "none") != "none":
        raise UserError(
            f"this SAELens SAE reshapes its inputs ({cfg['reshape_activations']}); clipatlas reads flat vectors"
        )
    w = load_file(str(path / SAELENS_WEIGHTS))
    peer = PeerSAE(
        SAELENS_ARCHS[architecture],
        w["W_enc"],
        w["b_enc"],
        w["W_dec"],
        w["b_dec"],
        config.input_scale or 1.0,
        source=cfg,
    )
    if architecture == "topk":
        peer.settings["k"] = int(cfg["k"])
        if cfg.get("rescale_acts_by_decoder_norm"):  # codes scaled by |W_dec row|: fold it into both sides
            norms = peer.W_dec.norm(dim=1)
            peer.W_enc, peer.b_enc, peer.W_dec = peer.W_enc * norms, peer.b_enc * norms, peer.W_dec / norms[:, None]
    if architecture == "jumprelu":
        peer.settings["threshold"] = w["threshold"]
    if not cfg.get("apply_b_dec_to_input", True):
        peer.subtract_b_dec_first()
    return peer


def read_saev(path: Path, config: ImportConfig) -> PeerSAE:
    with open(path, "rb") as handle:
        cfg = json.loads(handle.readline().decode())
        state = torch.load(io.BytesIO(handle.read()), map_location="cpu", weights_only=True)
    if cfg.get("activation", "relu") != "relu" or "k" in cfg:
        raise UserError(
            f"{path}: clipatlas reads saev 0.1 checkpoints (ReLU); this one has {cfg.get('activation', 'top-k')}"
        )
    return PeerSAE(
        "relu", state["W_enc"], state["b_enc"], state["W_dec"], state["b_dec"], config.input_scale or 1.0, source=cfg
    )


def read_overcomplete(path: Path, config: ImportConfig) -> PeerSAE:
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or "dictionary._weights" not in state:
        raise UserError(f"{path} is no overcomplete SAE state dict; save one with torch.save(model.state_dict(), path)")
    linear = [k for k in state if k.startswith("encoder.") and k.endswith(".weight")]
    if linear != ["encoder.final_block.0.weight"]:
        raise UserError(f"{path}: clipatlas imports overcomplete SAEs with the default linear encoder, not {linear}")
    if not config.k:
        raise UserError(f"{path}: an overcomplete state dict does not hold its top_k; give it with --k")
    weight, bias = state["encoder.final_block.0.weight"], state["encoder.final_block.0.bias"]
    dictionary = state["dictionary._weights"]
    # in eval mode overcomplete decodes with its dictionary l2-normalised and scaled by exp(multiplier)
    W_dec = dictionary / dictionary.norm(dim=1, keepdim=True).clamp_min(1e-8) * state["dictionary.multiplier"].exp()
    arch = "batchtopk" if config.threshold else "topk"
    peer = PeerSAE(arch, weight.t(), bias, W_dec, torch.zeros(W_dec.shape[1]), config.input_scale or 1.0)
    peer.settings = {"k": config.k, **({"threshold": config.threshold} if config.threshold else {})}
    return peer


READERS: dict[str, Callable[[Path, ImportConfig], PeerSAE]] = {
    "saelens": read_saelens,
    "saev": read_saev,
    "overcomplete": read_overcomplete,
}


def recognise(path: Path) -> str:
    """The format of `path`: a SAELens folder, a saev checkpoint (a JSON first line), else overcomplete."""
    if path.is_dir():
        if (path / SAELENS_CONFIG).is_file() and (path / SAELENS_WEIGHTS).is_file():
            return "saelens"
        raise UserError(
            f"{path} holds no {SAELENS_CONFIG} + {SAELENS_WEIGHTS} (SAELens); give the folder or a checkpoint file"
        )
    if not path.is_file():
        raise UserError(f"no SAE at {path}")
    with open(path, "rb") as handle:
        return "saev" if handle.read(1) == b"{" else "overcomplete"


def import_sae(source: str | Path, workspace, name: str, config: ImportConfig | None = None) -> Path:
    """Convert the peer SAE at `source` into workspace SAE `name`, checked against the store's width."""
    config = config or ImportConfig()
    source = Path(source).expanduser()
    fmt = recognise(source) if config.format == "auto" else config.format
    if fmt not in READERS:
        raise UserError(f"--format takes auto or {', '.join(READERS)}, not {fmt!r}")
    peer = READERS[fmt](source, config)
    ws = Workspace.of(workspace)
    store = Store.open(ws.root)
    if peer.d_in != store.d:
        raise UserError(
            f"the SAE at {source} reads {peer.d_in}-d inputs, but this store's {store.encoder} embeddings are "
            f"{store.d}-d"
        )
    files = ws.sae(name, must_exist=False)
    if files.weights.is_file():
        raise UserError(f"SAE {name} already exists in {ws.root}; choose another --name")
    sae = peer.to_sae(store.encoder, str(store.dir))
    given = {k: v for k, v in peer.settings.items() if isinstance(v, (int, float))}  # k, BatchTopK's threshold
    extra = {"imported": {"format": fmt, "source": str(source), "peer_config": peer.source, **given}}
    return sae.save_pretrained(files.dir, extra=extra)
