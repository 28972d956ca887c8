"""SAE architectures against brute-force references: activations, scaling, sparse gradients, files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from clipatlas.errors import UserError
from clipatlas.sae import ARCHITECTURES, SAE, SAEFormatError, make_config
from clipatlas.sae.model import _JumpReLU, _Step
from clipatlas.sae.sparse import gather_preactivations, sparse_decode, sparse_decode_parts


def _random_sae(arch: str, d_in=12, d_sae=48, scale=0.5, seed=0, **fields) -> SAE:
    torch.manual_seed(seed)
    if arch in ("topk", "batchtopk"):
        fields = {"k": 5, **fields}
    sae = ARCHITECTURES[arch](make_config(arch, d_in=d_in, d_sae=d_sae, input_scale=scale, **fields))
    with torch.no_grad():
        for p in sae.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return sae


def _reference_pre(sae: SAE, x: torch.Tensor) -> np.ndarray:
    W_enc, b_enc, b_dec = (t.detach().double().numpy() for t in (sae.W_enc, sae.b_enc, sae.b_dec))
    return (x.double().numpy() * sae.cfg.input_scale - b_dec) @ W_enc + b_enc


def test_topk_encode_keeps_the_k_largest_positive_preactivations():
    sae = _random_sae("topk")
    x = torch.randn(20, 12)
    z = sae.encode(x).detach().numpy()
    pre = _reference_pre(sae, x)
    for row in range(20):
        top = np.argsort(-pre[row])[:5]
        expected = np.zeros(48)
        expected[top] = np.maximum(pre[row, top], 0)
        np.testing.assert_allclose(z[row], expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_decode_undoes_the_input_scale(arch):
    sae = _random_sae(arch, scale=0.25)
    z = torch.rand(7, 48)
    W_dec, b_dec = sae.W_dec.detach().double().numpy(), sae.b_dec.detach().double().numpy()
    expected = (z.double().numpy() @ W_dec + b_dec) / 0.25
    np.testing.assert_allclose(sae.decode(z).detach().numpy(), expected, rtol=1e-5, atol=1e-5)


def test_relu_and_jumprelu_activations_match_their_definitions():
    x = torch.randn(9, 12)
    relu = _random_sae("relu")
    np.testing.assert_allclose(relu.encode(x).detach().numpy(), np.maximum(_reference_pre(relu, x), 0), atol=1e-5)
    jump = _random_sae("jumprelu")
    pre = _reference_pre(jump, x)
    threshold = jump.log_threshold.detach().exp().double().numpy()
    np.testing.assert_allclose(jump.encode(x).detach().numpy(), pre * (pre > threshold), atol=1e-5)


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_encode_sparse_lists_exactly_the_dense_codes(arch):
    sae = _random_sae(arch)
    x = torch.randn(15, 12)
    dense = sae.encode(x).detach()
    indices, values = sae.encode_sparse(x)
    rebuilt = torch.zeros_like(dense)
    for row in range(len(x)):
        keep = indices[row] >= 0
        rebuilt[row, indices[row][keep]] = values[row][keep].detach()
        assert (values[row][keep][:-1] >= values[row][keep][1:]).all()  # strongest first
    torch.testing.assert_close(rebuilt, dense)
    with torch.no_grad():  # and decoding them sparsely is the dense decode
        torch.testing.assert_close(sae.decode_sparse(indices, values), sae.decode(dense), atol=1e-5, rtol=1e-5)


def test_sparse_gather_backward_equals_dense_autograd():
    torch.manual_seed(1)
    x = torch.randn(6, 10)
    b_dec = torch.randn(10, requires_grad=True)
    W_enc = torch.randn(10, 30, requires_grad=True)
    b_enc = torch.randn(30, requires_grad=True)
    W_dec = torch.randn(30, 10, requires_grad=True)
    indices = torch.stack([torch.randperm(30)[:4] for _ in range(6)])
    weights = torch.randn(6, 4)
    params = (b_dec, W_enc, b_enc, W_dec)

    with torch.no_grad():
        x_centred = x - b_dec
        pre = x_centred @ W_enc + b_enc
    values = gather_preactivations(x_centred, b_dec, W_enc, b_enc, pre, indices)
    ((sparse_decode(indices, values, W_dec) ** 2).sum() + (values * weights).sum()).backward()
    sparse_grads = [t.grad.clone() for t in params]
    for t in params:
        t.grad = None

    dense_values = ((x - b_dec) @ W_enc + b_enc).gather(1, indices)
    dense_codes = torch.zeros(6, 30).scatter(1, indices, dense_values)
    (((dense_codes @ W_dec) ** 2).sum() + (dense_values * weights).sum()).backward()
    for sparse, t in zip(sparse_grads, params):
        torch.testing.assert_close(sparse, t.grad, rtol=1e-4, atol=1e-4)


def test_sparse_decode_parts_forward_and_backward_equal_dense_autograd():
    """Two parts of different widths and row counts (the main and AuxK codes), latents repeated across rows."""
    torch.manual_seed(2)
    W_dec = torch.randn(20, 7, requires_grad=True)
    parts = [(torch.randint(0, 20, (9, 3)), torch.randn(9, 3)), (torch.randint(0, 20, (4, 6)), torch.randn(4, 6))]
    values = [v.clone().requires_grad_() for _, v in parts]
    upstream = [torch.randn(9, 7), torch.randn(4, 7)]

    decoded = sparse_decode_parts([(ix, v) for (ix, _), v in zip(parts, values)], W_dec)
    sum((out * up).sum() for out, up in zip(decoded, upstream)).backward()
    sparse = [d.detach() for d in decoded] + [W_dec.grad.clone()] + [v.grad.clone() for v in values]
    W_dec.grad = None
    dense_values = [v.detach().clone().requires_grad_() for v in values]
    dense = [torch.zeros(len(ix), 20).scatter_add(1, ix, v) @ W_dec for (ix, _), v in zip(parts, dense_values)]
    sum((out * up).sum() for out, up in zip(dense, upstream)).backward()
    expected = [d.detach() for d in dense] + [W_dec.grad] + [v.grad for v in dense_values]
    for got, want in zip(sparse, expected):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_topk_training_loss_matches_a_dense_reference_including_auxk():
    sae = _random_sae("topk", k_aux=6, aux_weight=0.5)
    x = torch.randn(16, 12)
    dead = torch.zeros(48, dtype=torch.bool)
    dead[::3] = True
    parts = sae.training_loss(x, dead, 1.0)

    pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
    z = sae.activate(pre)
    x_hat = z @ sae.W_dec + sae.b_dec
    mse = (x_hat - x).pow(2).sum(1).mean()
    residual = (x - x_hat).detach()
    dead_pre = pre.masked_fill(~dead, float("-inf"))
    top = dead_pre.topk(6, dim=1).indices
    z_aux = torch.zeros_like(pre).scatter(1, top, torch.relu(pre.gather(1, top)))
    aux = (z_aux @ sae.W_dec - residual).pow(2).sum(1).mean() / residual.pow(2).sum(1).mean()
    torch.testing.assert_close(parts.mse, mse, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(parts.aux, aux, rtol=1e-4, atol=1e-5)
    assert parts.l0 == pytest.approx(float((z != 0).sum(1).float().mean()))

    parts.loss.backward()
    sparse_grad = sae.W_enc.grad.clone()
    sae.zero_grad()
    (mse + 0.5 * aux).backward()
    torch.testing.assert_close(sparse_grad, sae.W_enc.grad, rtol=1e-4, atol=1e-5)


def test_batchtopk_keeps_k_times_batch_activations_and_learns_a_threshold():
    sae = _random_sae("batchtopk")
    x = torch.randn(32, 12)
    parts = sae.training_loss(x, torch.zeros(48, dtype=torch.bool), 1.0)
    pre = ((x - sae.b_dec) @ sae.W_enc + sae.b_enc).detach()
    positive = torch.relu(pre).flatten()
    expected_l0 = float((positive >= positive.topk(5 * 32).values[-1]).sum()) / 32
    assert parts.l0 == pytest.approx(expected_l0)
    assert float(sae.threshold) == pytest.approx(float(positive.topk(5 * 32).values[-1]))
    z = sae.encode(x / sae.cfg.input_scale).detach()  # training_loss takes scaled inputs
    torch.testing.assert_close(z, pre * (pre > sae.threshold))


def test_jumprelu_straight_through_gradients_follow_the_rectangle_kernel():
    pre = torch.tensor([[0.10, 0.52, 0.49, 0.9]], requires_grad=True)
    threshold = torch.tensor([0.5, 0.5, 0.5, 0.5], requires_grad=True)
    bandwidth = 0.1
    _JumpReLU.apply(pre, threshold, bandwidth).sum().backward()
    # Only pre within bandwidth/2 of the threshold moves it: d/dt = -t/bw there.
    torch.testing.assert_close(threshold.grad, torch.tensor([0.0, -5.0, -5.0, 0.0]))
    torch.testing.assert_close(pre.grad, torch.tensor([[0.0, 1.0, 0.0, 1.0]]))
    threshold.grad = None
    _Step.apply(pre, threshold, bandwidth).sum().backward()
    torch.testing.assert_close(threshold.grad, torch.tensor([0.0, -10.0, -10.0, 0.0]))


def test_fresh_sae_has_unit_decoder_rows_and_encoder_as_its_transpose():
    sae = ARCHITECTURES["topk"](make_config("topk", d_in=8, d_sae=40, k=4))
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(40))
    torch.testing.assert_close(sae.W_enc, sae.W_dec.t())


def test_decoder_projection_keeps_rows_unit_norm_and_removes_radial_gradient():
    sae = _random_sae("topk")
    sae.normalise_decoder()
    sae.W_dec.grad = torch.randn_like(sae.W_dec)
    sae.remove_parallel_decoder_grad()
    torch.testing.assert_close((sae.W_dec.grad * sae.W_dec).sum(1), torch.zeros(48), atol=1e-5, rtol=0)
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(48))


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_save_and_from_pretrained_round_trip(tmp_path, arch):
    sae = _random_sae(arch, encoder="efficientnet-lite0", store="/somewhere/store")
    if arch == "batchtopk":
        sae.threshold.fill_(0.3)
    sae.save_pretrained(tmp_path / "s")
    cfg = json.loads((tmp_path / "s" / "cfg.json").read_text())
    assert cfg["schema_version"] == 1 and cfg["arch"] == arch and cfg["encoder"] == "efficientnet-lite0"
    loaded = SAE.from_pretrained(tmp_path / "s")
    assert type(loaded) is type(sae) and loaded.cfg == sae.cfg
    x = torch.randn(5, 12)
    torch.testing.assert_close(loaded(x), sae(x))
    import clipatlas

    assert clipatlas.SAE is SAE


def test_wrong_input_width_is_a_user_error():
    with pytest.raises(UserError, match=r"\(N, 12\)"):
        _random_sae("topk").encode(torch.randn(3, 11))


def test_from_pretrained_reports_missing_or_mismatched_files(tmp_path):
    with pytest.raises(SAEFormatError, match="no SAE"):
        SAE.from_pretrained(tmp_path / "missing")
    _random_sae("topk").save_pretrained(tmp_path / "s")
    cfg = json.loads((tmp_path / "s" / "cfg.json").read_text())
    (tmp_path / "s" / "cfg.json").write_text(json.dumps({**cfg, "d_sae": 50}))
    with pytest.raises(SAEFormatError, match="does not match"):
        SAE.from_pretrained(tmp_path / "s")
    (tmp_path / "s" / "cfg.json").write_text(json.dumps({**cfg, "arch": "nope"}))
    with pytest.raises(SAEFormatError, match="unknown SAE architecture"):
        SAE.from_pretrained(tmp_path / "s")


def test_hub_ids_fail_cleanly_when_offline():
    # tests run with HF_HUB_OFFLINE=1: the hub path must turn the failure into a user error.
    with pytest.raises(SAEFormatError, match="Hugging Face hub"):
        SAE.from_pretrained("clipatlas-test/no-such-sae")
