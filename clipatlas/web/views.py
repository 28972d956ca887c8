"""Page data: what each page and JSON route shows, read through the Atlas query API only.

Atlas answers with frozen dataclasses holding numpy values; `plain` turns them into JSON-ready
dicts so the templates and the JSON API see one shape.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import io
import json
import math
import re
import threading
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import HTTPException

from clipatlas._io import read_json
from clipatlas.atlas import AtlasError
from clipatlas.atlas.thumbs import thumbnail_image
from clipatlas.atlas.types import NAMING_P
from clipatlas.errors import UserError

MAX_QUERY = 200  # a search is for a label's words; a longer LIKE pattern only costs the database
IMAGE_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,199}$")
UPLOAD_ID_PATTERN = re.compile(r"^[0-9a-f]{16,64}$")
MAX_IMAGE_FEATURES = 48
SAMPLE_IMAGES = 24
THUMBNAIL_SIZE = 256


PLAIN_SCALARS = (str, int, bool, type(None))  # most of what a page holds: returned as they are, checked first


def plain(obj: Any) -> Any:
    """Recursively convert Atlas results into JSON-ready dicts, lists and scalars."""
    kind = type(obj)
    if kind in PLAIN_SCALARS:
        return obj
    if kind is float:
        return obj if math.isfinite(obj) else None  # JSON has no NaN or infinity
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        names = [f.name for f in dataclasses.fields(obj)] + list(getattr(obj, "derived", ()))
        return {name: plain(getattr(obj, name)) for name in names}
    if isinstance(obj, Mapping):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, np.ndarray):
        return plain(obj.tolist())
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if isinstance(obj, np.generic):
        return plain(obj.item())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None  # JSON has no NaN or infinity
    return obj


@dataclasses.dataclass(frozen=True)
class FeatureBrief:
    label: str  # the headline label: "" until a scored label beat its baseline and chance with p <= NAMING_P
    label_note: str  # why there is no label ("not yet scored", ...), "" when there is one
    best_guess: dict[str, Any] | None  # an unnamed feature's best label with its score (`best_guess_fields`)
    max_activation: float

    def naming(self) -> dict[str, Any]:
        return {"label": self.label, "label_note": self.label_note, "best_guess": self.best_guess}


CLUSTER_NAME_TERMS = 2  # words naming a map cluster
FEATURE_LIST_SORTS = ("score", "feature")


def naming_tier(row: dict[str, Any]) -> int:
    """0 for a named feature, 1 for one with a best guess, 2 for the rest (`naming`'s fields)."""
    return 0 if row["label"] else 1 if row["best_guess"] else 2


class AtlasViews:
    """The data of every page, from one open Atlas."""

    def __init__(self, atlas):
        self.atlas = atlas
        self._map_lock = threading.Lock()
        self._map_json: tuple[bytes, bytes] | None = None
        self._briefs: dict[int, FeatureBrief] = {}
        self._icon_checks: dict[int, dict[str, Any]] | None = None
        self._cluster_names: dict[int, str] | None = None
        # Every page shows these; the full summary counts rows, too slow to repeat per page.
        self._summary_brief = {"encoder": atlas.summary()["encoder"], "n_features": atlas.n_features}
        # Per instance, so the cache goes away with the app that made it.
        self.store_thumbnail = functools.lru_cache(maxsize=512)(self._store_thumbnail)

    # -- summary --------------------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        return plain(self.atlas.summary())

    def summary_brief(self) -> dict[str, Any]:
        return self._summary_brief

    def summary_rows(self) -> list[dict[str, str]]:
        """The home page's table: each number rounded, named for what it counts, with its source."""
        summary = self.atlas.summary()
        rows = [
            ("SAE", summary["sae"], ""),
            ("encoder", summary["encoder"], ""),
            ("images in the store", f"{summary['n_images']:,}", ""),
            ("features", f"{summary['n_features']:,}", ""),
            ("alive over the store", f"{summary['n_alive']:,}", "active on at least one stored image"),
            ("dead over the store", f"{summary['dead_over_store']:.1%}", "active on no stored image"),
            ("labelled features", f"{summary['n_labelled']:,}", "with a label from clipatlas label"),
            ("scored features", f"{summary['n_scored']:,}", "with a label scored by clipatlas score"),
            (
                "named features",
                f"{summary['n_named']:,}",
                f"a scored label beat its shuffled baseline and chance with p <= {NAMING_P}",
            ),
        ]
        metrics = summary["metrics"]
        if metrics and "silent_fraction" in metrics:
            held_out = f"on {metrics['n_samples']:,} held-out images (clipatlas eval)"
            rows += [
                ("explained variance", f"{metrics['explained_variance']:.3f}", held_out),
                ("L0", f"{metrics['l0']:.1f}", "mean active latents per image, " + held_out),
                ("cosine", f"{metrics['cosine']:.3f}", "of embedding and reconstruction, " + held_out),
                ("silent on held-out images", f"{metrics['silent_fraction']:.1%}", _silent_note(metrics)),
            ]
        elif metrics:
            rows.append(("held-out metrics", "written by an older clipatlas", "re-run clipatlas eval"))
        return [{"name": name, "value": str(value), "note": note} for name, value, note in rows]

    # -- features -------------------------------------------------------------------------------
    def check_feature(self, feature_id: int) -> int:
        if not 0 <= feature_id < self.atlas.n_features:
            raise HTTPException(404, f"no feature {feature_id}; this atlas has features 0..{self.atlas.n_features - 1}")
        return feature_id

    def brief(self, feature_id: int) -> FeatureBrief:
        """Headline label and max activation of a feature, cached: neighbour lists and sliders need many."""
        if feature_id not in self._briefs:
            max_activation = float(self.atlas.feature_table().max_activation[feature_id])
            self._briefs[feature_id] = FeatureBrief(**self.naming(feature_id), max_activation=max_activation)
        return self._briefs[feature_id]

    def warm_briefs(self) -> None:
        """Every feature's brief at once from the feature table (a static export lists them all)."""
        table = self.atlas.feature_table()
        for feature_id in range(self.atlas.n_features):
            max_activation = float(table.max_activation[feature_id])
            self._briefs[feature_id] = FeatureBrief(**self.naming(feature_id), max_activation=max_activation)

    def naming(self, feature_id: int) -> dict[str, Any]:
        """`label`: the headline label of a named feature, else "" with why in `label_note`; `best_guess`:
        an unnamed feature's label that beats its baseline and chance but misses p <= NAMING_P, with its
        score (`best_guess_fields`), else None. A label that was never scored, or did not beat its baseline
        and chance with p <= NAMING_P, is never shown as a feature's name."""
        found = self.atlas.headlines().get(feature_id)
        if found:
            return {"label": found.text, "label_note": "", "best_guess": None}
        guess = self.atlas.best_guesses().get(feature_id)
        return {
            "label": "",
            "label_note": self.atlas.naming_note(feature_id),
            "best_guess": None if guess is None else best_guess_fields(guess),
        }

    def named(self, feature_id: int, **fields: Any) -> dict[str, Any]:
        return {"feature": feature_id, **fields, **self.naming(feature_id)}

    def feature_links(self, neighbours) -> list[dict[str, Any]]:
        return [self.named(int(n.feature), score=float(n.score), count=n.count) for n in neighbours]

    def feature_page(self, feature_id: int) -> dict[str, Any]:
        self.check_feature(feature_id)
        info = self.atlas.feature(feature_id)
        feature = plain(info)
        del feature["icon"]  # a server path: the page links /icons/{id} instead
        feature.update(self.naming(feature_id))
        best = info.headline
        feature["headline_id"] = best.id if best else None
        feature["has_icon"] = info.icon is not None
        feature["icon_check"] = self.icon_check(feature_id)
        feature["top_images"] = plain(self.atlas.top_images(feature_id))
        feature["quantile_samples"] = plain(self.atlas.quantile_samples(feature_id))
        feature["coactivating"] = self.feature_links(self.atlas.coactivating(feature_id))
        feature["similar_decoder"] = self.feature_links(self.atlas.similar(feature_id, by="decoder"))
        feature["similar_encoder"] = self.feature_links(self.atlas.similar(feature_id, by="encoder"))
        feature["histogram_bars"] = histogram_bars(info.hist_counts, info.hist_edges)
        feature["cluster_name"] = self.cluster_name(info.cluster)
        return feature

    def icon_check(self, feature_id: int) -> dict[str, Any] | None:
        """Steering evidence: the causal check of the feature's icon (`clipatlas icons --verify`), if run."""
        if self._icon_checks is None:
            path = self.atlas.files.icon_verify_report
            report = read_json(path) if path.is_file() else {}
            shared = {"decoder": report.get("decoder"), "strength": report.get("strength")}
            self._icon_checks = {int(c["feature"]): {**c, **shared} for c in report.get("checks", [])}
        return self._icon_checks.get(feature_id)

    # -- images ---------------------------------------------------------------------------------
    def image_page(self, image_id: str) -> dict[str, Any]:
        try:
            activations = self.atlas.features_of_image(image_id)
        except AtlasError as exc:
            raise HTTPException(404, str(exc)) from exc
        return {"image_id": image_id, "features": self.activation_list(activations)}

    def features_of_embedding(self, embedding: np.ndarray) -> list[dict[str, Any]]:
        return self.activation_list(self.atlas.features_of_embedding(embedding))

    def activation_list(self, activations) -> list[dict[str, Any]]:
        """The strongest active features with labels, max activations and bar widths (percent)."""
        items = sorted(activations, key=lambda a: -a.activation)[:MAX_IMAGE_FEATURES]
        top = max((a.activation for a in items), default=0.0) or 1.0
        listed = []
        for a in items:
            brief = self.brief(int(a.feature))
            listed.append(
                self.named(
                    int(a.feature),
                    activation=float(a.activation),
                    max_activation=brief.max_activation,
                    width=round(100.0 * a.activation / top, 1),
                )
            )
        return listed

    def sample_images(self, count: int = SAMPLE_IMAGES) -> list[str]:
        """Images to start the playground from: the top image of successive map features."""
        chosen: list[str] = []
        for feature_id in self.atlas.map_points().feature[: count * 4]:
            for example in self.atlas.top_images(int(feature_id))[:1]:
                if example.image_id not in chosen:
                    chosen.append(example.image_id)
            if len(chosen) >= count:
                break
        return chosen

    # -- search ---------------------------------------------------------------------------------
    def search(self, query: str) -> dict[str, Any]:
        """Features with a label containing `query`, best-scoring label first (see
        Atlas.search_labels); a number (or #number) names a feature directly. Each hit shows the
        feature's name (its headline label) and the label that matched, with its score."""
        query = query.strip()
        if len(query) > MAX_QUERY:
            raise HTTPException(422, f"a search may have at most {MAX_QUERY} characters")
        number = query.removeprefix("#")
        # ASCII digits only: str.isdigit() also accepts "²" and "١", which int() refuses.
        is_id = number.isascii() and number.isdigit() and len(number) <= 10
        exact = int(number) if is_id and int(number) < self.atlas.n_features else None
        results, seen = [], set()
        for label in self.atlas.search_labels(query) if query else []:
            if label.feature in seen:
                continue
            seen.add(label.feature)
            results.append(
                self.named(int(label.feature), matched=label.text, source=label.source, **score_fields(label))
            )
        return {"query": query, "exact_feature": exact, "results": results}

    def feature_list(
        self,
        sort: str = "score",
        min_score: float | None = None,
        named_only: bool = False,
        limit: int = 100,
        offset: int = 0,
    ) -> dict[str, Any]:
        """Labelled features, sorted by their headline (else best guess, else best-ranked) label's score, named
        features first, then best guesses (a perfect AUROC on four images should not head the list), or by
        id; filtered by a minimum score and to named features."""
        if sort not in FEATURE_LIST_SORTS:
            raise HTTPException(400, f"sort by one of {', '.join(FEATURE_LIST_SORTS)}, not {sort!r}")
        if min_score is not None and not math.isfinite(min_score):
            raise HTTPException(422, f"the minimum score is a finite number, not {min_score}")
        rows = []
        for feature, labels in self.atlas.labels_by_feature().items():
            best = self.atlas.headlines().get(feature) or self.atlas.best_guesses().get(feature) or labels[0]
            fields = score_fields(best)
            if named_only and feature not in self.atlas.headlines():
                continue
            if min_score is not None and (fields["score"] is None or fields["score"] < min_score):
                continue
            rows.append(self.named(feature, matched=best.text, source=best.source, **fields))
        key = {
            "score": lambda r: (naming_tier(r), r["score"] is None, -(r["score"] or 0.0), r["feature"]),
            "feature": lambda r: r["feature"],
        }[sort]
        rows.sort(key=key)
        return {"total": len(rows), "sort": sort, "min_score": min_score, "features": rows[offset : offset + limit]}

    def warm(self) -> None:
        """What a big atlas takes seconds to prepare, done before anyone asks: the map, the label search,
        cluster names, the feature table (maxima of listed features), and the store's id index and image
        codes that image pages read (half a second for the first one at 8,192 images, else)."""
        self.map_json()
        self.atlas.label_search()
        self.cluster_name(None)
        self.atlas.feature_table()
        store = self.atlas.store
        if len(store):
            self.image_page(store.meta(0)["image_id"])

    def cluster_name(self, cluster: int | None) -> str:
        """A map cluster's name (see `cluster_names`), "" for a cluster none of whose features is named."""
        if self._cluster_names is None:
            self._cluster_names = {c["cluster"]: c["name"] for c in cluster_names(self.atlas.map_points())}
        return self._cluster_names.get(cluster, "")

    # -- map ------------------------------------------------------------------------------------
    def map_json(self) -> tuple[bytes, bytes]:
        """The map as JSON and gzipped JSON, made once (the app warms it at start-up)."""
        with self._map_lock:
            if self._map_json is None:
                raw = json.dumps(map_body(self.atlas.map_points()), separators=(",", ":")).encode()
                self._map_json = (raw, gzip.compress(raw, compresslevel=5))
            return self._map_json

    # -- files ----------------------------------------------------------------------------------
    def thumbnail_file(self, image_id: str) -> Path | None:
        return existing_file(self.atlas.thumbnail_path(image_id))

    def _store_thumbnail(self, image_id: str) -> bytes | None:
        """A WebP of a store image the atlas made no thumbnail for, opened by id via its store row."""
        store = self.atlas.store
        try:
            image = store.open_image(store.row_of(image_id))
        except (KeyError, ValueError, UserError, OSError, ImportError):  # unknown id, unreadable or unsupported URI
            return None
        buffer = io.BytesIO()
        thumbnail_image(image, THUMBNAIL_SIZE).save(buffer, format="WEBP", quality=85)
        return buffer.getvalue()

    def icon_file(self, feature_id: int) -> Path | None:
        self.check_feature(feature_id)
        return existing_file(self.atlas.icon_path(feature_id))


def score_fields(label) -> dict[str, Any]:
    """A label's detection score (most trusted judge) as flat fields; None where it was never scored."""
    score = label.score()
    return {
        "score": None if score is None else float(score.value),
        "baseline": None if score is None else float(score.baseline),
        "beats_baseline": None if score is None else bool(score.beats_baseline),
        "evidence_p": None if score is None else score.evidence_p,
        "names_feature": None if score is None else score.names_feature,
        "judge": None if score is None else score.judge,
    }


def best_guess_fields(label) -> dict[str, Any]:
    """A best guess (`Atlas.best_guesses`) as shown: its text and labeller, and its detection score with
    where it came from (judge, images judged) and the p it missed (`naming_p`)."""
    score = label.score()
    return {
        "label_id": label.id,
        "text": label.text,
        "source": label.source,
        "judge": score.judge,
        "metric": score.metric,
        "value": float(score.value),
        "baseline": float(score.baseline),
        "evidence_p": score.evidence_p,
        "naming_p": NAMING_P,
        "n": int(score.n),
    }


def map_body(points) -> dict[str, Any]:
    """The map's JSON (schemas.MapPoints) from `Atlas.map_points()`, or a subset of it."""
    return {
        "feature": points.feature.tolist(),
        "x": np.round(points.x.astype(np.float64), 4).tolist(),
        "y": np.round(points.y.astype(np.float64), 4).tolist(),
        "cluster": points.cluster.tolist(),
        "label": list(points.label),
        "top_image": list(points.top_image),
        "clusters": cluster_names(points),
    }


def cluster_names(points) -> list[dict[str, Any]]:
    """Each map cluster's name (the words most frequent among its members' headline labels, each
    word counted once per feature), centre and size; clusters with no named member are left out."""
    members: dict[int, list[int]] = {}
    for i, cluster in enumerate(points.cluster.tolist()):
        members.setdefault(cluster, []).append(i)
    named = []
    for cluster, rows in sorted(members.items()):
        words = Counter(w for i in rows for w in dict.fromkeys(t.strip() for t in points.label[i].split(",")) if w)
        if not words:
            continue
        top = [w for w, _ in sorted(words.items(), key=lambda item: (-item[1], item[0]))[:CLUSTER_NAME_TERMS]]
        named.append(
            {
                "cluster": cluster,
                "name": ", ".join(top),
                "x": round(float(np.mean(points.x[rows])), 4),
                "y": round(float(np.mean(points.y[rows])), 4),
                "size": len(rows),
            }
        )
    return named


def existing_file(path: Path | None) -> Path | None:
    return path if path is not None and Path(path).is_file() else None


def histogram_bars(counts: list[int], edges: list[float], width: float = 600, height: float = 120) -> list[dict]:
    """SVG rectangles of an activation histogram; heights on a log scale so rare bins stay visible."""
    if not counts:
        return []
    peak = math.log1p(max(counts)) or 1.0
    step = width / len(counts)
    bars = []
    for i, count in enumerate(counts):
        bar_height = height * math.log1p(count) / peak
        bars.append(
            {
                "x": round(i * step, 2),
                "y": round(height - bar_height, 2),
                "w": round(step * 0.9, 2),
                "h": round(bar_height, 2),
                "count": int(count),
                "low": edges[i],
                "high": edges[i + 1],
            }
        )
    return bars


def valid_image_id(image_id: str) -> str:
    if not IMAGE_ID_PATTERN.match(image_id) or ".." in image_id:
        raise HTTPException(404, "no image with this id")
    return image_id


def valid_upload_id(upload_id: str) -> str:
    if not UPLOAD_ID_PATTERN.match(upload_id):
        raise HTTPException(404, "no upload with this id")
    return upload_id


def _silent_note(metrics: dict[str, Any]) -> str:
    if metrics.get("silent_floor", 0) > 0:
        return (
            f"too few held-out images to tell: they can activate at most "
            f"{1 - metrics['silent_floor']:.0%} of the latents; see dead over the store"
        )
    return f"active on none of the {metrics['n_samples']:,} held-out images"
