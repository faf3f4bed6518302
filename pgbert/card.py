"""The model card (README.md with the Hugging Face metadata header) written beside a pruned model."""

from __future__ import annotations

from pathlib import Path

PIPELINE_TAG = {"qa": "question-answering", "regression": "text-classification"}


def _metrics_row(name: str, m: dict | None) -> str:
    if not m:
        return ""
    return f"| {name} | " + ", ".join(f"{k} {v:.4f}" for k, v in m.items() if k != "loss") + " |\n"


def model_card(report: dict, kind: str) -> str:
    """Markdown with a YAML header: base model, task, method, sparsity, FLOPs, measured speedup, metrics."""
    base = str(report.get("model", ""))
    is_hub_id = base.count("/") == 1 and not Path(base).exists()
    header = ["---", "library_name: transformers"]
    if is_hub_id:
        header.append(f"base_model: {base}")
    header += [
        f"pipeline_tag: {PIPELINE_TAG.get(kind, 'text-classification')}",
        "tags:",
        "- pgbert",
        "- pruning",
        f"- {report['method']}",
        "---",
        "",
    ]
    metrics = report.get("metrics", {})
    stages = [("dense (before pruning)", "dense")]
    if metrics.get("finetune_best_step") == 0:  # no re-finetune check beat the one-shot model: it was kept
        stages.append(
            ("pruned, not re-finetuned (this model: re-finetuning did not beat it on dev)", "pruned")
        )
    else:
        stages += [
            ("pruned, before re-finetuning", "pruned"),
            ("pruned and re-finetuned (this model)", "finetuned"),
        ]
    table = "".join(_metrics_row(label, metrics.get(key)) for label, key in stages)
    c = report.get("compact")
    if c:
        env = c["bench"]["environment"]
        speed = (
            f"{c['speedup']:.2f}x the dense model's speed ({c['latency_ms']:.1f} ms vs "
            f"{c['dense_latency_ms']:.1f} ms at batch {c['bench']['batch_size']} x seq {c['bench']['seq_len']}, "
            f"{env.get('device', 'cpu')}, {env.get('threads', '?')} threads, torch {env.get('torch', '?')}; "
            "measured by `pgbert prune` on the machine that pruned it: re-measure on yours with `pgbert bench`)"
        )
        params = f"{c['params']:,} of {c['dense_params']:,} parameters"
    else:
        speed, params = "no speedup (masked weights, not a compact model)", "masked model"
    dropped = ", ".join(report.get("dropped_sublayers", [])) or "none"
    body = f"""# {report["task"]} model pruned with pgbert ({report["method"]})

Pruned from `{base}` on the task `{report["task"]}` (data: {report.get("data", "?")}) by
[pgbert](https://pypi.org/project/pgbert/) with the method `{report["method"]}`.

- sparsity: {report["sparsity_achieved"]:.3f} of the encoder's linear weights pruned (target {report.get("sparsity_target")})
- FLOPs: {report["flops_ratio"]:.3f} of the dense encoder's at sequence length {report["flops_seq_len"]}
- size: {params}
- speed: {speed}
- sublayers removed: {dropped}

| model | dev metrics |
|---|---|
{table}
## How to load

```python
from transformers import AutoModelFor{"QuestionAnswering" if kind == "qa" else "SequenceClassification"}, AutoTokenizer
model = AutoModelFor{"QuestionAnswering" if kind == "qa" else "SequenceClassification"}.from_pretrained(PATH, trust_remote_code=True)
tokenizer = AutoTokenizer.from_pretrained(PATH)
```

`trust_remote_code=True` runs `modeling_pgbert.py` from this folder (torch and transformers only).
With pgbert installed, `pgbert.load(PATH)` needs no remote code; `pgbert export PATH --onnx model.onnx`
writes an ONNX model for ONNX Runtime. Every setting and timing of the run is in `report.json`.
"""
    return "\n".join(header) + body
