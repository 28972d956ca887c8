"""The atlas's record types: what `Atlas` answers and what the build and the labellers write.

Kept apart from the reader (`query.Atlas`) and the writers (`build`, `annotations`), so every
module that handles atlas records imports them from here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import numpy as np

from clipatlas.errors import UserError

# The scorer whose score names a feature, and the judges it trusts, most trusted first: a model that
# reads the image and the label's words (vlm, clip-text), then the image's caption (a person's words),
# then the image's ImageNet class probabilities, which cannot express what 1,000 classes do not name
# (on the demo it rates "coin, cent, dollar" on coins at 0.72 against 0.66 for other features' labels;
# the captions judge at 0.90 against 0.49). A judge not listed ranks after these.
HEADLINE_SCORER = "detection"
JUDGE_PRIORITY = ("vlm", "clip-text", "captions", "classes")
# Score.details keys of a detection score's p-values (see Score.evidence_p), and the largest p that
# still names a feature: a label that beats its baseline on a handful of images by luck is shown
# with its score, not as the feature's name.
P_AGAINST_CHANCE, P_AGAINST_SHUFFLED = "p_against_chance", "p_against_shuffled"
NAMING_P = 0.05
# An unnamed feature's best guess needs at least suggestive evidence: on the demo the median p of labels that
# beat their baseline but miss NAMING_P is 0.24, and a "best guess" at p 0.5 would be noise with a name.
GUESS_P = 0.1
# A metric's value for a judge that knows nothing, where the metric fixes it: a detection AUROC of 0.5 is a
# coin flip, so a label below it beats no baseline however weak the shuffled labels were. (Intruder
# accuracy's chance depends on the trial size; its scores store it as their baseline.)
CHANCE = {"auroc": 0.5}


class AtlasError(UserError):
    """The atlas is missing, outdated, or asked about something it does not hold."""


@dataclass(frozen=True)
class Example:
    """An image that activates a feature. `decile` is set for quantile samples only."""

    row: int
    image_id: str
    activation: float
    rank: int
    decile: int | None = None


@dataclass(frozen=True)
class Neighbour:
    """A related feature: `score` is the Jaccard index (coactivating) or the cosine (similar)."""

    feature: int
    score: float
    count: int | None = None


@dataclass(frozen=True)
class Activation:
    feature: int
    activation: float


@dataclass(frozen=True)
class Score:
    """One verification of a label (or, with `label_id` None, of the feature itself: intruder).

    `value` is the scorer's metric (`metric`: detection AUROC, intruder accuracy) on images the
    labeller never saw; `baseline` the same metric for the shuffled baseline (detection: the
    feature scored with another feature's label from the same labeller) or chance (intruder).
    `beats_baseline` is derived from the two (see there), so an atlas scored before the rule
    changed reads as honestly as a new one.
    `validation` is the label's score on the labelling half only (labels made from one part of
    it, judged on the other): what ranks a feature's labels without looking at the scoring images.
    """

    feature: int
    label_id: int | None
    scorer: str
    judge: str
    metric: str
    value: float
    baseline: float
    n: int
    judge_model: str = ""
    validation: float | None = None
    details: dict[str, Any] = field(default_factory=dict)
    # Properties that pages and the JSON API show too.
    derived: ClassVar[tuple[str, ...]] = ("beats_baseline", "evidence_p", "names_feature")

    @property
    def beats_baseline(self) -> bool:
        """Above its baseline and above chance (`CHANCE`: detection AUROC 0.5): a label that does worse
        than a coin flip beats nothing, even where the shuffled labels did worse still."""
        return self.value > max(self.baseline, CHANCE.get(self.metric, self.baseline))

    @property
    def evidence_p(self) -> float | None:
        """The larger of the p-values against chance and against the shuffled labels (where there were
        enough to give one): how likely a label that knows nothing of the feature scores this well.
        None for scores made before p-values were recorded, and for intruder scores."""
        found = [self.details[key] for key in (P_AGAINST_CHANCE, P_AGAINST_SHUFFLED) if key in self.details]
        return max(found) if found else None

    @property
    def names_feature(self) -> bool:
        """Good enough to name the feature: beats its baseline and chance, and (where recorded) with p <= NAMING_P."""
        p = self.evidence_p
        return self.beats_baseline and (p is None or p <= NAMING_P)


@dataclass(frozen=True)
class Label:
    """A feature's name from one labeller (`source`), with what made it and how it scored.

    `model` and `prompt_version` say which model and prompt wrote it (empty for offline
    labellers that use none); `evidence` holds what the labeller based it on (terms and their
    statistics, the image ids it saw). `id` is assigned when the atlas stores it.
    """

    feature: int
    source: str
    text: str
    model: str = ""
    prompt_version: str = ""
    description: str = ""
    evidence: dict[str, Any] = field(default_factory=dict)
    scores: tuple[Score, ...] = ()
    id: int | None = None

    def score(self, scorer: str = HEADLINE_SCORER, judge: str | None = None) -> Score | None:
        """This label's score by `scorer`, from `judge` or else from the most trusted judge that scored it."""
        found = [s for s in self.scores if s.scorer == scorer and (judge is None or s.judge == judge)]
        return min(found, key=lambda s: judge_rank(s.judge), default=None)


