"""Labellers: one small class each, `__call__(view) -> Draft`, registered by name.

A labeller sees a feature only through a `FeatureView` (its labelling images and the store
outside the held-out rows). Offline ones:

* `captions`: terms over-represented in the captions of the feature's images against the rest of
  the store (Fightin' Words log-odds with an informative Dirichlet prior).
* `classifier`: the classes of the encoder's class head whose mean probability over the feature's
  images most exceeds their base rate (lift).
* `clip-text`: vocabulary entries whose text embedding best separates the feature's images from
  random silent ones (AUROC of the cosine).

`vlm` (a vision-language model) lives in `clipatlas.interp.vlm`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from importlib import resources
from pathlib import Path
from typing import ClassVar

import numpy as np
from scipy.stats import rankdata
from tqdm.auto import tqdm

from clipatlas.errors import UserError
from clipatlas.interp.config import LabelConfig
from clipatlas.interp.data import FeatureView, StoreData
from clipatlas.interp.text import choose_terms, fightin_words
from clipatlas.interp.types import Draft

LIFT_EPS = 1e-3  # keeps the lift of classes that are rare everywhere from exploding
CLIP_BACKGROUND = 300  # silent images each clip-text label is contrasted with
NOUNS_FILE = "nouns.txt"


class Labeller(ABC):
    """Names one feature from what its view shows. `model`: what wrote it ('' for none)."""

    name: ClassVar[str]
    model: str = ""
    prompt_version: str = ""

    @abstractmethod
    def __call__(self, view: FeatureView) -> Draft | None: ...

    def label_all(self, views: list[FeatureView]) -> list[Draft | None]:
        """Every view's draft (None: no label); labellers that call a service overlap their calls here."""
        return [self(view) for view in tqdm(views, desc=f"{self.name} labels", unit="label", leave=False)]


LABELLERS: dict[str, type] = {}


def register(cls):
    LABELLERS[cls.name] = cls
    return cls


def short_class_name(name: str) -> str:
    """'traffic light, traffic signal, stoplight' -> 'traffic light'."""
    return name.split(",")[0].strip()


@register
class CaptionsLabeller(Labeller):
    name = "captions"

    def __init__(self, data: StoreData, config: LabelConfig):
        self.vocab = data.terms.vocab  # also: a store without captions fails here, in one line
        self.terms, self.prior_strength = config.terms, config.prior_strength

    def __call__(self, view: FeatureView) -> Draft:
        inside, outside = view.term_counts()
        z = fightin_words(inside, outside, self.prior_strength)
        chosen = choose_terms(z, inside, self.vocab, self.terms)
        index = {t: i for i, t in enumerate(self.vocab)}
        evidence = {"terms": chosen, "z": [round(float(z[index[t]]), 3) for t in chosen], "groups": int(len(view.rows))}
        return Draft(", ".join(chosen), evidence=evidence)


@register
class ClassifierLabeller(Labeller):
    name = "classifier"

    def __init__(self, data: StoreData, config: LabelConfig):
        self.names = [short_class_name(n) for n in data.class_head[2]]
        self.model = data.store.encoder
        self.classes = config.classes

    def __call__(self, view: FeatureView) -> Draft:
        mean = view.class_probabilities(view.rows).mean(axis=0)
        lift = np.log((mean + LIFT_EPS) / (view.class_base_rate() + LIFT_EPS))
        best = np.argsort(-lift, kind="stable")[: self.classes]
        chosen = [self.names[c] for c in best]
        return Draft(", ".join(chosen), evidence={"classes": chosen, "lift": [round(float(lift[c]), 3) for c in best]})


@register
class ClipTextLabeller(Labeller):
    name = "clip-text"

    def __init__(self, data: StoreData, config: LabelConfig):
        if not hasattr(data.encoder, "text_embeddings"):
            raise UserError(
                f"encoder {data.store.encoder} has no text tower; the clip-text labeller needs a CLIP encoder"
            )
        self.model = data.store.encoder
        self.vocab = load_vocabulary(config.vocab_file)
        text = np.asarray(data.encoder.text_embeddings(self.vocab), dtype=np.float32)
        self.text = text / np.maximum(np.linalg.norm(text, axis=1, keepdims=True), 1e-12)
        self.classes = config.classes

    def __call__(self, view: FeatureView) -> Draft | None:
        background = view.background(CLIP_BACKGROUND)
        if len(background) == 0:
            return None  # the feature fires on every image that is not held out: nothing to contrast with
        shown, silent = view.unit_embeddings(view.rows), view.unit_embeddings(background)
        auroc = separation(shown @ self.text.T, silent @ self.text.T)
        best = np.argsort(-auroc, kind="stable")[: self.classes]
        chosen = [self.vocab[j] for j in best]
        return Draft(
            ", ".join(chosen), evidence={"entries": chosen, "auroc": [round(float(auroc[j]), 3) for j in best]}
        )


def separation(inside: np.ndarray, outside: np.ndarray) -> np.ndarray:
    """Per column, the AUROC of `inside` rows against `outside` rows (Mann-Whitney, ties halved)."""
    ranks = rankdata(np.concatenate([inside, outside]), axis=0)
    n_in, n_out = len(inside), len(outside)
    return (ranks[:n_in].sum(axis=0) - n_in * (n_in + 1) / 2) / max(n_in * n_out, 1)


def load_vocabulary(path: str | None) -> list[str]:
    """One entry per line from `path`, or the ImageNet class names plus the package's noun list."""
    if path:
        lines = Path(path).read_text().splitlines()
    else:
        from clipatlas.encoders.efficientnet import imagenet_class_names

        lines = [short_class_name(n) for n in imagenet_class_names()]
        lines += resources.files("clipatlas.interp").joinpath(NOUNS_FILE).read_text().splitlines()
    return list(dict.fromkeys(line.strip() for line in lines if line.strip()))


def make_labeller(name: str, data: StoreData, config: LabelConfig, vlm_config=None) -> Labeller:
    if name == "vlm":
        from clipatlas.interp.vlm import VLMLabeller

        return VLMLabeller(data, vlm_config)
    if name not in LABELLERS:
        raise UserError(f"unknown labeller {name!r}; choose one of {', '.join([*LABELLERS, 'vlm'])}")
    return LABELLERS[name](data, config)
