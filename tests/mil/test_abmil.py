"""Gated attention MIL: by hand, save and load, finds the few signal patches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_xmag.mil import (
    ABMIL,
    ABMILSettings,
    cross_validate_abmil,
    load_abmil,
    save_abmil,
)


# ---- synthetic data -------------------------------------------------------------------------
def feature_bags(n: int = 40, dim: int = 32, strength: float = 5.0, seed: int = 0, signal: bool = True):
    """Bags of 20-50 Gaussian patches; in class-1 bags 1-3 patches are shifted along one
    direction (a colour or texture no other patch has). Without ``signal`` the labels are
    shuffled, so they are independent of the features."""
    rng = np.random.default_rng(seed)
    direction = rng.standard_normal(dim)
    direction /= np.linalg.norm(direction)
    y = np.arange(n) % 2
    bags, marked = [], []
    for label in y:
        size = int(rng.integers(20, 50))
        bag = rng.standard_normal((size, dim)).astype(np.float32)
        hit = np.zeros(size, bool)
        if label:
            hit[rng.choice(size, int(rng.integers(1, 4)), replace=False)] = True
            bag[hit] += strength * direction.astype(np.float32)
        bags.append(bag)
        marked.append(hit)
    return bags, (y if signal else rng.permutation(y)), marked


# ---- ABMIL -------------------------------------------------------------------------------------
def test_gated_attention_by_hand_and_save_load(tmp_path) -> None:
    torch.manual_seed(0)
    model = ABMIL(8, hidden=6, attn_dim=4, n_classes=3, dropout=0.0).eval()
    model.set_input_norm(np.random.default_rng(0).normal(2.0, 3.0, (50, 8)))
    bag = torch.randn(5, 8)
    logits, scores = model(bag)
    h = torch.relu(model.embed[0]((bag - model.input_mean) / model.input_std))
    a = model.attention_w(torch.tanh(model.attention_v(h)) * torch.sigmoid(model.attention_u(h)))[:, 0]
    torch.testing.assert_close(scores, a)
    torch.testing.assert_close(logits, model.classifier(torch.softmax(a, 0) @ h))
    loaded, classes = load_abmil(save_abmil(model, tmp_path / "head.safetensors", ["a", "b", "c"]))
    assert classes == ["a", "b", "c"]
    torch.testing.assert_close(loaded(bag)[0], logits)  # the input standardisation travels with it


def test_abmil_finds_the_few_signal_patches_and_not_noise() -> None:
    settings = ABMILSettings(epochs=10, lr=1e-3)
    bags, y, marked = feature_bags(signal=True)
    result = cross_validate_abmil(bags, y, ["neg", "pos"], folds=4, seed=0, settings=settings)
    assert result.summary["balanced_accuracy"]["mean"] >= 0.85
    assert result.summary["auc"]["mean"] >= 0.9
    # held-out attention: on the 1-3 marked patches of a positive bag, far above the others
    on = np.mean([result.attention[i][0][marked[i]].mean() for i in range(len(bags)) if marked[i].any()])
    off = np.mean([result.attention[i][0][~marked[i]].mean() for i in range(len(bags)) if marked[i].any()])
    assert on > 10 * off
    for weights, _ in result.attention:
        assert weights.sum() == pytest.approx(1.0, abs=1e-5)
    bags, y, _ = feature_bags(signal=False, n=60, seed=2)
    noise = cross_validate_abmil(bags, y, ["neg", "pos"], folds=4, seed=0, settings=settings)
    assert abs(noise.summary["balanced_accuracy"]["mean"] - 0.5) <= 0.2
    assert abs(noise.summary["auc"]["mean"] - 0.5) <= 0.2
