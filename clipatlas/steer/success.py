"""Steering success: does an edit show in what the decoder produces?

For a `set`/`add` edit on feature f, the result (retrieval: the store embedding of the image shown
first; a generator: its image re-embedded by the store's encoder) is encoded by the SAE and checked:
f's activation and rank there, whether the result differs from the unedited result (cosine below
`duplicate_cosine`), the cosine of the two results, and the cosine of their codes over the
features the edit did not touch (how far the rest of the image moved). An edit *succeeds* when the
result differs and f is among its `top` strongest latents.

`measure_success` runs single set edits on a seeded sample of alive features and images where they
do not fire, at several strengths, and writes the curve (`SAEFiles.steering_success(decoder)`, JSON
and a PNG plot). `default_strength` reads it: the smallest strength whose success rate reaches the
target is the default of the playground and of `clipatlas icons`.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from clipatlas._io import SCHEMA_VERSION, atomic_path, atomic_write_json, read_json
from clipatlas.errors import UserError
from clipatlas.steer.causal import CausalCheck
from clipatlas.steer.config import RetrievalConfig, SuccessConfig
from clipatlas.steer.decoders import split_decoder_name
from clipatlas.steer.edits import set_embeddings
from clipatlas.steer.ranking import Guide

DUPLICATE_COSINE = RetrievalConfig.duplicate_cosine  # results this close to the unedited one count as unchanged
UNMEASURED_STRENGTH = 7.5  # the seed paper's icon strength, used only until a curve is measured


class TooFewImages(UserError):
    """No feature fires on enough images to be measured."""


@dataclass(frozen=True)
class EditCheck(CausalCheck):
    """The causal check of one edited feature, plus what makes the edit a visible success."""

    max_activation: float
    differs: bool
    """The result is not the unedited result (nor a near-duplicate of it)."""
    source_cosine: float
    """Cosine of the result's and the unedited result's embeddings."""
    unedited_cosine: float
    """Cosine of their SAE codes over the features the edits did not change (1 = nothing else moved)."""
    top: int

    @property
    def shown(self) -> bool:
        """The feature is among the result's `top` strongest latents."""
        return self.after_rank < self.top

    @property
    def success(self) -> bool:
        return self.differs and self.shown


def sae_codes(sae, embeddings: np.ndarray) -> np.ndarray:
    """The SAE's codes of these embeddings, as a float32 numpy array."""
    with torch.no_grad():
        return sae.encode(torch.from_numpy(np.asarray(embeddings, dtype=np.float32))).float().cpu().numpy()


