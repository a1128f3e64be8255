"""Console progress: a rich progress bar plus one line per step with the headline numbers."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class StepPrinter:
    """The training console: the baseline, a bar over steps naming the running phase, a line a step."""

    def __init__(self, total_steps: int, before: dict[str, float] | None = None, resumed_at: int = 0) -> None:
        self.console = Console(highlight=False)
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=self.console,
            transient=True,
            disable=not self.console.is_terminal,  # piped to a file: the step lines only, no bar frames
        )
        self.task = self.progress.add_task("train", total=total_steps, completed=resumed_at)
        self.step = resumed_at
        if before:
            origin = " (the original run's baseline)" if resumed_at else ""
            self.console.print(f"held-out before training{origin}: {_fmt(before)}", soft_wrap=True)

    def __enter__(self) -> StepPrinter:
        self.progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.stop()

    def phase(self, name: str) -> None:
        """The phase now running in the next step, shown on the bar."""
        self.progress.update(self.task, description=f"step {self.step + 1}: {name}")

    def update(self, step: int, m: dict[str, float]) -> None:
        self.step = step
        parts = [
            f"step {step:3d}",
            f"reward {m.get('reward/mean', 0):.3f}",
            f"acc {m.get('reward/accuracy', 0):.2f}",
            f"len {m.get('response/length_mean', 0):.0f}",
            f"kl {m.get('train/approx_kl', 0):.4f}  gnorm {m['train/grad_norm']:.2f}"
            if "train/grad_norm" in m
            else "no update (no group had a non-zero advantage)",
            f"{m.get('time/step_s', 0):.1f}s",
            "("
            + " ".join(
                f"{k[5:-2]} {v:.1f}" for k, v in m.items() if k.startswith("time/") and k != "time/step_s"
            )
            + ")",
        ]
        if "eval/reward_mean" in m:
            parts.append(f"eval {m['eval/reward_mean']:.3f}")
        if m.get("judge/over_length_pairs"):  # never a silent cut: judge.over_length says what happened
            parts.append(
                f"judge: {m['judge/over_length_pairs']:.0f} pairs over judge.max_prompt_tokens "
                f"({m.get('judge/truncated', 0):.0f} truncated, {m.get('judge/skipped', 0):.0f} skipped)"
            )
        self.progress.console.print("  ".join(parts), soft_wrap=True)
        self.progress.update(self.task, completed=step, description="train")


def _fmt(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k.split('/')[-1]} {v:.3f}" for k, v in metrics.items())


def map_in_chunks(label: str, items: list[Any], call: Any, chunk: int) -> list[Any]:
    """`call(items)` done `chunk` items at a time behind a progress bar with an ETA.

    The judge's engines batch within a call, so chunks of a few dozen items cost little throughput
    while the user sees how far a long evaluation is (today's alternative: silence until the end)."""
    console = Console(highlight=False, stderr=True)
    columns = (
        TextColumn(f"[bold]{label}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
    )
    out: list[Any] = []
    with Progress(*columns, console=console, transient=True, disable=not console.is_terminal) as progress:
        task = progress.add_task(label, total=len(items))
        for start in range(0, len(items), max(1, chunk)):
            part = items[start : start + chunk]
            out.extend(call(part))
            progress.update(task, advance=len(part))
    return out
