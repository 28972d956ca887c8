"""Training from the command line: every architecture learns, resumption is exact, sweeps share batches."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import clipatlas.sae.training as train_module
from clipatlas.cli import main
from clipatlas.errors import UserError
from clipatlas.sae import ARCHITECTURES, SAE, JumpReLUConfig, ReLUConfig, TrainConfig, make_config, train, train_many
from clipatlas.sae.training import BatchStream, split_rows
from clipatlas.store import write_store
from clipatlas.workspace import SAEFiles

D, N_FEATURES, N = 32, 96, 1200


def _sparse_data(n=N, seed=0) -> np.ndarray:
    """Inputs built from a few sparse directions of a random dictionary, offset from the origin."""
    rng = np.random.default_rng(seed)
    dictionary = rng.normal(size=(N_FEATURES, D))
    codes = (rng.random((n, N_FEATURES)) < 0.04) * rng.random((n, N_FEATURES)) * 3
    return (codes @ dictionary + 0.02 * rng.normal(size=(n, D)) + 4.0).astype(np.float32)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("sae-ws")
    write_store(root, _sparse_data(), encoder="synthetic-sparse")
    return root


FAST = [
    "--expansion",
    "4",
    "--batch-size",
    "128",
    "--lr",
    "3e-3",
    "--steps",
    "150",
    "--checkpoint-every",
    "50",
]


@pytest.mark.parametrize(
    "arch,extra",
    [
        ("topk", ["--k", "6"]),
        ("batchtopk", ["--k", "6"]),
        ("relu", ["--l1", "0.3", "--resample-every", "50"]),
        ("jumprelu", ["--l1", "0.02"]),
    ],
)
def test_every_architecture_trains_and_evaluates_from_the_cli(workspace, arch, extra, capsys):
    assert main(["train", "-w", str(workspace), "--name", arch, "--arch", arch, *FAST, *extra]) == 0
    sae_dir = workspace / "saes" / arch
    cfg = json.loads((sae_dir / "cfg.json").read_text())
    assert cfg["schema_version"] == 1 and cfg["arch"] == arch
    assert cfg["encoder"] == "synthetic-sparse" and cfg["training"]["trained_steps"] == 150
    metrics = json.loads((sae_dir / "metrics.json").read_text())
    assert metrics["schema_version"] == 1 and metrics["n_samples"] == 120  # the 10% held out
    assert metrics["fvu"] < 0.5, metrics  # the mean predictor scores 1.0
    assert 0 < metrics["l0"] < D * 4
    log = [json.loads(line) for line in (sae_dir / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(10, 151, 10))
    assert {"fvu", "l0", "dead_in_training", "samples_per_s"} <= set(log[-1])
    assert not (sae_dir / "checkpoints" / "checkpoint.pt").exists()
    sae = SAE.from_pretrained(sae_dir)
    x = torch.from_numpy(_sparse_data(8, seed=5))
    assert sae.decode(sae.encode(x)).shape == x.shape
    assert arch in capsys.readouterr().out


@pytest.mark.parametrize("k_aux", [0, 32])
def test_auxk_revives_latents_that_start_dead(k_aux):
    """Half the latents start with a bias that keeps them out of the top k: AuxK brings them back."""
    x = torch.from_numpy(_sparse_data())
    x = (x - x.mean(0)) * (D / (x - x.mean(0)).pow(2).sum(1).mean()).sqrt()
    torch.manual_seed(0)
    sae = ARCHITECTURES["topk"](make_config("topk", d_in=D, d_sae=128, k=4, k_aux=k_aux))
    with torch.no_grad():
        sae.b_enc[:64] = -3.0
    optimizer = torch.optim.Adam(sae.parameters(), lr=3e-3)
    samples_since_fired = torch.zeros(128)
    for _ in range(300):
        parts = sae.training_loss(x[torch.randint(0, len(x), (128,))], samples_since_fired >= 512, 1.0)
        optimizer.zero_grad()
        parts.loss.backward()
        optimizer.step()
        sae.normalise_decoder()
        samples_since_fired += 128
        samples_since_fired[parts.fired] = 0
    with torch.no_grad():
        dead_fraction = float(((sae.activate(sae.preactivations(x)) != 0).sum(0) == 0).float().mean())
    if k_aux:
        assert dead_fraction < 0.1
    else:
        assert dead_fraction > 0.3


def test_eval_all_and_plot_pareto(workspace, capsys):
    main(["train", "-w", str(workspace), "--name", "plotted", *FAST, "--no-eval"])
    assert main(["eval", "-w", str(workspace), "--plot"]) == 0
    png = workspace / "saes" / "pareto.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "plotted" in capsys.readouterr().out


def _cfg(name, **kw):
    base = dict(name=name, expansion=2, k=4, batch_size=64, steps=24, checkpoint_every=5, log_every=1, warmup_steps=3)
    return TrainConfig.from_settings({**base, **kw})


def test_killed_run_resumes_to_the_same_weights(workspace, monkeypatch):
    reference = load_file(train(workspace, _cfg("straight")) / "sae.safetensors")

    real_step = train_module.Run.train_step

    def dying_step(self, x, autocast):
        if self.step == 13:
            raise KeyboardInterrupt
        real_step(self, x, autocast)

    monkeypatch.setattr(train_module.Run, "train_step", dying_step)
    with pytest.raises(KeyboardInterrupt):
        train(workspace, _cfg("resumed"))
    assert (workspace / "saes" / "resumed" / "checkpoints" / "checkpoint.pt").is_file()
    monkeypatch.setattr(train_module.Run, "train_step", real_step)
    resumed = load_file(train(workspace, _cfg("resumed")) / "sae.safetensors")
    for key in reference:
        torch.testing.assert_close(resumed[key], reference[key], rtol=0, atol=0)
    steps = [
        json.loads(line)["step"]
        for line in (workspace / "saes" / "resumed" / "train_log.jsonl").read_text().splitlines()
    ]
    assert steps == list(range(1, 25))


def test_sweep_trains_its_grid_in_one_pass_over_the_data(workspace, tmp_path, monkeypatch):
    sweep = tmp_path / "grid.toml"
    sweep.write_text(
        'name = "g"\n[base]\narch = "topk"\nsteps = 20\nbatch_size = 64\nexpansion = 2\n'
        "[grid]\nk = [2, 8]\nlr = [0.001]\n"
    )
    reads = []
    real_batch = BatchStream.batch
    monkeypatch.setattr(BatchStream, "batch", lambda self, step: reads.append(step) or real_batch(self, step))
    assert main(["train", "-w", str(workspace), "--sweep", str(sweep), "--no-eval"]) == 0
    assert reads == list(range(20))
    l0 = {}
    for k in (2, 8):
        cfg = json.loads((workspace / "saes" / f"g-k{k}-lr0.001" / "cfg.json").read_text())
        assert cfg["k"] == k and cfg["training"]["lr"] == 0.001
        l0[k] = json.loads((workspace / "saes" / f"g-k{k}-lr0.001" / "train_log.jsonl").read_text().splitlines()[-1])[
            "l0"
        ]
    assert l0[2] <= 2 < l0[8] <= 8


def test_batches_cover_every_training_row_once_per_epoch():
    rows = np.arange(0, 100, 2)
    stream = BatchStream.__new__(BatchStream)
    stream.rows, stream.batch_size, stream.seed, stream._cache = rows, 7, 3, {}
    seen = np.concatenate([stream.positions(t) for t in range(50)])  # 350 positions = 7 epochs of 50
    for epoch in range(7):
        assert sorted(seen[epoch * 50 : (epoch + 1) * 50]) == list(range(50))
    train_rows, eval_rows = split_rows(100, 0.1, seed=3)
    assert len(eval_rows) == 10 and not set(train_rows) & set(eval_rows) and len(train_rows) == 90


def test_retraining_a_name_with_other_settings_is_refused(workspace):
    train(workspace, _cfg("fixed", steps=5))
    assert train(workspace, _cfg("fixed", steps=5)).name == "fixed"  # same settings: returns at once
    with pytest.raises(UserError, match="other settings"):
        train(workspace, _cfg("fixed", steps=6))


def test_bad_input_is_reported(tmp_path, capsys):
    assert main(["train", "-w", str(tmp_path), "--steps", "3"]) == 2
    assert "clipatlas embed" in capsys.readouterr().err
    with pytest.raises(UserError, match="k must be at least 1"):
        TrainConfig.from_settings({"k": 0})
    with pytest.raises(UserError, match="unknown SAE architecture 'gated'"):
        TrainConfig.from_settings({"arch": "gated"})
    write_store(tmp_path / "nan", _sparse_data(50))
    shard = np.load(next((tmp_path / "nan" / "store" / "img_emb").glob("*.npy")), mmap_mode="r+")
    shard[7, 3] = np.nan  # a store edited or damaged after it was written
    shard.flush()
    with pytest.raises(UserError, match="NaN"):
        train(tmp_path / "nan", _cfg("x"))
    write_store(tmp_path / "one", _sparse_data(1))
    with pytest.raises(UserError, match="at least 2"):
        train(tmp_path / "one", _cfg("x"))


def test_sweep_file_errors_name_the_problem(workspace, tmp_path):
    from clipatlas.sae.sweep import load_sweep

    bad = tmp_path / "bad.toml"
    bad.write_text("[grid]\nwidth = [1, 2]\n")
    with pytest.raises(UserError, match="unknown training setting"):
        load_sweep(bad)
    bad.write_text("[grid]\nk = 3\n")
    with pytest.raises(UserError, match="non-empty lists"):
        load_sweep(bad)
    with pytest.raises(UserError, match="names must be unique"):
        train_many(workspace, [_cfg("dup"), _cfg("dup")])


def test_resampling_points_dead_latents_at_badly_reconstructed_inputs(tmp_path):
    cfg = TrainConfig(sae=ReLUConfig(), expansion=2, steps=10, batch_size=32, lr=1e-3, warmup_steps=1)
    sae = ARCHITECTURES["relu"](make_config("relu", d_in=D, d_sae=2 * D))
    run = train_module.Run(cfg, SAEFiles(tmp_path), sae, total_steps=10, dead_window=100, meta={})
    x = torch.from_numpy(_sparse_data(32))
    run.train_step(x, autocast=False)  # creates the Adam moments
    before = {name: p.detach().clone() for name, p in sae.named_parameters()}
    dead = torch.arange(2 * D) % 3 == 0
    run.samples_since_fired[dead] = 1000
    x_hat = x.clone()
    x_hat[5] += 2.0  # only input 5 is badly reconstructed
    assert run.resample_dead(x, x_hat) == int(dead.sum())
    residual = (x - x_hat)[5] / (x - x_hat)[5].norm()
    torch.testing.assert_close(sae.W_dec[dead], residual.expand(int(dead.sum()), -1))
    enc = sae.W_enc[:, dead].t()
    torch.testing.assert_close(enc / enc.norm(dim=1, keepdim=True), residual.expand(int(dead.sum()), -1))
    assert (sae.b_enc[dead] == 0).all() and (run.samples_since_fired[dead] == 0).all()
    assert (run.optimizer.state[sae.W_dec]["exp_avg"][dead] == 0).all()
    assert (run.optimizer.state[sae.W_dec]["exp_avg"][~dead] != 0).any()
    torch.testing.assert_close(sae.W_dec[~dead], before["W_dec"][~dead])
    torch.testing.assert_close(sae.W_enc[:, ~dead], before["W_enc"][:, ~dead])
    with pytest.raises(UserError, match="resample-every"):
        TrainConfig(resample_every=-1)


def _dense_reference_training(sae: SAE, batches: list[torch.Tensor], lr: float, dead_window: int) -> None:
    """TopK + AuxK written out densely with autograd and plain Adam: what Run.train_step must equal."""
    cfg, scale = sae.cfg, sae.cfg.input_scale
    optimizer = torch.optim.Adam(sae.parameters(), lr=lr)
    since_fired = torch.zeros(cfg.d_sae, dtype=torch.int64)
    for x in batches:
        dead = since_fired >= dead_window
        xs = x * scale
        pre = (xs - sae.b_dec) @ sae.W_enc + sae.b_enc
        top = pre.detach().topk(cfg.k, dim=1).indices
        z = torch.zeros_like(pre).scatter(1, top, torch.relu(pre.gather(1, top)))
        x_hat = z @ sae.W_dec + sae.b_dec
        loss = (x_hat - xs).pow(2).sum(1).mean()
        rows = slice(0, cfg.aux_rows or None)
        residual = (xs - x_hat).detach()[rows]
        if dead.any():
            dead_pre = pre[rows].detach().masked_fill(~dead, float("-inf"))
            aux_top = dead_pre.topk(min(cfg.k_aux, int(dead.sum())), dim=1).indices
            z_aux = torch.zeros_like(pre[rows]).scatter(1, aux_top, torch.relu(pre[rows].gather(1, aux_top)))
            aux = (z_aux @ sae.W_dec - residual).pow(2).sum(1).mean() / residual.pow(2).sum(1).mean()
            loss = loss + cfg.aux_weight * aux
        optimizer.zero_grad()
        loss.backward()
        with torch.no_grad():
            sae.W_dec.grad -= (sae.W_dec.grad * sae.W_dec).sum(1, keepdim=True) * sae.W_dec
            optimizer.step()
            sae.W_dec /= sae.W_dec.norm(dim=1, keepdim=True)
        since_fired += len(x)
        since_fired[(z != 0).any(dim=0)] = 0


@pytest.mark.parametrize("aux_rows", [0, 24])
def test_training_steps_equal_a_plain_dense_reference(tmp_path, aux_rows):
    """20 steps of the sparse training step (sparse gradients, AuxK over dead columns, fused Adam, its
    decoder projection) leave the same weights as the dense autograd reference, with AuxK firing."""
    lr, dead_window, batch = 1e-3, 64, 64
    cfg = TrainConfig(
        sae=make_config("topk", k=4, k_aux=8, aux_weight=0.5, aux_rows=aux_rows),
        expansion=4,
        steps=20,
        batch_size=batch,
        lr=lr,
        warmup_steps=1,
        decay_fraction=0.0,
    )
    data = _sparse_data(400)
    sae = train_module.build_sae(cfg, data, type("Store", (), {"dir": tmp_path, "encoder": "synthetic"}))
    with torch.no_grad():
        sae.b_enc[: 2 * D] = -2.0  # half the latents start out of the top k: they die, and AuxK runs
    reference = ARCHITECTURES["topk"](sae.cfg)
    reference.load_state_dict(sae.state_dict())
    rng = np.random.default_rng(0)
    batches = [torch.from_numpy(data[rng.choice(len(data), batch, replace=False)]) for _ in range(20)]

    run = train_module.Run(cfg, SAEFiles(tmp_path), sae, total_steps=20, dead_window=dead_window, meta={})
    auxk_fired = 0
    for x in batches:
        run.train_step(x, autocast=False)
        auxk_fired += run.last["aux"] > 0
    _dense_reference_training(reference, batches, lr, dead_window)

    assert auxk_fired >= 10
    for name, value in reference.state_dict().items():
        torch.testing.assert_close(run.sae.state_dict()[name], value, rtol=0, atol=1e-5, msg=name)


def test_settings_of_another_architecture_are_refused_in_one_line(tmp_path):
    with pytest.raises(UserError, match=r"k does not apply to arch relu \(it takes l1, l1_decoder_norm\)"):
        TrainConfig.from_settings({"arch": "relu", "k": 16})
    with pytest.raises(UserError, match="unknown training setting.*widht"):
        TrainConfig.from_settings({"widht": 3})
    with pytest.raises(UserError, match=r"unknown relu setting\(s\) k; relu takes: .*l1_decoder_norm"):
        make_config("relu", d_in=4, d_sae=8, k=3)
    assert main(["train", "-w", str(tmp_path), "--arch", "relu", "--k", "16"]) == 2


def test_every_hyperparameter_reaches_api_cli_and_sweep(workspace, tmp_path, monkeypatch):
    """A field added to an architecture's config is a flag and a sweep key with no other change."""
    seen = []
    monkeypatch.setattr(train_module, "train_many", lambda ws, configs: seen.extend(configs) or [])
    monkeypatch.setattr("clipatlas.sae.train_many", lambda ws, configs: seen.extend(configs) or [])
    args = ["train", "-w", str(workspace), "--arch", "jumprelu", "--bandwidth", "0.2", "--init-threshold", "0.3"]
    assert main([*args, "--no-l1-decoder-norm"]) == 2  # a relu field, refused for jumprelu
    assert main([*args, "--no-eval"]) == 0
    assert seen[-1].sae == JumpReLUConfig(bandwidth=0.2, init_threshold=0.3)
    sweep = tmp_path / "s.toml"
    sweep.write_text('name = "s"\n[base]\narch = "relu"\n[grid]\nl1_decoder_norm = [true, false]\nexpansion = [2]\n')
    assert main(["train", "-w", str(workspace), "--sweep", str(sweep), "--steps", "4", "--no-eval"]) == 0
    assert [(c.name, c.sae.l1_decoder_norm, c.expansion, c.steps) for c in seen[-2:]] == [
        ("s-l1_decoder_normTrue-x2", True, 2, 4),
        ("s-l1_decoder_normFalse-x2", False, 2, 4),
    ]
    assert TrainConfig.from_dict(seen[-1].to_dict()) == seen[-1]