def own_ranks(z: np.ndarray, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rank, activation) of features[i] in code z[i]: rank 0 = the strongest latent; z.shape[1] = silent."""
    own = z[np.arange(len(features)), features]
    return np.where(own > 0, (z > own[:, None]).sum(axis=1), z.shape[1]), own


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    dots = np.einsum("ij,ij->i", a, b)
    return np.where(norms > 0, dots / np.maximum(norms, 1e-30), np.where((a == b).all(axis=1), 1.0, 0.0))


def check_edits(
    sae,
    before: np.ndarray,
    after: np.ndarray,
    features: np.ndarray,
    edited: np.ndarray,
    max_activation: np.ndarray,
    *,
    top: int = 5,
    duplicate_cosine: float = DUPLICATE_COSINE,
) -> list[EditCheck]:
    """One `EditCheck` per row: `before[i]`/`after[i]` are the unedited and edited results' embeddings,
    `features[i]` the edited feature, `edited[i]` a (d_sae,) mask of every feature the edits changed."""
    before, after = np.atleast_2d(before), np.atleast_2d(after)
    features = np.asarray(features, dtype=np.int64)
    z_before, z_after = sae_codes(sae, before), sae_codes(sae, after)
    rows = np.arange(len(features))
    (rank_before, _), (rank_after, _) = own_ranks(z_before, features), own_ranks(z_after, features)
    source_cosine = _cosines(before, after)
    keep = ~np.asarray(edited, dtype=bool)
    unedited = _cosines(np.where(keep, z_before, 0.0), np.where(keep, z_after, 0.0))
    return [
        EditCheck(
            feature=int(features[i]),
            before_activation=float(z_before[i, features[i]]),
            after_activation=float(z_after[i, features[i]]),
            before_rank=int(rank_before[i]),
            after_rank=int(rank_after[i]),
            max_activation=float(max_activation[i]),
            differs=bool(source_cosine[i] < duplicate_cosine),
            source_cosine=float(source_cosine[i]),
            unedited_cosine=float(unedited[i]),
            top=int(top),
        )
        for i in rows
    ]


# -- the curve ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StrengthPoint:
    """Single set edits at one strength: shares of edits, and means over them."""

    strength: float
    n: int
    success: float
    differs: float
    shown: float
    rank0: float
    """The feature is the result's strongest latent."""
    activation: float
    """Mean activation of the feature in the result, in units of its max activation."""
    source_cosine: float
    unedited_cosine: float

    @classmethod
    def of(cls, strength: float, checks: list[EditCheck]) -> StrengthPoint:
        def mean(values) -> float:
            return float(np.mean(list(values)))

        return cls(
            strength=float(strength),
            n=len(checks),
            success=mean(c.success for c in checks),
            differs=mean(c.differs for c in checks),
            shown=mean(c.shown for c in checks),
            rank0=mean(c.after_rank == 0 for c in checks),
            activation=mean(c.after_activation / c.max_activation for c in checks),
            source_cosine=mean(c.source_cosine for c in checks),
            unedited_cosine=mean(c.unedited_cosine for c in checks),
        )


@dataclass(frozen=True)
class SuccessCurve:
    """Steering success against strength for one SAE, atlas build, decoder and its settings."""

    sae: str
    atlas_build: str
    decoder: str
    settings: dict[str, Any]
    config: dict[str, Any]
    n_features: int
    points: list[StrengthPoint]
    complete: bool = True

    @property
    def target(self) -> float:
        return float(self.config["target"])

    @property
    def default_strength(self) -> float | None:
        """The smallest measured strength whose success rate reaches the target (None: none does)."""
        reached = [p.strength for p in self.points if p.success >= self.target]
        return min(reached) if reached else None

    def point(self, strength: float) -> StrengthPoint:
        return next(p for p in self.points if p.strength == strength)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            **{f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "points"},
            "points": [dataclasses.asdict(p) for p in self.points],
            "default_strength": self.default_strength,
        }

    @classmethod
    def from_dict(cls, obj: dict[str, Any]) -> SuccessCurve:
        fields = {f.name for f in dataclasses.fields(cls)} - {"points"}
        return cls(**{k: obj[k] for k in fields if k in obj}, points=[StrengthPoint(**p) for p in obj["points"]])


def _sample(atlas, config: SuccessConfig) -> tuple[np.ndarray, np.ndarray]:
    """(features, source rows) of the edits: a seeded sample of alive features firing on at least
    `min_images` images, each with `sources_per_feature` images where it does not fire."""
    table, codes = atlas.feature_table(), atlas.image_codes()
    eligible = np.flatnonzero(table.alive & (table.count >= config.min_images))
    if not len(eligible):
        raise TooFewImages(
            f"no feature fires on at least {config.min_images} images, so steering success cannot be measured; "
            "lower min_images or train the SAE on more images"
        )
    rng = np.random.default_rng(config.seed)
    features = np.sort(rng.choice(eligible, min(config.n_features, len(eligible)), replace=False))
    edit_features, sources = [], []
    for f in features:
        free = np.ones(len(codes), dtype=bool)
        free[codes.rows_of(int(f))[0]] = False
        free = np.flatnonzero(free)
        if len(free) < config.sources_per_feature:
            continue  # fires almost everywhere: too few images to set it on
        edit_features += [int(f)] * config.sources_per_feature
        sources += rng.choice(free, config.sources_per_feature, replace=False).tolist()
    return np.array(edit_features, dtype=np.int64), np.array(sources, dtype=np.int64)