def judge_rank(judge: str) -> int:
    return JUDGE_PRIORITY.index(judge) if judge in JUDGE_PRIORITY else len(JUDGE_PRIORITY)


def preferred(labels: list[Label], judge: str) -> tuple[Label, Score] | None:
    """The label ranked first among those `judge` scored by detection, with its score (see
    `ranking_score`). Only scores from the labelling half rank labels: ranking by the held-out
    score itself would pick the luckiest of noisy estimates and then report that same estimate."""
    scored = [(label, label.score(judge=judge)) for label in labels]
    scored = [(label, s) for label, s in scored if s is not None]
    return max(scored, key=lambda item: ranking_score(item[1]), default=None)


def preferred_by_judge(labels: list[Label]) -> dict[str, Score]:
    """{judge: the detection score of the label `preferred` under it} for every judge that scored any of
    `labels` by detection: a feature's headline-label scores, chosen without the scoring images."""
    judges = sorted({s.judge for label in labels for s in label.scores if s.scorer == "detection"})
    return {judge: best[1] for judge in judges if (best := preferred(labels, judge)) is not None}


def headline(labels: list[Label]) -> Label | None:
    """The label a feature is named by: among its labels whose detection score clearly beats the
    shuffled baseline and chance (`Score.names_feature`), under the most trusted judge that scored any of
    them, the one ranked first (see `preferred` and `ranking_score`). None when no label has, or none was scored."""
    return _first_passing(labels, lambda s: s.names_feature)


def naming(labels: list[Label]) -> tuple[Label | None, Label | None]:
    """(`headline`, best guess) of one feature's labels, at most one of them not None. The best guess of a
    feature with no headline is the label chosen as a headline is, among those whose detection score beats
    its baseline and chance but misses p <= NAMING_P (often for want of held-out images) with p <= GUESS_P
    still: shown apart from the name, with its score, never as the name."""
    name = headline(labels)
    if name is not None:
        return name, None
    return None, _first_passing(labels, lambda s: s.beats_baseline and (s.evidence_p or 0.0) <= GUESS_P)


def _first_passing(labels: list[Label], passes: Callable[[Score], bool]) -> Label | None:
    """The label `preferred` under the most trusted judge among labels whose headline score `passes`."""
    passing = [label for label in labels if (s := label.score()) is not None and passes(s)]
    if not passing:
        return None
    judge = min((label.score().judge for label in passing), key=judge_rank)
    found = preferred([label for label in passing if (s := label.score(judge=judge)) and passes(s)], judge)
    return found[0] if found else None


LABELLER_VALIDATION = "labeller_validation"  # Score.details key: the labeller's median validation score


def ranking_score(score: Score) -> tuple[float, float]:
    """(the labeller's median labelling-half score over all features, this label's own): the
    labeller that names features best overall comes first, a feature's own score breaks ties.
    Measured on the demo atlas, choosing per feature by its own few validation images alone did
    worse (bench/RESULTS.md). The held-out score stands in where a labeller made no validation label."""
    own = score.validation if score.validation is not None else score.value
    return (score.details.get(LABELLER_VALIDATION, own), own)


