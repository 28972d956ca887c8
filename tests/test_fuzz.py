"""Property tests (hypothesis): the edit and recipe parsers raise only their own error on any input, and
the whole HTTP API (every operation of /api/openapi.json, fuzzed by schemathesis, plus recipes built from
store ids) never answers 500: every error is a 4xx with a JSON `detail` message.

CI runs few examples; `FUZZ_EXAMPLES=N` runs more (bench/RESULTS.md records a run of 2,000+ requests).
"""

from __future__ import annotations

import collections
import json
import os
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable

from clipatlas.errors import UserError
from clipatlas.steer.edits import Edit, parse_edit
from clipatlas.steer.recipe import Recipe

schemathesis = pytest.importorskip("schemathesis")

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "5"))
FUZZ = settings(
    max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=EXAMPLES <= 5
)
TOKEN = "fuzz-token"

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
edit_keys = st.sampled_from(["op", "feature", "value", "unit", "image", "other", "features", "colour"])
edit_like = st.dictionaries(edit_keys, json_values | st.sampled_from(["set", "add", "scale", "ban", "max", "all"]))


# ---- the parsers -------------------------------------------------------------------------------------
@FUZZ
@given(st.text(max_size=40) | st.from_regex(r"(set|add|scale|ban|transfer|difference):[-\d.,:=ex a-z]{0,20}"))
def test_parse_edit_raises_only_edit_errors(spec):
    try:
        edit = parse_edit(spec)
    except UserError:
        return
    assert Edit.from_dict(edit.to_dict()) == edit  # whatever parses round-trips


@FUZZ
@given(
    st.dictionaries(st.sampled_from(["image", "edits", "seed", "decoder", "settings", "kind", "x"]), json_values)
    | st.fixed_dictionaries({"image": st.text(min_size=1, max_size=8), "edits": st.lists(edit_like, max_size=3)})
)
def test_recipe_from_dict_raises_only_user_errors(obj):
    try:
        recipe = Recipe.from_dict(obj)
    except UserError:
        return
    assert Recipe.from_dict(json.loads(json.dumps(recipe.to_dict()))).hash == recipe.hash


# ---- the HTTP API --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    from clipatlas.atlas.synthetic import SyntheticAtlasConfig, write_synthetic_atlas

    return write_synthetic_atlas(tmp_path_factory.mktemp("fuzz"), SyntheticAtlasConfig(n_features=300, n_images=120))


def fuzzed_app(workspace):
    """An app of its own per test: each client's exit shuts its app down, generation workers included."""
    from clipatlas.web.app import create_app
    from clipatlas.web.security import HostAllowList

    # schemathesis's ASGI client sends Host: testserver; the token lets it reach the compute endpoints.
    return create_app(workspace.root, token=TOKEN, hosts=HostAllowList.serving(extra=["testserver"]))


def assert_client_error_at_most(response) -> None:
    assert response.status_code < 500, (response.status_code, response.text[:300])
    if response.status_code >= 400:
        assert isinstance(response.json()["detail"], str) and response.json()["detail"]


def test_every_operation_answers_without_a_server_error(workspace):
    """Each operation of the OpenAPI schema (pages, files and JSON) with schemathesis's valid and invalid
    inputs (negative mode: wrong types, out-of-range numbers, missing fields, odd strings)."""
    schema = schemathesis.openapi.from_asgi("/api/openapi.json", fuzzed_app(workspace))
    calls = collections.Counter()
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in schemathesis.GenerationMode:

            @FUZZ
            @given(case=operation.as_strategy(generation_mode=mode))
            def call(case):
                calls[case.operation.label] += 1
                assert_client_error_at_most(case.call(headers={"x-clipatlas-token": TOKEN}))

            try:
                call()
            except Unsatisfiable:  # negative mode of an operation that takes nothing: nothing to send wrong
                assert mode is schemathesis.GenerationMode.NEGATIVE
    assert len(calls) == len(list(schema.get_all_operations())) >= 20
    if report := os.environ.get("FUZZ_REPORT"):
        Path(report).write_text(json.dumps({"requests": sum(calls.values()), "by_operation": calls}, indent=1))


stored_ids = st.sampled_from(["img000001", "img000002", "img000077", "upload:" + "ab" * 16, "sha256:00"])
finite = st.floats(min_value=-1e4, max_value=1e4, allow_nan=False)
feature_ids = st.integers(min_value=0, max_value=299)
edits = st.one_of(
    st.fixed_dictionaries(
        {"op": st.sampled_from(["set", "add"]), "feature": feature_ids, "value": finite},
        optional={"unit": st.sampled_from(["abs", "max"])},
    ),
    st.fixed_dictionaries({"op": st.just("scale"), "feature": feature_ids, "value": finite}),
    st.fixed_dictionaries({"op": st.just("ban"), "feature": feature_ids}),
    st.fixed_dictionaries(
        {"op": st.just("transfer"), "image": stored_ids},
        optional={"features": st.lists(feature_ids, min_size=1, max_size=3)},
    ),
    st.fixed_dictionaries({"op": st.just("difference"), "image": stored_ids, "other": stored_ids, "value": finite}),
)


@pytest.fixture(scope="module")
def client(workspace):
    from fastapi.testclient import TestClient

    # One client for all examples: leaving it shuts the app down, and with it the generation workers.
    app = fuzzed_app(workspace)
    with TestClient(app, base_url="http://127.0.0.1", headers={"x-clipatlas-token": TOKEN}) as test_client:
        yield test_client


@FUZZ
@given(image=stored_ids, edit_list=st.lists(edits, max_size=12), seed=st.integers(0, 2**32 - 1))
def test_accepted_recipes_run_or_fail_with_a_message(client, image, edit_list, seed):
    """A recipe the schema accepts is queued, and its job ends done or failed: never a 500 on any poll."""
    submitted = client.post("/api/generate", json={"image": image, "edits": edit_list, "seed": seed})
    assert_client_error_at_most(submitted)
    if submitted.status_code != 200:
        return
    deadline = time.monotonic() + 120  # a loaded machine: the job waits its turn
    while (job := client.get(f"/api/jobs/{submitted.json()['id']}")).json()["status"] not in ("done", "failed"):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert job.status_code == 200
    if job.json()["status"] == "failed":
        assert job.json()["error"]
    else:
        assert client.get(job.json()["result"]["after_url"]).status_code == 200
