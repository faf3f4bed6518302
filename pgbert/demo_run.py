"""The demo: the README's main job on the bundled default (the real MiniLM, the bundled sentiment data).

It says what it will do and how long that takes here, fine-tunes (cached), compares PGB with structured
Fisher pruning and Kwon et al. under one progress bar, and ends with the table and the plot's path.
"""

from __future__ import annotations

from pathlib import Path

import transformers

from . import api
from .training import TrainConfig

# The demo's plan and the seconds each part took on 2 CPU cores here (nothing else running; session 15:
# 24.6 min in all): they size its progress bar, whose time left then follows this machine's real pace. A
# method's seconds are one whole compare row: prune, three evaluations, the re-finetune with its dev checks
# and the dense-against-compact timing.
DEMO_METHODS = ("pgb", "structured-fisher", "kwon")
DEMO_SPARSITIES = (0.5, 0.88)
DEMO_TRAIN = TrainConfig(epochs=1, lr=1e-4, eval_steps=100, quiet=True)
DEMO_SECONDS = {"finetune_step": 1.4, "pgb": 200, "structured-fisher": 165, "kwon": 160}


def run(
    output: str | Path = "runs/demo", overwrite: bool = False, seeds: int = 1, quiet: bool = False
) -> Path:
    """The README's main job: fine-tune the bundled MiniLM on the bundled sentiment task (cached), then
    compare PGB with structured Fisher pruning and Kwon et al. at sparsity 0.5 and 0.88 (one shot and
    after a short re-finetune): the table and a plot."""
    from tqdm.auto import tqdm

    from .comparison import CompareConfig

    cache = Path.home() / ".cache" / "pgbert" / "minilm-rt-sentiment"
    api.check_output_dir(output, overwrite)
    cached = (cache / "model.safetensors").is_file()
    cfg = CompareConfig(
        sparsities=DEMO_SPARSITIES,
        methods=DEMO_METHODS,
        seeds=seeds,
        quiet=True,
        calib_samples=512,
        finetune_epochs=0.1,
    )
    train_steps = 0 if cached else 300  # one epoch of 9,568 sentences at batch 32 (299 steps, rounded)
    tenths = {k: round(10 * v) for k, v in DEMO_SECONDS.items()}  # whole units: the bar ends at 100% exactly
    rows = seeds * len(DEMO_SPARSITIES)
    units = train_steps * tenths["finetune_step"] + rows * sum(tenths[m] for m in DEMO_METHODS)
    print(_demo_intro(cached, cache, seeds, units / 10))
    transformers.logging.disable_progress_bar()  # one bar for the whole run: not one per save and load
    bar = tqdm(
        total=units,
        desc="demo",
        disable=quiet,
        bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed} elapsed, about {remaining} left",
    )
    if not cached:
        api.finetune(
            "minilm",
            "rt-sentiment",
            cache,
            None,
            DEMO_TRAIN,
            overwrite=True,
            progress=lambda n: bar.update(n * tenths["finetune_step"]),
        )

    def row_done(r: dict) -> None:
        bar.update(tenths[r["method"]])
        bar.write(
            f"{r['method']:18s} sparsity {r['sparsity']:.2f}: accuracy {r['oneshot']:.3f} one shot, "
            f"{r['finetuned']:.3f} re-finetuned (dense {r['dense']:.3f}), {r['speedup']:.2f}x faster"
        )

    api.compare(cache, "rt-sentiment", output, None, cfg, overwrite, on_row=row_done)
    bar.close()
    print((Path(output) / "results.md").read_text().rstrip())
    print(f"plot: {Path(output) / 'results.png'}")
    return Path(output)


def _demo_intro(cached: bool, cache: Path, seeds: int, seconds: float) -> str:
    rows = seeds * len(DEMO_SPARSITIES) * len(DEMO_METHODS)
    steps = (
        []
        if cached
        else [
            f"1. fine-tune the bundled all-MiniLM-L6-v2 on rt-sentiment (Rotten Tomatoes sentences) for one "
            f"epoch and cache it in {cache}. transformers will report the classifier weights as MISSING: "
            "that is expected, the classification head is new and this step trains it."
        ]
    )
    steps.append(
        f"{len(steps) + 1}. prune it {rows} times: {', '.join(DEMO_METHODS)} at sparsity "
        f"{' and '.join(map(str, DEMO_SPARSITIES))} ({seeds} seed{'s' * (seeds > 1)}), each scored one shot and "
        "after a short re-finetune, with its measured speedup."
    )
    steps.append(f"{len(steps) + 1}. print the comparison table and write a plot.")
    return (
        "pgbert demo: what PGB buys over structured pruning on a real model and real data.\n"
        + "\n".join(steps)
        + f"\nAbout {seconds / 60:.0f} minutes on 2 CPU cores; the bar below tracks this machine's pace.\n"
    )
