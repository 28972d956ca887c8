"""The vlm labeller and judge against a real HTTP server started here (uvicorn, the chat-completions
protocol, answers read from the captions of the images it receives), through the real `openai` client:
retries (429 with Retry-After, 500, timeouts), malformed and empty answers, the cache, a killed run
resumed, bad URL / key / model in one line, and the dry run."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import TOPICS

from clipatlas.atlas import Atlas
from clipatlas.cli import main
from clipatlas.errors import UserError
from clipatlas.interp.caption_server import Behaviour, CaptionServer
from clipatlas.interp.config import LabelConfig, ScoreConfig, SplitConfig, VLMConfig
from clipatlas.interp.run import label, score
from clipatlas.store import Store
from clipatlas.web.server import serving_in_thread

KEY_ENV = "CLIPATLAS_TEST_VLM_KEY"
FEATURES = "0-5"  # six topic features: 12 calls with their validation labels


@pytest.fixture(scope="module")
def server(captioned_workspace):
    caption_server = CaptionServer(Store.open(captioned_workspace))
    with serving_in_thread(caption_server.make_app()) as url:
        yield caption_server, url + "/v1"


@pytest.fixture
def workspace(captioned_workspace, tmp_path, server, monkeypatch):
    """A fresh copy of the workspace (labels and cache of its own) and a server back to normal."""
    root = tmp_path / "ws"
    shutil.copytree(captioned_workspace, root)
    caption_server, _ = server
    caption_server.behaviour = Behaviour()
    caption_server.counters.__init__()
    caption_server.release.clear()
    monkeypatch.setenv(KEY_ENV, "test-key")
    return root


def vlm(url: str, **fields) -> VLMConfig:
    return VLMConfig(base_url=url, model="caption-vlm", api_key_env=KEY_ENV, **{"max_retries": 3, **fields})


def vlm_labels(root) -> dict[int, str]:
    atlas = Atlas.open(root, "t")
    return {f: lab.text for f in range(16) for lab in atlas.labels(f) if lab.source == "vlm"}


def run_label(root, url, **fields):
    return label(root, "t", LabelConfig(labeller="vlm"), SplitConfig(features=FEATURES), vlm(url, **fields))


def test_labels_from_the_images_captions_and_a_rerun_costs_nothing(workspace, server, capsys):
    caption_server, url = server
    run = run_label(workspace, url)
    assert run.labelled == 6 and run.failed == 0
    assert vlm_labels(workspace) == {f: TOPICS[f] for f in range(6)}
    atlas = Atlas.open(workspace, "t")
    (lab,) = [lab for lab in atlas.labels(0) if lab.source == "vlm"]  # the shared workspace may hold others
    assert (lab.model, lab.prompt_version, lab.description) == ("caption-vlm", "label-v1", "Images of a cat.")
    assert lab.evidence["validation_text"] == "cat" and len(lab.evidence["images"]["strong"]) == 8
    assert caption_server.counters.requests == 12 == caption_server.counters.answers
    assert "12 answers (12 HTTP requests with retries), 0 from the cache" in capsys.readouterr().out
    assert run_label(workspace, url).labelled == 6  # from the cache
    assert caption_server.counters.requests == 12
    assert "0 answers (0 HTTP requests with retries), 12 from the cache" in capsys.readouterr().out


def test_429_is_retried_after_the_servers_retry_after(workspace, server):
    caption_server, url = server
    caption_server.behaviour.script = ["429"]
    caption_server.behaviour.retry_after = 1.5
    assert run_label(workspace, url, concurrency=1).labelled == 6
    times = caption_server.counters.times
    assert times[1] - times[0] >= 1.5  # it waited as told, not its own shorter backoff
    assert caption_server.counters.requests == 13


def test_500_timeouts_malformed_and_empty_answers_are_retried(workspace, server):
    caption_server, url = server
    # call 1: a 500 and a stall (the client retries), then a malformed reply (asked again); call 2: an empty
    # reply; call 3: a body that is not JSON
    caption_server.behaviour.script = ["500", "stall", "malformed", "ok", "empty", "ok", "garbage"]
    caption_server.behaviour.stall_seconds = 3
    run = run_label(workspace, url, concurrency=1, timeout=1.0)
    assert run.labelled == 6 and run.failed == 0
    assert vlm_labels(workspace) == {f: TOPICS[f] for f in range(6)}
    assert caption_server.counters.requests == 12 + 5


def test_a_feature_whose_answers_stay_malformed_is_left_for_the_next_run(workspace, server, capsys):
    caption_server, url = server
    caption_server.behaviour.script = ["malformed"] * 3  # the first call and both re-asks
    run = run_label(workspace, url, concurrency=1)
    assert run.failed == 1 and run.labelled == 5  # not cached: the next run asks again
    assert "1 without a label (re-run to retry)" in run.format()
    assert run_label(workspace, url, concurrency=1).labelled == 6
    assert caption_server.counters.requests == 12 + 2 + 1


def test_killed_run_resumes_without_labelling_a_feature_twice(workspace, server, tmp_path):
    caption_server, url = server
    uninterrupted = tmp_path / "uninterrupted"
    shutil.copytree(workspace, uninterrupted)
    run_label(uninterrupted, url)
    expected = vlm_labels(uninterrupted)
    caption_server.counters.__init__()

    caption_server.behaviour.hang_after = 5  # the sixth call hangs: the run is killed with it in flight
    command = [sys.executable, "-m", "clipatlas", "label", "-w", str(workspace), "--name", "t", "--labeller", "vlm"]
    command += ["--features", FEATURES, "--base-url", url, "--model", "caption-vlm", "--api-key-env", KEY_ENV]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent), "TQDM_DISABLE": "1"}
    process = subprocess.Popen(
        [*command, "--concurrency", "1"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 120
    while caption_server.counters.waiting == 0:
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    caption_server.behaviour.hang_after = None
    caption_server.release.set()  # the abandoned call ends without an answer
    assert caption_server.counters.answers == 5 and vlm_labels(workspace) == {}  # nothing stored yet
    with sqlite3.connect(Atlas.open(workspace, "t").files.vlm_cache) as conn:
        kept = conn.execute("SELECT COUNT(*) FROM answers").fetchone()[0]
    # Every answer the client received was kept. (Rarely, under load, a keep-alive connection drops
    # after the server answered and the client's transport retries that call: it is then the one in
    # flight at the kill, and the server counts its answer though the client never got it.)
    assert kept in (4, 5)
    before = caption_server.counters.requests

    finished = subprocess.run([*command, "--concurrency", "4"], env=env, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr
    assert f"{kept} from the cache" in finished.stdout
    assert caption_server.counters.requests - before == 12 - kept  # the resumed run asked only the rest
    counts = caption_server.counters.by_images
    assert len(counts) == 12 and sum(counts.values()) == 12 + (5 - kept)  # nothing received was asked twice
    assert vlm_labels(workspace) == expected


def test_vlm_judge_scores_labels_and_features(workspace, server):
    caption_server, url = server
    label(workspace, "t", LabelConfig(labeller="captions", terms=1), SplitConfig(features=FEATURES))
    detection = score(workspace, "t", ScoreConfig(judge="vlm"), SplitConfig(features=FEATURES), vlm(url))
    assert len(detection.scores) == 6
    for s in detection.scores:  # the label is the topic: the server matches exactly the topic's captions
        assert s.value == 1.0 and s.baseline < 0.6 and s.beats_baseline and s.judge_model == "caption-vlm"
    intruder = score(
        workspace,
        "t",
        ScoreConfig(scorer="intruder", judge="vlm", intruder_trials=2),
        SplitConfig(features=FEATURES),
        vlm(url),
    )
    assert len(intruder.scores) == 6 and all(s.value == 1.0 and s.baseline == 0.2 for s in intruder.scores)
    assert Atlas.open(workspace, "t").feature(3).label == TOPICS[3]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"api_key": "another-key"}, f"refused the API key (401); set the key in ${KEY_ENV}"),
        ({"models": ("other-model",)}, "answered 404 for model 'caption-vlm': the model name is unknown there"),
    ],
)
def test_wrong_key_or_model_fails_in_one_line(workspace, server, capsys, change, message):
    caption_server, url = server
    for field, value in change.items():
        setattr(caption_server.behaviour, field, value)
    args = ["-v", "label", "-w", str(workspace), "--name", "t", "--labeller", "vlm", "--features", FEATURES]
    assert main([*args, "--base-url", url, "--model", "caption-vlm", "--api-key-env", KEY_ENV]) == 2
    captured = capsys.readouterr()
    assert message in captured.err and captured.err.count("\n") == 1
    assert "test-key" not in captured.err + captured.out  # the key is never printed, even with -v
    assert caption_server.counters.requests == 1  # the first call went alone


def test_unreachable_endpoint_fails_in_one_line(workspace):
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nothing listens there once the probe closes
    with pytest.raises(UserError, match=f"cannot reach http://127.0.0.1:{port}/v1; check --base-url"):
        run_label(workspace, f"http://127.0.0.1:{port}/v1", max_retries=0)
    with pytest.raises(UserError, match="need --base-url and --model"):
        label(workspace, "t", LabelConfig(labeller="vlm"), SplitConfig(features=FEATURES), VLMConfig())


def test_dry_run_prints_the_first_request_and_sends_nothing(workspace, server, capsys):
    caption_server, url = server
    run = run_label(workspace, url, dry_run=True)
    out = capsys.readouterr().out
    assert run.labelled == 0 and caption_server.counters.requests == 0
    assert '"model": "caption-vlm"' in out and "<jpeg, " in out and "base64" not in out
    assert "Images where the feature does NOT fire:" in out
    assert "12 calls would be made (0 answers already cached)" in out
