"""Console progress: a rich progress bar plus one line per step with the headline numbers."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


class StepPrinter:
    def __init__(self, total_steps: int, before: dict[str, float] | None = None) -> None:
        self.console = Console(highlight=False)
        self.progress = Progress(
            TextColumn("[bold]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=self.console,
            transient=True,
        )
        self.task = self.progress.add_task("train", total=total_steps)
        if before:
            self.console.print(f"held-out before training: {_fmt(before)}")

    def __enter__(self) -> StepPrinter:
        self.progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.stop()

    def update(self, step: int, m: dict[str, float]) -> None:
        parts = [
            f"step {step:3d}",
            f"reward {m.get('reward/mean', 0):.3f}",
            f"acc {m.get('reward/accuracy', 0):.2f}",
            f"len {m.get('response/length_mean', 0):.0f}",
            f"kl {m.get('train/approx_kl', 0):.4f}  gnorm {m['train/grad_norm']:.2f}"
            if "train/grad_norm" in m
            else "no update (every group's rewards were equal)",
            f"{m.get('time/step_s', 0):.1f}s",
            "("
            + " ".join(
                f"{k[5:-2]} {v:.1f}" for k, v in m.items() if k.startswith("time/") and k != "time/step_s"
            )
            + ")",
        ]
        if "eval/reward_mean" in m:
            parts.append(f"eval {m['eval/reward_mean']:.3f}")
        self.progress.console.print("  ".join(parts))
        self.progress.update(self.task, completed=step)


def _fmt(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k.split('/')[-1]} {v:.3f}" for k, v in metrics.items())
