"""The progress bar: trials done / pruned / failed, the best value so far, and the time left."""
from __future__ import annotations

import sys

from optuna.trial import FrozenTrial, TrialState
from tqdm import tqdm


class Progress:
    """One bar per stage: ``search`` (done, pruned, failed, best so far) or ``confirm``."""

    def __init__(self, total: int, enabled: bool = True, stage: str = "search") -> None:
        self.counts = {TrialState.COMPLETE: 0, TrialState.PRUNED: 0, TrialState.FAIL: 0}
        self.best: float | None = None
        self.stage = stage
        self._bar = tqdm(total=total, unit="trial", file=sys.stderr, disable=not enabled, desc=stage,
                         dynamic_ncols=True, mininterval=1.0,
                         bar_format="{l_bar}{bar}| {n}/{total} [{elapsed}<{remaining}] {postfix}")

    def restore(self, trials: list[FrozenTrial]) -> None:
        """Count the trials a resumed study already has (the time estimate ignores them)."""
        for t in trials:
            self.counts[t.state] += 1
            if t.state == TrialState.COMPLETE:
                self.best = t.value if self.best is None else max(self.best, t.value)
        self._bar.initial = self._bar.n = len(trials)
        self._refresh()

    def update(self, state: TrialState, best: float | None) -> None:
        self.counts[state] += 1
        self.best = best
        self._bar.update(1)
        self._refresh()

    def extend(self, n: int, note: str = "") -> None:
        """``n`` more trials (a race's next round); ``note`` names the round before the bar."""
        self._bar.total += n
        if note:
            self._bar.set_description_str(f"{self.stage} {note}")
        self._bar.refresh()

    def close(self) -> None:
        self._bar.close()

    def _refresh(self) -> None:
        c = self.counts
        if self.stage != "search":
            self._bar.set_postfix_str(f"done {c[TrialState.COMPLETE]} failed {c[TrialState.FAIL]}")
            return
        best = f"{self.best:.4f}" if self.best is not None else "-"
        self._bar.set_postfix_str(f"done {c[TrialState.COMPLETE]} pruned {c[TrialState.PRUNED]} "
                                  f"failed {c[TrialState.FAIL]} best val_acc {best}")