def _results(steerer, decoder, config: SuccessConfig, embeddings, guides, source_rows) -> np.ndarray:
    init = (
        [steerer.store.open_image(int(r)).convert("RGB") for r in source_rows] if "img2img" in config.decoder else None
    )
    return decoder.result_embeddings(
        embeddings,
        guides=guides,
        settings=dict(config.settings),
        seed=1,
        init_images=init,
        encode=lambda images: steerer.encoder.encode_images(images),
    )


def _fingerprint(steerer, config: SuccessConfig) -> dict[str, Any]:
    return {"sae": steerer.atlas.name, "atlas_build": steerer.atlas.build_id, "decoder": config.decoder}


def measure_success(workspace, name: str | None = None, config: SuccessConfig = SuccessConfig(), *, save: bool = True):
    """The steering success curve of SAE `name` with `config.decoder`; with `save`, written (JSON + PNG) to
    `SAEFiles.steering_success(decoder)` after each strength, so a killed run resumes. Returns a `SuccessCurve`."""
    from clipatlas.steer.engine import steerer_for

    steerer = steerer_for(workspace, name)
    atlas, sae = steerer.atlas, steerer.sae
    base, _ = split_decoder_name(config.decoder)
    path = atlas.files.steering_success(base)
    decoder = steerer.decoder(config.decoder)
    settings = {k: v for k, v in config.settings}
    config_dict = {**dataclasses.asdict(config), "settings": settings, "strengths": list(config.strengths)}
    done: list[StrengthPoint] = []
    if save and path.is_file():
        earlier = read_json(path)
        if {k: earlier.get(k) for k in ("sae", "atlas_build", "decoder")} == _fingerprint(steerer, config) and (
            earlier.get("config") == config_dict
        ):
            done = [StrengthPoint(**p) for p in earlier["points"]]
    features, sources = _sample(atlas, config)
    max_activation = atlas.feature_table().max_activation
    x = steerer.store.rows(sources)
    edited = np.zeros((len(features), sae.cfg.d_sae), dtype=bool)
    edited[np.arange(len(features)), features] = True
    curve = SuccessCurve(
        atlas.name, atlas.build_id, config.decoder, settings, config_dict, int(len(np.unique(features))), done, False
    )
    todo = [t for t in config.strengths if t not in {p.strength for p in done}]
    parts = [slice(start, start + config.batch_size) for start in range(0, len(features), config.batch_size)]
    with tqdm(total=(len(todo) + 1) * len(parts), desc="steering success", unit="batch", disable=not todo) as bar:
        before = []  # what the decoder shows for each unedited source, with the same seed
        for part in parts if todo else []:
            before.append(_results(steerer, decoder, config, x[part], None, sources[part]))
            bar.update(1)
        for strength in todo:
            checks = []
            for part, unedited in zip(parts, before):
                steered = set_embeddings(sae, x[part], features[part], strength * max_activation[features[part]])
                guides = [Guide(raised=(int(f),), source=s) for f, s in zip(features[part], x[part])]
                after = _results(steerer, decoder, config, steered, guides, sources[part])
                tops = max_activation[features[part]]
                checks += check_edits(sae, unedited, after, features[part], edited[part], tops, top=config.top)
                bar.update(1)
            done = sorted([*done, StrengthPoint.of(strength, checks)], key=lambda p: p.strength)
            curve = dataclasses.replace(curve, points=done)
            if save:
                atomic_write_json(path, curve.to_dict())
    curve = dataclasses.replace(curve, complete=True)
    if save:
        atomic_write_json(path, curve.to_dict())
        plot_success([(config.decoder, curve)], atlas.files.steering_success_plot(base))
    return curve


