"""The suite: one SAE (and its baselines) through every section, one report.

Sections are plain functions of an `Evaluation` registered in `SECTIONS`; an `Evaluation` computes
what they share (rows, labels, fitted baselines, coding passes) lazily and once. The data sections
are saved as they finish (`SAEFiles.eval_section`, keyed by the SAE's weights, the store's shards
and the settings), so an evaluation killed half-way continues where it stopped when re-run.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clipatlas._io import atomic_write_json, read_json, sha256_file
from clipatlas.devices import resolve_device
from clipatlas.errors import UserError
from clipatlas.evaluate import external, stability
from clipatlas.evaluate.coders import BASELINE_FITS, SAE_CODER, FitData, SAECoder
from clipatlas.evaluate.coding import Coded, code_rows
from clipatlas.evaluate.config import EvaluateConfig
from clipatlas.evaluate.fidelity import FidelityTasks
from clipatlas.evaluate.labels import NO_LABELS_HINT, Labels, read_labels
from clipatlas.evaluate.probing import probe_classes
from clipatlas.evaluate.purity import purity
from clipatlas.sae.config import TrainConfig
from clipatlas.sae.metrics import eval_rows
from clipatlas.store import Store
from clipatlas.workspace import SAEFiles, Workspace

PARTNER_SEED_OFFSET = 1  # baselines' second fit for stability: the evaluation seed + 1


class Shared:
    """What every SAE of one `evaluate` call shares: the store, its labels, the encoder's task heads."""

    def __init__(self, ws: Workspace, names: list[str], config: EvaluateConfig):
        self.ws, self.names, self.config = ws, names, config
        self.device = resolve_device(config.device)
        self.store = Store.open(ws.root)
        self.labels: Labels | None = read_labels(self.store, config.label_column)

    @cached_property
    def fidelity(self) -> FidelityTasks:
        return FidelityTasks(self.store.encoder, self.labels, self.config.device)

    @cached_property
    def store_key(self) -> list:
        return [len(self.store)] + [[s["emb_sha256"], s["meta_sha256"]] for s in self.store.manifest["shards"]]


