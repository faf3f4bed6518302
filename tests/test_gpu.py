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


def test_compact_of_a_model_on_cuda_with_constant_ffn_neurons(tokenizer):
    """to_compact of a pruned model on the GPU, masks on the CPU, with FFN neurons whose FFN-in row is
    pruned but whose FFN-out column is kept (their constant output folds into FFN-out's bias): the compact
    model (built on the CPU) computes what the pruned one does. Found by the GPU check at batch 1."""
    model = tiny_model("bert", tokenizer)
    masks = {n: torch.zeros_like(model.get_parameter(n)) for layer in prunable_names(model) for n in layer}
    for m in masks.values():
        m[:32, :48] = 1  # FFN-in keeps rows 0-31; FFN-out reads columns 0-47: 32-47 are constant neurons
    apply_masks(model, masks)
    model.cuda()
    compact = to_compact(model, masks).cuda()
    ids = torch.randint(5, len(tokenizer), (4, 24), device="cuda")
    with torch.no_grad():
        assert torch.allclose(model(input_ids=ids).logits, compact(input_ids=ids).logits, atol=1e-4)