@dataclass(frozen=True)
class FeatureInfo:
    """Everything on a feature page except its examples and neighbours (separate calls)."""

    feature: int
    alive: bool
    count: int
    frequency: float
    max_activation: float
    mean_activation: float
    hist_edges: list[float]  # len(hist_counts) + 1 edges, trimmed to the non-empty bins
    hist_counts: list[int]
    x: float | None
    y: float | None
    cluster: int | None
    labels: list[Label]
    icon: str | None
    coherence: list[Score] = field(default_factory=list)  # intruder scores of the feature itself

    @property
    def headline(self) -> Label | None:
        return headline(self.labels)

    @property
    def label(self) -> str | None:
        """The headline label's text: None until a label has been scored and beat its baseline."""
        best = self.headline
        return best.text if best else None

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "label": self.label}


@dataclass(frozen=True)
class MapPoints:
    """The alive features' 2-D map, as parallel arrays (one entry per alive feature)."""

    feature: np.ndarray  # int32
    x: np.ndarray  # float32
    y: np.ndarray  # float32
    cluster: np.ndarray  # int32
    label: list[str]  # the headline label, "" where no scored label beat its baseline
    top_image: list[str]  # the image id of the strongest example, "" where none

    def __len__(self) -> int:
        return len(self.feature)


NOT_IN_CODE = np.iinfo(np.int32).max  # the rank of a feature that is not in an image's stored code


@dataclass(frozen=True)
class FeatureTable:
    """Per-feature statistics of the whole atlas as parallel arrays, indexed by feature id."""

    alive: np.ndarray  # bool
    count: np.ndarray  # int64: images the feature fires on
    max_activation: np.ndarray  # float32


@dataclass(frozen=True)
class ImageCodes:
    """Every store image's sparse SAE code in CSR form: row r's active features are
    `features[indptr[r]:indptr[r + 1]]`, strongest first, with their activations in `values`
    (at most the atlas's `codes_per_image` of them, so ranks below that are exact)."""

    indptr: np.ndarray  # int64 (n_images + 1,)
    features: np.ndarray  # int32
    values: np.ndarray  # float32

    def __len__(self) -> int:
        return len(self.indptr) - 1

    def strongest(self) -> np.ndarray:
        """Each row's strongest feature, -1 where no feature fires."""
        lengths = np.diff(self.indptr)
        out = np.full(len(self), -1, dtype=np.int64)
        out[lengths > 0] = self.features[self.indptr[:-1][lengths > 0]]
        return out

    def stats(self, rows: np.ndarray, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(activations, ranks), each (len(rows), len(features)): feature j's activation in row i and its
        rank in that row's code (0 = strongest); activation 0 and rank NOT_IN_CODE where it is absent."""
        rows = np.asarray(rows, dtype=np.int64)
        features = np.asarray(features, dtype=np.int64)
        acts = np.zeros((len(rows), len(features)), dtype=np.float32)
        ranks = np.full((len(rows), len(features)), NOT_IN_CODE, dtype=np.int64)
        starts, lengths = self.indptr[rows], self.indptr[rows + 1] - self.indptr[rows]
        owner = np.repeat(np.arange(len(rows)), lengths)
        position = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        entry = np.repeat(starts, lengths) + position
        hit_entry, hit_feature = np.nonzero(self.features[entry][:, None] == features[None, :])
        acts[owner[hit_entry], hit_feature] = self.values[entry[hit_entry]]
        ranks[owner[hit_entry], hit_feature] = position[hit_entry]
        return acts, ranks

    def rows_of(self, feature: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(rows, activations, ranks) of every image whose code holds `feature` (one scan of the codes)."""
        entries = np.flatnonzero(self.features == feature)
        rows = np.searchsorted(self.indptr, entries, side="right") - 1
        return rows, self.values[entries].astype(np.float32), entries - self.indptr[rows]
