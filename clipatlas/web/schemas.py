"""The JSON API's wire types: every `/api/` response is one of these (see `/api/openapi.json`)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel


class LabelOut(BaseModel):
    feature: int
    source: str
    text: str
    score: dict[str, Any]


class ExampleOut(BaseModel):
    row: int
    image_id: str
    activation: float
    rank: int
    decile: int | None = None


class FeatureLink(BaseModel):
    """A related feature with its best label: `score` is Jaccard (coactivating) or cosine (similar)."""

    feature: int
    score: float
    count: int | None = None
    label: str


class HistogramBar(BaseModel):
    x: float
    y: float
    w: float
    h: float
    count: int
    low: float
    high: float


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
    labels: list[LabelOut]
    label: str
    has_icon: bool
    top_images: list[ExampleOut]
    quantile_samples: list[ExampleOut]
    coactivating: list[FeatureLink]
    similar_decoder: list[FeatureLink]
    similar_encoder: list[FeatureLink]
    histogram_bars: list[HistogramBar]


class FeatureBriefOut(BaseModel):
    feature: int
    label: str
    max_activation: float


class ActiveFeature(BaseModel):
    """A feature active in an image; `width` is its bar's length in percent of the strongest."""

    feature: int
    activation: float
    label: str
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
    top_k: int
    codes_per_image: int
    metrics: dict[str, Any] | None


class SearchHit(BaseModel):
    feature: int
    label: str
    source: str


class SearchResult(BaseModel):
    query: str
    exact_feature: int | None
    results: list[SearchHit]


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


class MapPoints(BaseModel):
    """The alive features' map as parallel arrays."""

    feature: list[int]
    x: list[float]
    y: list[float]
    cluster: list[int]
    label: list[str]
