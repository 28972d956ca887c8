"""Label quality: detection AUROC of every labeller alone and of the headline labels, under each
offline judge, against the shuffled baseline, on held-out images.

    .venv/bin/python bench/labels.py -w demo-atlas [--name demo] [--levers] [--train expansion=1,k=32]

Works on a copy (bench/out/labels-<tag>/; the workspace is not touched). Labels every feature active
on at least 10 images with the product's labellers (captions, classifier) and, with --levers, with
bench-only variants: captions-3 (at most 3 terms: readable), combo (5 caption terms + 2 classes in one
label) and lens (the old `W_head @ decoder direction` classes, kept only if it wins somewhere). Scores
them with the captions judge (a sentence model reads captions) and the classes judge (class
probabilities, reads no caption). --train first trains another SAE on the copied store with the demo's
recipe changed by these settings, and measures that one.

For each judge it prints, per labeller and for the headline chosen three ways, the three numbers
(median AUROC, median shuffled-baseline AUROC, share beating its own baseline):
  * headline (the product's rule, `atlas.types.preferred`): the labeller with the best median
    labelling-half (validation) score under that judge, a feature's own validation score breaking ties;
  * per-feature validation: per feature, the label with the best own validation score;
  * best held-out (NOT honest, for scale only): per feature, the label with the best scoring-half AUROC.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from clipatlas.atlas.types import preferred  # noqa: E402
from clipatlas.interp import labellers  # noqa: E402
from clipatlas.interp.config import LabelConfig, ScoreConfig, SplitConfig  # noqa: E402
from clipatlas.interp.run import label, open_data, score  # noqa: E402
from clipatlas.interp.types import Draft  # noqa: E402

MIN_ACTIVATING = 10
PRODUCT = ("captions", "classifier")
JUDGES = ("captions", "classes")


class CaptionsThree(labellers.CaptionsLabeller):
    name = "captions-3"

    def __init__(self, data, config):
        super().__init__(data, config)
        self.terms = 3


class Combo(labellers.Labeller):
    """5 caption terms then 2 classifier classes, in one label."""

    name = "combo"

    def __init__(self, data, config):
        self.words = labellers.CaptionsLabeller(data, config)
        self.words.terms = 5
        self.classes = labellers.ClassifierLabeller(data, config)
        self.classes.classes = 2

    def __call__(self, view):
        parts = [d.text for d in (self.words(view), self.classes(view)) if d is not None and d.text]
        return Draft(", ".join(parts))


class Lens(labellers.Labeller):
    """The atlas's old label: the classes whose logits the decoder direction raises most (3 classes)."""

    name = "lens"

    def __init__(self, data, config):
        weight, _, names = data.class_head
        directions = data.atlas.sae.W_dec.detach().float().numpy()
        self.logits = directions @ weight.T
        self.names = [labellers.short_class_name(n) for n in names]

    def __call__(self, view):
        return Draft(", ".join(self.names[c] for c in np.argsort(-self.logits[view.feature])[:3]))


LEVERS = (CaptionsThree, Combo, Lens)


def three(scores) -> dict:
    """The issue's three numbers, and the share clear enough to name the feature (p <= 0.05)."""
    values, baselines = np.array([s.value for s in scores]), np.array([s.baseline for s in scores])
    return {
        "n": int(len(values)),
        "median_auroc": round(float(np.median(values)), 3),
        "median_baseline": round(float(np.median(baselines)), 3),
        "beats_own_baseline": round(float(np.mean(values > baselines)), 3),
        "names_feature": round(float(np.mean([s.names_feature for s in scores])), 3),
    }


