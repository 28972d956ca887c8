"""The JSON API's wire types: every `/api/` response is one of these, and every request body is
validated by one (see `/api/openapi.json`)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag

# --- requests -------------------------------------------------------------------------------------
MAX_EDITS = 1024
# A strength beyond this (in units of the feature's max activation, or absolute) only saturates the
# decoder; the bound also keeps every edited embedding far inside float32.
MAX_STRENGTH = 1e4
FeatureId = Annotated[int, Field(ge=0, lt=2**31)]  # the SAE's own range is checked against the atlas
Strength = Annotated[float, Field(ge=-MAX_STRENGTH, le=MAX_STRENGTH, allow_inf_nan=False)]
# A store image id, sha256:HEX of a stored image, or upload:<id> (never a path: see Steerer.file_of).
ImageRef = Annotated[str, Field(min_length=1, max_length=256)]
Text = Annotated[str, Field(max_length=256)]


class EditIn(BaseModel):
    """One edit, as `clipatlas.steer.Edit.to_dict` writes it; the fields an op does not read must be absent."""

    model_config = ConfigDict(extra="forbid")

    op: Literal["set", "add", "scale", "ban", "transfer", "difference"]
    feature: FeatureId | None = None
    value: Strength | None = None
    unit: Literal["abs", "max"] | None = None
    image: ImageRef | None = None
    other: ImageRef | None = None
    features: Annotated[list[FeatureId], Field(min_length=1, max_length=MAX_EDITS)] | Literal["all"] | None = None


# An edit is an object or a command-line spec ("set:12=7.5x"); the discriminator picks the branch, so an
# error names what is wrong with the edit as sent rather than with both alternatives.
EditOrSpec = Annotated[
    Annotated[EditIn, Tag("object")] | Annotated[Annotated[str, Field(max_length=512)], Tag("spec")],
    Discriminator(lambda value: "spec" if isinstance(value, str) else "object"),
]


class RecipeIn(BaseModel):
    """A playground recipe (`clipatlas.steer.Recipe.to_dict`). The server sets decoder, settings and SAE
    itself: the ones sent are accepted (a saved recipe may carry them) and replaced."""

    model_config = ConfigDict(extra="forbid")

    image: ImageRef
    edits: Annotated[list[EditOrSpec], Field(max_length=MAX_EDITS)] = []
    seed: Annotated[int, Field(ge=0, lt=2**32)] = 1
    schema_version: Annotated[int, Field(ge=0, le=1000)] | None = None
    kind: Text | None = None
    decoder: Text | None = None
    settings: dict[Text, Any] | None = None
    sae: Text | None = None
    hash: Text | None = None

    def to_recipe_dict(self) -> dict[str, Any]:
        """The fields `Recipe.from_dict` reads, edits as sent (a dict keeps only the fields given)."""
        edits = [e if isinstance(e, str) else e.model_dump(exclude_none=True) for e in self.edits]
        checked = {"schema_version": self.schema_version, "kind": self.kind}  # a newer recipe format is named
        return {"image": self.image, "edits": edits, "seed": self.seed, **{k: v for k, v in checked.items() if v}}


# --- responses ------------------------------------------------------------------------------------


class ScoreOut(BaseModel):
    """A verification of a label (`label_id`) or of the feature itself (intruder, `label_id` null)."""

    feature: int
    label_id: int | None
    scorer: str
    judge: str
    judge_model: str
    metric: str
    value: float
    baseline: float
    n: int
    validation: float | None
    details: dict[str, Any]
    evidence_p: float | None  # see atlas.types.Score.evidence_p; null for intruder scores and older atlases
    beats_baseline: bool  # above the shuffled baseline and chance (detection: AUROC 0.5), see atlas.types.Score
    names_feature: bool  # beats the baseline and chance with evidence_p <= 0.05: may name the feature


class LabelOut(BaseModel):
    """A label with what made it (`source` labeller, `model`, `prompt_version`) and its scores."""

    id: int | None
    feature: int
    source: str
    text: str
    model: str
    prompt_version: str
    description: str
    evidence: dict[str, Any]
    scores: list[ScoreOut]


class BestGuess(BaseModel):
    """An unnamed feature's best label: its detection score (`metric`, by `judge` on `n` held-out images)
    beats the shuffled `baseline` and chance but its `evidence_p` misses `naming_p`. Never its name."""

    label_id: int | None
    text: str
    source: str
    judge: str
    metric: str
    value: float
    baseline: float
    evidence_p: float | None
    naming_p: float
    n: int


class Named(BaseModel):
    """A feature's name: its headline label, or "" with the reason in `label_note` and, where one
    label beats its baseline and chance without p <= 0.05, that label as `best_guess` (not a name)."""

    feature: int
    label: str
    label_note: str
    best_guess: BestGuess | None


class ExampleOut(BaseModel):
    row: int
    image_id: str
    activation: float
    rank: int
    decile: int | None = None


class FeatureLink(Named):
    """A related feature with its name: `score` is Jaccard (coactivating) or cosine (similar)."""

    score: float
    count: int | None = None


class HistogramBar(BaseModel):
    x: float
    y: float
    w: float
    h: float
    count: int
    low: float
    high: float


class IconCheck(BaseModel):
    """The icon's causal check (`clipatlas icons --verify`): the feature's rank among all features
    (0 = strongest) and activation in the template before the edit and in the re-embedded icon."""

    feature: int
    before_activation: float
    after_activation: float
    before_rank: int
    after_rank: int
    decoder: str | None
    strength: float | None


class FeaturePage(BaseModel):
    feature: int
    alive: bool
    count: int
    frequency: float
    max_activation: float
    mean_activation: float
    hist_edges: list[float]
    hist_counts: list[int]
    x: float | None
    y: float | None
    cluster: int | None
    cluster_name: str  # "" where no feature of the cluster is named
    labels: list[LabelOut]
    coherence: list[ScoreOut]
    label: str
    label_note: str
    best_guess: BestGuess | None
    headline_id: int | None
    has_icon: bool
    icon_check: IconCheck | None
    top_images: list[ExampleOut]
    quantile_samples: list[ExampleOut]
    coactivating: list[FeatureLink]
    similar_decoder: list[FeatureLink]
    similar_encoder: list[FeatureLink]
    histogram_bars: list[HistogramBar]


class FeatureBriefOut(Named):
    max_activation: float


class ActiveFeature(Named):
    """A feature active in an image; `width` is its bar's length in percent of the strongest."""

    activation: float
    max_activation: float
    width: float