def plot_success(curves: list[tuple[str, SuccessCurve]], path: Path) -> Path:
    """Success rate against strength (log scale) for labelled curves, with the target and each default."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    for label, curve in curves:
        strengths = [p.strength for p in curve.points]
        line = axes.plot(strengths, [p.success for p in curve.points], marker="o", label=label)[0]
        if curve.default_strength is not None:
            axes.axvline(curve.default_strength, color=line.get_color(), linestyle=":", linewidth=1)
    target = curves[0][1].target if curves else 0.8
    axes.axhline(target, color="grey", linestyle="--", linewidth=1, label=f"target {target:.0%}")
    axes.set_xscale("log")
    axes.set_xlabel("strength (x the feature's max activation)")
    axes.set_ylabel(f"success (not the source, feature in top {curves[0][1].config['top'] if curves else 5})")
    axes.set_ylim(-0.02, 1.02)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    if curves:
        first = curves[0][1]
        edits = f"{first.points[0].n} edits on {first.n_features} features" if first.points else "no edits"
        axes.set_title(f"steering success: SAE {first.sae}, {edits} per strength", fontsize=10)
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png")
    plt.close(figure)
    return path


# -- the default strength -------------------------------------------------------------------------------
@dataclass(frozen=True)
class DefaultStrength:
    """The default edit strength (x max activation) and one line saying where it came from."""

    value: float
    source: str
    measured: bool


def read_curve(atlas, decoder: str) -> SuccessCurve | None:
    """The complete curve measured with `decoder` for this atlas build, or None."""
    path = atlas.files.steering_success(split_decoder_name(decoder)[0])
    if not path.is_file():
        return None
    curve = SuccessCurve.from_dict(read_json(path))
    return curve if curve.complete and curve.atlas_build == atlas.build_id else None


def default_strength(atlas, decoder: str = "retrieval") -> DefaultStrength:
    """The smallest strength reaching the target success on this SAE's curve for `decoder`."""
    curve = read_curve(atlas, decoder)
    # Relative to the workspace: the web page shows this line, and server paths stay on the server.
    path = atlas.files.steering_success(split_decoder_name(decoder)[0]).relative_to(atlas.workspace.root)
    if curve is None:
        return DefaultStrength(
            UNMEASURED_STRENGTH,
            f"{UNMEASURED_STRENGTH:g}x, the seed paper's icon strength: steering success has not been measured for "
            f"the {decoder} decoder on this atlas build (clipatlas icons measures it for retrieval)",
            False,
        )
    strongest = curve.points[-1]
    if curve.default_strength is None:
        return DefaultStrength(
            strongest.strength,
            f"{strongest.strength:g}x, the strongest measured: no strength reached {curve.target:.0%} success "
            f"(best {max(p.success for p in curve.points):.0%}; {path})",
            True,
        )
    point = curve.point(curve.default_strength)
    smallest = " (the smallest measured)" if point.strength == curve.points[0].strength else ""
    return DefaultStrength(
        point.strength,
        f"{point.strength:g}x{smallest}: {point.success:.0%} of {point.n} single set edits on {curve.n_features} "
        f"features showed the feature in the {curve.decoder} result (target {curve.target:.0%}; {path})",
        True,
    )


def strength_for(steerer, decoder: str, strength: float | None, *, measure: bool = True) -> DefaultStrength:
    """`strength` when given, else the measured default; with `measure`, a missing retrieval curve is
    measured first (about a minute on the demo store)."""
    if strength is not None:
        return DefaultStrength(float(strength), f"{strength:g}x, as given", False)
    found = default_strength(steerer.atlas, decoder)
    if found.measured or not measure or split_decoder_name(decoder)[0] != "retrieval":
        return found
    started = time.perf_counter()
    try:
        measure_success(steerer.atlas.workspace, steerer.atlas.name, SuccessConfig(decoder=decoder))
    except TooFewImages as exc:  # a tiny store: say why the default is not measured, and go on
        return dataclasses.replace(found, source=f"{UNMEASURED_STRENGTH:g}x, the seed paper's icon strength: {exc}")
    found = default_strength(steerer.atlas, decoder)
    return dataclasses.replace(found, source=f"{found.source}; measured now in {time.perf_counter() - started:.0f} s")