def measure(root: Path, name: str, sources: list[str]) -> dict:
    atlas, data = open_data(root, name, SplitConfig(min_activating=MIN_ACTIVATING))
    features = np.flatnonzero(data.counts >= MIN_ACTIVATING).tolist()
    out = {}
    for judge in JUDGES:
        rows = {}
        per_feature = {f: [lab for lab in atlas.labels(f) if lab.source in sources] for f in features}
        for source in sources:
            scores = [lab.score(judge=judge) for labs in per_feature.values() for lab in labs if lab.source == source]
            scores = [s for s in scores if s is not None]
            rows[source] = three(scores)
            rows[source]["median_validation"] = round(
                float(np.median([s.validation for s in scores if s.validation is not None])), 3
            )
        product = [s for s in sources if s in PRODUCT]
        for policy, pool in (("headline (product labellers)", product), ("headline (all labellers)", sources)):
            chosen = [preferred([lab for lab in labs if lab.source in pool], judge) for labs in per_feature.values()]
            chosen = [s for _, s in filter(None, chosen)]
            rows[policy] = three(chosen)
        own = [
            max((lab.score(judge=judge) for lab in labs if lab.source in product), key=lambda s: s.validation or 0.0)
            for labs in per_feature.values()
        ]
        rows["per-feature validation (product labellers)"] = three(own)
        oracle = [
            max((lab.score(judge=judge) for lab in labs if lab.source in product), key=lambda s: s.value)
            for labs in per_feature.values()
        ]
        rows["best held-out (not honest)"] = three(oracle)
        out[judge] = rows
    return out


def _number(text: str) -> int | float:
    """'2' -> 2, '0.5' -> 0.5 (expansion may be a fraction)."""
    value = float(text)
    return int(value) if value.is_integer() and "." not in text else value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-w", "--workspace", required=True)
    parser.add_argument("--name", default="demo")
    parser.add_argument("--levers", action="store_true", help="also the bench-only labellers")
    parser.add_argument(
        "--train", default=None, help="train another SAE first: demo recipe with these KEY=VALUE changes"
    )
    args = parser.parse_args()
    tag = args.name + ("-" + args.train.replace(",", "-").replace("=", "") if args.train else "")
    root = ROOT / "bench" / "out" / f"labels-{tag}"
    shutil.rmtree(root, ignore_errors=True)
    source = Path(args.workspace)
    shutil.copytree(source / "store", root / "store")
    name = args.name
    timings = {}
    started = time.perf_counter()
    if args.train:
        from clipatlas.atlas import build_atlas
        from clipatlas.demo import DEMO_SAE, _demo_train_config
        from clipatlas.sae import TrainConfig, train

        changes = dict(item.split("=") for item in args.train.split(","))
        name = "variant"
        settings = {**DEMO_SAE, **{k: _number(v) for k, v in changes.items()}}
        base = _demo_train_config(root, name)
        train(root, TrainConfig.from_settings({**settings, "name": name, "steps": base.steps}))
        build_atlas(root, name)
    else:
        shutil.copytree(source / "saes" / name, root / "saes" / name, ignore=shutil.ignore_patterns("icons", "interp"))
    timings["prepare_s"] = round(time.perf_counter() - started, 1)
    sources = list(PRODUCT)
    if args.levers:
        for cls in LEVERS:
            labellers.LABELLERS[cls.name] = cls
        sources += [cls.name for cls in LEVERS]
    split = SplitConfig(min_activating=MIN_ACTIVATING)
    for labeller in sources:
        started = time.perf_counter()
        label(root, name, LabelConfig(labeller=labeller), split)
        timings[f"label_{labeller}_s"] = round(time.perf_counter() - started, 1)
    for judge in JUDGES:
        started = time.perf_counter()
        score(root, name, ScoreConfig(judge=judge), split)
        timings[f"score_{judge}_s"] = round(time.perf_counter() - started, 1)
    result = {
        "workspace": str(source),
        "sae": name,
        "train": args.train,
        **measure(root, name, sources),
        "timings": timings,
    }
    print(json.dumps(result, indent=1))
    (ROOT / "bench" / "out" / f"labels-{tag}.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