def test_sweep_names_and_flag_clashes(tmp_path):
    from clipatlas.sae.sweep import load_sweep

    sweep = tmp_path / "grid.toml"
    sweep.write_text('name = "run"\n[grid]\narch = ["topk", "batchtopk"]\nexpansion = [4]\nk = [16, 32]\n')
    names = [c.name for c in load_sweep(sweep)]
    assert names == ["run-topk-x4-k16", "run-topk-x4-k32", "run-batchtopk-x4-k16", "run-batchtopk-x4-k32"]
    with pytest.raises(UserError, match="sweeps over k"):
        load_sweep(sweep, {"k": 8})


def test_settings_left_unset_are_derived_from_the_store_size():
    from clipatlas.sae.config import derived_settings

    small = derived_settings(1_820, 1280)
    assert small == {"batch_size": 256, "epochs": 50.0, "expansion": 1.0, "k": 16, "lr": 1e-3}
    assert derived_settings(72, 1280)["batch_size"] == 64 and derived_settings(72, 1280)["expansion"] == 1 / 16
    large = derived_settings(1_400_000, 1280)
    assert large == {"batch_size": 4096, "epochs": 10.0, "expansion": 16.0, "k": 32, "lr": 4e-4}

    cfg, derived = TrainConfig.from_settings({"batch_size": 32, "k": 4}).derived(1_820, 1280)
    assert (cfg.batch_size, cfg.sae.k, cfg.expansion, cfg.epochs) == (32, 4, 1.0, 50.0)
    assert derived == ["epochs", "expansion", "lr", "warmup_steps"]
    assert cfg.warmup_steps == min(100, cfg.total_steps(1_820) // 10)
    line = cfg.describe(1_820, derived)
    assert line.startswith("1,820 training rows -> batch 32, epochs 50*, steps 2844, expansion 1*, k 4, lr 0.001*")
    with_steps, derived = TrainConfig.from_settings({"steps": 7}).derived(1_820, 1280)
    assert with_steps.epochs is None and with_steps.total_steps(1_820) == 7 and "epochs" not in derived


def test_a_run_says_what_went_wrong_and_what_to_change(workspace, caplog):
    caplog.set_level("WARNING")
    train(workspace, _cfg("short", steps=3, warmup_steps=10))
    assert "ended inside its learning-rate warm-up (3 steps of a 10-step warm-up)" in caplog.text
    cfg = TrainConfig.from_settings({"arch": "relu", "steps": 10, "batch_size": 32, "lr": 1e-3, "warmup_steps": 1})
    run = train_module.Run(
        cfg, SAEFiles(Path("unused")), ARCHITECTURES["relu"](make_config("relu", d_in=D, d_sae=64)), 10, 100, {}
    )
    run.heldout_curve = [(10, 0.40), (20, 0.30), (30, 0.38)]
    run.last = {"dead_in_training": 0.45}
    warnings = run.warnings()
    assert any("45% of the latents are dead in training" in w for w in warnings)
    assert any("held-out FVU rose from 0.300 at step 20 to 0.380" in w and "--steps 20" in w for w in warnings)
    run.heldout_curve = [(10, 0.40), (20, 0.30), (30, 0.305)]  # within noise: no warning
    run.last = {"dead_in_training": 0.1}
    assert run.warnings() == []


def test_eval_warns_when_held_out_is_much_worse_than_training(workspace, capsys):
    from clipatlas.sae.metrics import Metrics

    fitted = Metrics(
        n_samples=500,
        fvu=0.40,
        explained_variance=0.60,
        l0=16,
        silent_fraction=0.0,
        dense_fraction=0.0,
        cosine=0.9,
        d_sae=64,
        train_fvu=0.10,
    )
    assert any("much worse than on training rows (0.100)" in w for w in fitted.warnings())
    assert Metrics.from_dict(fitted.to_dict()) == fitted
    few = Metrics(
        n_samples=8,
        fvu=0.4,
        explained_variance=0.6,
        l0=16,
        silent_fraction=0.9,
        dense_fraction=0.0,
        cosine=0.9,
        d_sae=2560,
    )
    assert few.silent_floor == pytest.approx(1 - 128 / 2560) and "too few rows to tell" in few.warnings()[0]
    assert main(["train", "-w", str(workspace), "--name", "checked", *FAST]) == 0
    out = capsys.readouterr().out
    assert "FVU on training rows" in out and "held-out rows" in out
    metrics = json.loads((workspace / "saes" / "checked" / "metrics.json").read_text())
    assert 0 < metrics["train_fvu"] < 1 and metrics["silent_floor"] >= 0
    log = [json.loads(line) for line in (workspace / "saes" / "checked" / "train_log.jsonl").read_text().splitlines()]
    assert sum("heldout_fvu" in record for record in log) >= 10  # the validation curve
    best = json.loads((workspace / "saes" / "checked" / "cfg.json").read_text())["training"]["heldout_best"]
    assert best["fvu"] == min(r["heldout_fvu"] for r in log if "heldout_fvu" in r)
