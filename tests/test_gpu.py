"""CUDA checks; skipped where no GPU is present (CI is CPU-only)."""

import pytest
import torch
from conftest import tiny_model

from pgbert.adapters import prunable_names
from pgbert.bench import measure as compare
from pgbert.compact.model import to_compact
from pgbert.training import apply_masks

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def test_compact_on_cuda_matches_and_benches(tokenizer):
    model = tiny_model("bert", tokenizer)
    masks = {n: torch.zeros_like(model.get_parameter(n)) for layer in prunable_names(model) for n in layer}
    for m in masks.values():
        m[:32, :32] = 1
    apply_masks(model, masks)
    compact = to_compact(model, masks).cuda()
    ids = torch.randint(5, len(tokenizer), (4, 24))
    with torch.no_grad():
        a = model(input_ids=ids).logits
        b = compact(input_ids=ids.cuda()).logits.cpu()
    assert torch.allclose(a, b, atol=1e-4)
    res = compare(compact, model.cuda(), batch_size=4, seq_len=24, device="cuda", repeats=3)
    assert res["environment"]["device"] == "cuda" and "peak_memory_mb" in res["model"]
