"""The interp stage's settings (import-light: the command line makes its flags from them).

`SplitConfig` is shared by `clipatlas label` and `clipatlas score`: both must draw the same
labelling / scoring split, so a label is never judged on an image its labeller saw.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from clipatlas.errors import UserError

LabellerName = Literal["captions", "classifier", "clip-text", "vlm"]
ScorerName = Literal["detection", "intruder"]
JudgeName = Literal["captions", "clip-text", "classes", "vlm"]


@dataclass(frozen=True)
class SplitConfig:
    seed: int = 0
    """Seed of the labelling / scoring split and of the random non-activating images."""
    min_activating: int = 4
    """Label and score only features active on at least this many images."""
    features: str | None = None
    """Only these features, e.g. 0-99,120 (default: every feature active often enough)."""
    max_positives: int = 100
    """Held-out activating images judged per feature (spread over the activation range), and as many non-activating."""
    validation_negatives: int = 50
    """Non-activating images against which the labelling-half (validation) score is computed."""

    def __post_init__(self):
        if self.min_activating < 4:
            raise UserError(
                f"--min-activating must be at least 4 (two images each to label and score), got {self.min_activating}"
            )
        for name in ("max_positives", "validation_negatives"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")

    def feature_ids(self, n_features: int) -> list[int] | None:
        """The ids named by `features`, checked against the SAE's size; None for all."""
        if self.features is None:
            return None
        ids: set[int] = set()
        for part in self.features.split(","):
            part = part.strip()
            try:
                lo, _, hi = part.partition("-")
                ids.update(range(int(lo), int(hi or lo) + 1))
            except ValueError:
                raise UserError(f"--features takes ids and ranges like 0-99,120, not {part!r}") from None
        out_of_range = sorted(i for i in ids if not 0 <= i < n_features)
        if out_of_range:
            raise UserError(f"feature {out_of_range[0]} does not exist; this SAE has features 0..{n_features - 1}")
        return sorted(ids)


@dataclass(frozen=True)
class LabelConfig:
    labeller: LabellerName = "captions"
    """Which labeller: captions (log-odds of caption words), classifier (an encoder's class head),
    clip-text (an encoder's text tower), vlm (a vision-language model behind a chat-completions API)."""
    terms: int = 8
    """Caption terms per captions label."""
    prior_strength: float = 1000.0
    """Strength of the captions labeller's informative Dirichlet prior (its pseudo-count total)."""
    classes: int = 5
    """Class names per classifier label; vocabulary entries per clip-text label."""
    vocab_file: str | None = None
    """clip-text vocabulary, one entry per line (default: the ImageNet classes and the package's noun list)."""
    validation: bool = True
    """Also label from one part of the labelling images, to be judged on the other part: the score that
    ranks a feature's labels without the scoring images (a second call per feature for vlm)."""

    def __post_init__(self):
        for name in ("terms", "classes"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name} must be at least 1, got {getattr(self, name)}")
        if self.prior_strength <= 0:
            raise UserError(f"--prior-strength must be positive, got {self.prior_strength}")
        if self.vocab_file is not None and not Path(self.vocab_file).is_file():
            raise UserError(
                f"vocabulary file {self.vocab_file} does not exist; give a text file with one entry per line"
            )


@dataclass(frozen=True)
class VLMConfig:
    base_url: str | None = None
    """The chat-completions endpoint, e.g. https://api.openai.com/v1 or http://localhost:8000/v1 (vLLM, Ollama)."""
    model: str | None = None
    """The model name the endpoint knows, e.g. gpt-4o-mini, gemini-2.0-flash, Qwen/Qwen2.5-VL-7B-Instruct."""
    api_key_env: str = "OPENAI_API_KEY"
    """Environment variable holding the API key (never logged, never written)."""
    concurrency: int = 8
    """Calls in flight at once."""
    timeout: float = 60.0
    """Seconds before one call is given up (and retried)."""
    max_retries: int = 4
    """Retries of a call after a timeout, a 429 (waiting as Retry-After says) or a 5xx."""
    n_top: int = 8
    """Strongest labelling images shown per feature."""
    n_quantile: int = 4
    """Labelling images shown from the lower activation quantiles."""
    n_contrast: int = 4
    """Non-activating images shown for contrast."""
    image_size: int = 256
    """Longest side, in pixels, of each image sent."""
    judge_batch: int = 10
    """Images per judging call (vlm judge)."""
    dry_run: bool = False
    """Print the first request (without image bytes) and how many calls it would make; send nothing."""

    def __post_init__(self):
        for name in ("concurrency", "n_top", "image_size", "judge_batch"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.timeout <= 0 or self.max_retries < 0:
            raise UserError("--timeout must be positive and --max-retries at least 0")

    def require_endpoint(self) -> None:
        if not self.base_url or not self.model:
            raise UserError("the vlm labeller and judge need --base-url and --model (any OpenAI-compatible endpoint)")


@dataclass(frozen=True)
class ScoreConfig:
    scorer: ScorerName = "detection"
    """detection (does the judge find the feature's images from the label?) or intruder (can the judge
    pick the one non-activating image among activating ones? a score of the feature, not of a label)."""
    judge: JudgeName = "captions"
    """Who judges: captions (a sentence model reads the captions), clip-text (the encoder's text tower
    against the image embeddings), classes (the encoder's class head), vlm (a vision-language model)."""
    labellers: str | None = None
    """Score only the labels of these labellers, comma-separated (default: all)."""
    intruder_k: int = 4
    """Activating images per intruder trial (plus one non-activating)."""
    intruder_trials: int = 5
    """Intruder trials per feature."""
    shuffled_labels: int | None = None
    """Other features' labels each label is compared with on the same images (the shuffled baseline is
    their median; 19 or more also give a permutation p-value). Default: 32 for the embedding judges,
    1 for vlm (each costs the vlm a call per image batch)."""
    report: bool = False
    """Also write the Markdown summary and the AUROC plot (saes/NAME/interp/)."""
    report_min_activating: int = 10
    """The report's summary counts features active on at least this many images."""

    def __post_init__(self):
        for name in ("intruder_k", "intruder_trials", "shuffled_labels"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")

    def labeller_names(self) -> list[str] | None:
        return [n.strip() for n in self.labellers.split(",") if n.strip()] if self.labellers else None