class Evaluation:
    """One SAE's evaluation."""

    def __init__(self, shared: Shared, name: str):
        from clipatlas.sae import SAE

        self.shared, self.config, self.store = shared, shared.config, shared.store
        self.ws = shared.ws
        self.files = self.ws.sae(name)
        self.name = name
        self.sae = SAE.from_pretrained(self.files.dir, device=shared.device).eval()
        if self.store.d != self.sae.cfg.d_in:
            raise UserError(
                f"the store holds {self.store.d}-d embeddings but SAE {name!r} expects {self.sae.cfg.d_in}-d"
            )

    # -- rows ----------------------------------------------------------------------------------
    def held_out_of(self, files: SAEFiles) -> np.ndarray:
        """The rows an SAE held out from its training; for SAEs trained elsewhere (no split
        recorded, every row is unseen) a seeded tenth, so baselines and probes have training rows."""
        from clipatlas.sae.training import split_rows

        rows = eval_rows(read_json(files.config), len(self.store))
        if len(rows) < len(self.store):
            return rows
        return split_rows(len(self.store), TrainConfig.eval_fraction, self.config.seed)[1]

    @cached_property
    def held_out(self) -> np.ndarray:
        return self.held_out_of(self.files)

    def training_sample(self, held_out: np.ndarray, seed: int) -> np.ndarray:
        """A seeded sample of at most `max_train_rows` of the rows not in `held_out`, sorted."""
        train = np.setdiff1d(np.arange(len(self.store)), held_out)
        take = min(self.config.max_train_rows, len(train))
        return np.sort(np.random.default_rng(seed).choice(train, take, replace=False))

    @cached_property
    def sample(self) -> np.ndarray:
        return self.training_sample(self.held_out, self.config.seed)

    @cached_property
    def analysis_rows(self) -> np.ndarray:
        return np.union1d(self.sample, self.held_out)

    @cached_property
    def analysis_test(self) -> np.ndarray:
        return np.isin(self.analysis_rows, self.held_out)

    @cached_property
    def analysis_labels(self) -> np.ndarray:
        return self.shared.labels.codes[self.analysis_rows]

    # -- coders and passes -----------------------------------------------------------------------
    @cached_property
    def sae_coder(self) -> SAECoder:
        cfg = self.sae.cfg
        return SAECoder(self.sae, SAE_CODER, f"the SAE {self.name!r} ({cfg.arch}, {cfg.d_sae} latents)")

    def _sinks(self) -> list:
        if "fidelity" not in self.config.suite:
            return []
        return self.shared.fidelity.sinks(self.fit_mean)

    @cached_property
    def fit_x(self) -> np.ndarray:
        return self.store.rows(self.sample)

    @cached_property
    def fit_mean(self) -> np.ndarray:
        return self.fit_x.mean(axis=0, dtype=np.float64)

    @cached_property
    def sae_coded(self) -> Coded:
        every_row = np.arange(len(self.store))
        return self._code(self.sae_coder, every_row)

    def _code(self, coder, rows: np.ndarray) -> Coded:
        return code_rows(
            coder,
            self.store,
            rows,
            self.analysis_rows,
            self.held_out,
            self._sinks(),
            self.config.batch_size,
            self.shared.device,
        )

    @cached_property
    def k(self) -> int:
        """The SAE's held-out L0, rounded: the sparsity the baselines get."""
        cached = self.cache_load("reconstruction")
        l0 = cached["coders"][SAE_CODER]["l0"] if cached else self.sae_coded.reconstruction.l0
        return max(1, round(l0))

    def fit_data(self, x: np.ndarray, seed: int) -> FitData:
        return FitData(
            x, self.k, self.sae.cfg.d_sae, self.sae.cfg.input_scale, seed, self.config.kmeans_iters, self.shared.device
        )

    @cached_property
    def baselines(self) -> dict:
        data = self.fit_data(self.fit_x, self.config.seed)
        return {name: BASELINE_FITS[name](data) for name in self.config.baselines}

    @cached_property
    def coded(self) -> dict[str, Coded]:
        coded = {SAE_CODER: self.sae_coded}
        for name, coder in self.baselines.items():
            coded[name] = self._code(coder, self.analysis_rows)
        return coded

    @cached_property
    def coders(self) -> dict[str, dict[str, Any]]:
        """What each coder is, for the report (cached like a section: describing needs the fits)."""
        cached = self.cache_load("coders")
        if cached:
            return cached
        coders = {SAE_CODER: self.sae_coder, **self.baselines}
        info = {name: self.coder_info(name, coder) for name, coder in coders.items()}
        self.cache_save("coders", info)
        return info

    def coder_info(self, name: str, coder) -> dict[str, Any]:
        rows = len(self.store) if name == SAE_CODER else len(self.analysis_rows)
        return {
            "description": coder.description,
            "width": coder.width,
            "k": coder.sparsity,
            "signed": coder.signed,
            "rows_coded": rows,
        }

    # -- the second SAE -------------------------------------------------------------------------
    @cached_property
    def partner(self) -> SAEFiles | None:
        found = stability.find_partner(self.ws, self.name, self.shared.names)
        if found is None and self.config.train_stability:
            found = stability.train_partner(self.ws, self.name)
        return found

    # -- finished sections -----------------------------------------------------------------------
    @cached_property
    def weights_sha(self) -> str:
        return sha256_file(self.files.weights)

    def cache_key(self, section: str) -> str:
        key = {
            "section": section,
            "weights": self.weights_sha,
            "store": self.shared.store_key,
            "config": self.config.identity(),
        }
        if section == "stability":
            key["partner"] = sha256_file(self.partner.weights) if self.partner else None
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()

    def cache_load(self, section: str) -> dict[str, Any] | None:
        path = self.files.eval_section(section)
        if not path.is_file():
            return None
        saved = read_json(path)
        return saved["result"] if saved.get("key") == self.cache_key(section) else None

    def cache_save(self, section: str, result: dict[str, Any]) -> None:
        atomic_write_json(self.files.eval_section(section), {"key": self.cache_key(section), "result": result})


# -- the sections ----------------------------------------------------------------------------------
def reconstruction_section(ev: Evaluation) -> dict[str, Any]:
    coders = {}
    for name, coded in ev.coded.items():
        if coded.reconstruction is None:
            coders[name] = {"skipped": "does not rebuild embeddings"}
            continue
        coders[name] = {
            **coded.reconstruction.to_dict(),
            "dead_over_store": coded.dead_fraction,
            "rows_coded": coded.n_rows,
        }
    return {"coders": coders}


def fidelity_section(ev: Evaluation) -> dict[str, Any]:
    tasks = ev.shared.fidelity
    if not tasks.available:
        return {"skipped": "; ".join(tasks.notes)}
    coders = {name: coded.fidelity for name, coded in ev.coded.items() if coded.fidelity}
    reference = {}
    first = next(iter(coders.values()), {})
    if "zero_shot_accuracy_original" in first:
        reference["zero_shot_accuracy_original"] = first["zero_shot_accuracy_original"]
    return {"coders": coders, "reference": reference, "notes": tasks.notes}


def probing_section(ev: Evaluation) -> dict[str, Any]:
    labels = ev.shared.labels
    if labels is None:
        return {"skipped": NO_LABELS_HINT}
    coders = {}
    for name, coded in ev.coded.items():
        coders[name] = probe_classes(
            coded.codes,
            coded.coder.signed,
            ev.analysis_labels,
            labels.classes,
            ~ev.analysis_test,
            ev.analysis_test,
            ev.config.probe_ks,
            ev.config.min_class_rows,
        )
    return {"label_column": labels.column, "coders": coders}


def purity_section(ev: Evaluation) -> dict[str, Any]:
    labels = ev.shared.labels
    if labels is None:
        return {"skipped": NO_LABELS_HINT}
    coders = {
        name: purity(
            coded.codes, coded.coder.signed, ev.analysis_labels, len(labels.classes), ev.config.purity_k, ev.config.seed
        )
        for name, coded in ev.coded.items()
    }
    return {"label_column": labels.column, "coders": coders}