class ImagePage(BaseModel):
    image_id: str
    features: list[ActiveFeature]


class Summary(BaseModel):
    sae: str
    encoder: str
    n_images: int
    n_features: int
    n_alive: int
    dead_over_store: float
    n_labelled: int
    n_scored: int
    n_named: int
    top_k: int
    codes_per_image: int
    metrics: dict[str, Any] | None


class ScoredHit(Named):
    """A feature found by one of its labels (`matched`, from labeller `source`) with that label's
    detection score from the most trusted judge that scored it (null: never scored)."""

    matched: str
    source: str
    score: float | None
    baseline: float | None
    beats_baseline: bool | None
    evidence_p: float | None
    names_feature: bool | None
    judge: str | None


class FeatureList(BaseModel):
    total: int
    sort: str
    min_score: float | None
    features: list[ScoredHit]


class SearchResult(BaseModel):
    query: str
    exact_feature: int | None
    results: list[ScoredHit]


class Samples(BaseModel):
    images: list[str]


class Upload(BaseModel):
    upload_id: str
    url: str
    features: list[ActiveFeature]


class TargetOut(BaseModel):
    """An edited feature in a shown image: `rank` is its place among the image's latents (0 = strongest,
    None = not firing); `raised` is False for a feature the edit switched off."""

    feature: int
    activation: float
    max_activation: float
    rank: int | None
    raised: bool


class RankedImage(BaseModel):
    """A retrieved image: `score` ranked it (cosine, plus the edited features' terms for an edit; see
    the retrieval decoder's settings), `cosine` is its similarity to the (edited) embedding."""

    image_id: str
    score: float
    cosine: float
    targets: list[TargetOut]


class JobResult(BaseModel):
    decoder: str
    seconds: float
    recipe: dict[str, Any]
    before_ranking: list[RankedImage] | None
    after_ranking: list[RankedImage] | None
    before_url: str
    after_url: str
    image_urls: list[str]


class Job(BaseModel):
    id: str
    status: str
    progress: float
    message: str
    device: str | None
    error: str | None
    queue_position: int | None
    result: JobResult | None = None


class SubmittedJob(Job):
    cached: bool
    """True when the same recipe had already finished: the result is served from the cache."""


class ClusterName(BaseModel):
    """A map cluster named by the words most frequent in its members' headline labels."""

    cluster: int
    name: str
    x: float
    y: float
    size: int


class MapPoints(BaseModel):
    """The alive features' map as parallel arrays (`label`: headline label or ""; `top_image`: an image id)."""

    feature: list[int]
    x: list[float]
    y: list[float]
    cluster: list[int]
    label: list[str]
    top_image: list[str]
    clusters: list[ClusterName]