def stability_section(ev: Evaluation) -> dict[str, Any]:
    partner = ev.partner
    if partner is None:
        return {
            "skipped": f"needs a second SAE trained like {ev.name!r} with another seed: evaluate one with "
            f"--name beside it, or add --train-stability to train .{ev.name}-seed<N> now"
        }
    from clipatlas.sae import SAE

    other_sae = SAE.from_pretrained(partner.dir, device=ev.shared.device)
    if other_sae.cfg.d_sae != ev.sae.cfg.d_sae:
        return {"skipped": f"{partner.name!r} has {other_sae.cfg.d_sae} latents, {ev.name!r} {ev.sae.cfg.d_sae}"}
    seed = ev.config.seed + PARTNER_SEED_OFFSET
    other_sample = ev.training_sample(ev.held_out_of(partner), seed)
    other_data = ev.fit_data(ev.store.rows(other_sample), seed)
    pairs = {SAE_CODER: lambda: (ev.sae_coder.directions(), SAECoder(other_sae, SAE_CODER, "").directions(), False)}
    for name, coder in ev.baselines.items():
        if coder.directions() is not None:  # refit on the other SAE's training rows, with the next seed
            pairs[name] = lambda n=name, c=coder: (
                c.directions(),
                BASELINE_FITS[n](other_data).directions(),
                c.sign_free,
            )
    matched = stability.match_all(pairs, torch.get_num_threads())
    coders = {name: stability.summarise(cosines, partner.name) for name, cosines in matched.items()}
    for name in ev.baselines:
        coders.setdefault(name, {"skipped": "a fixed basis: nothing to match"})
    return {"partner": partner.name, "coders": coders}


def interpretability_section(ev: Evaluation) -> dict[str, Any]:
    return external.interpretability(ev.ws, ev.files)


def steering_section(ev: Evaluation) -> dict[str, Any]:
    return external.steering(ev.ws, ev.files)


SECTIONS: dict[str, Callable[[Evaluation], dict[str, Any]]] = {
    "reconstruction": reconstruction_section,
    "fidelity": fidelity_section,
    "probing": probing_section,
    "purity": purity_section,
    "stability": stability_section,
    "interpretability": interpretability_section,
    "steering": steering_section,
}
# Read from other stages' files in a moment, and changed by them: always recomputed.
UNCACHED = ("interpretability", "steering")


def evaluate_one(shared: Shared, name: str) -> dict[str, Any]:
    """Every section of the suite for SAE `name`; writes report.json, report.md and the plots."""
    from clipatlas.evaluate import render

    ev = Evaluation(shared, name)
    uses_data = bool(set(shared.config.suite) - set(UNCACHED))
    sections, seconds, cpu_seconds = {}, {}, {}
    for section in shared.config.suite:
        started, cpu_started = time.perf_counter(), time.process_time()
        cached = None if section in UNCACHED else ev.cache_load(section)
        if cached is None:
            cached = SECTIONS[section](ev)
            if section not in UNCACHED:
                ev.cache_save(section, cached)
        sections[section] = cached
        seconds[section] = round(time.perf_counter() - started, 2)
        cpu_seconds[section] = round(time.process_time() - cpu_started, 2)  # all threads: tells a busy machine
    labels = shared.labels
    report = {
        "sae": name,
        "arch": ev.sae.cfg.arch,
        "d_in": ev.sae.cfg.d_in,
        "d_sae": ev.sae.cfg.d_sae,
        "encoder": shared.store.encoder,
        "store_rows": len(shared.store),
        "rows": {"held_out": len(ev.held_out), "training_sample": len(ev.sample)},
        "labels": {"column": labels.column, "classes": len(labels.classes), "labelled_rows": int(labels.labelled.sum())}
        if labels
        else None,
        "k": ev.k if uses_data else None,
        "coders": ev.coders if uses_data else {SAE_CODER: ev.coder_info(SAE_CODER, ev.sae_coder)},
        "sections": sections,
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "notes": [NO_LABELS_HINT] if labels is None else [],
        "config": shared.config.identity(),
    }
    render.write_report(ev.files, report)
    return report


def evaluate_suite(
    workspace: str | Path | Workspace, names: list[str] | None = None, config: EvaluateConfig | None = None
) -> dict[str, dict[str, Any]]:
    """Evaluate SAEs `names` (default: the workspace's only SAE) and their baselines; returns the
    reports by name. With `config.compare`, also writes the side-by-side table and Pareto plots."""
    from clipatlas.evaluate import render

    config = config or EvaluateConfig()
    ws = Workspace.of(workspace)
    names = list(names or [ws.sae().name])
    for name in names:
        ws.sae(name)  # a missing SAE fails before any work
    shared = Shared(ws, names, config)
    reports = {name: evaluate_one(shared, name) for name in names}
    if config.compare:
        render.write_compare(ws, reports)
    return reports
