"""The racing confirmation: who is trained on how many seeds, and when the answer is decided.

A search ranks its trials on one seed; the race decides on fresh ones, F-Race style (Birattari
et al., "A racing algorithm for configuring metaheuristics", GECCO 2002; irace, López-Ibáñez et
al. 2016): every entry starts with :attr:`RaceRules.min_seeds` paired seeds, and after each
*look* the entries that are significantly worse than the current leader are dropped (paired
t-tests, :mod:`initsearch.stats`); each later
round trains every survivor on one more seed. The race stops at the first of:

* ``winner`` -- one entry is left: every other one (PyTorch's default included) was found
  significantly worse than the leader of its look, or failed, or stayed at chance;
* ``equivalent`` -- PyTorch's default is alive and every other survivor's paired difference to
  it lies inside ``±min_effect`` (two one-sided tests, :meth:`~initsearch.stats.Paired.equivalent`);
* ``budget`` -- the survivors have :attr:`RaceRules.max_seeds` seeds;
* ``nothing`` -- no survivor's mean is above chance.

Before the tests of each look, an entry that *failed* on a seed (diverged, raised) is dropped,
and so is one that stayed at chance on a seed while another survivor trained on every seed: a
recipe that can leave a user's run dead is never recommended over one that never did. (A claim
races otherwise, ``confirm_failures: score``: a failure scores as a network that learned
nothing, and the paired tests alone decide -- :attr:`RaceRules.untrained`.)

**Repeated looks.** Testing after every round would inflate false positives. The race spends
its ``alpha`` evenly over the planned looks (``max_seeds - min_seeds + 1``): each look tests at
``alpha / looks``. The two kinds of drop carry different risks, and are tested accordingly:

* dropping *PyTorch's default* is the claim every recommendation rests on ("X beats the
  default"), and the leader it loses to is the best of ``m`` entries, chosen after the fact; so
  its p-value is multiplied by ``m`` (Bonferroni over every entry that could have led). By the
  union bound over looks, a race recommends something over an equal default in at most
  ``alpha`` of races;
* dropping any *other* entry only decides who keeps training: a wrong drop costs power (the
  best may be lost), never a false claim against the default; each is tested one-sided ("is
  it below the leader?") at the look's level alone, so clear losers stop after their first
  seeds.

The simulated rates are in BENCHMARKS.md (``benchmarks/race_sim.py``).

The race is a pure function of the scores recorded so far (:func:`race`), so an interrupted
race resumes by replaying its looks from the records and training what it still wants.
"""
from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Mapping, Sequence

from initsearch.stats import ALPHA, MIN_SEEDS, Estimate, chance_level, estimate, paired

if TYPE_CHECKING:  # the race is a pure function of scores; a protocol only sets its rules
    from initsearch.protocol import Protocol

RANKS = ("mean", "lcb")
STOPS = ("running", "winner", "equivalent", "budget", "nothing")
#: How a drop for cost reads (:attr:`Outcome.retired`): not a finding against the entry.
RETIRED = "retired for cost"

#: A seed's result: the score (confirmation accuracy), or why the recipe failed on it.
Score = float | str


@dataclass(frozen=True)
class RaceRules:
    """How a race is run (the protocol's ``confirm_*`` and ``min_effect`` keys).

    Attributes:
        min_seeds: seeds every entry starts with (>= 3: no test on fewer).
        max_seeds: the budget, seeds per recipe at most.
        min_effect: ``delta``, the smallest accuracy difference worth acting on (0.01 = 1 pp):
            the equivalence margin, and the effect the "more seeds" advice is sized for.
        rank: who leads a look: the best ``mean``, or the best lower 95 % bound of the mean
            (``lcb``: a seed that did badly costs more than it would in the mean).
        alpha: the race's whole error budget, spent evenly over its looks.
        chance: the accuracy at or below which a seed counts as not trained.
        cost_ratio: an entry that does not lead a look and whose jobs cost more than this
            many times the median entry's *retires* there, unless it is PyTorch's default or
            the race would stop anyway (0: never). See :func:`race`.
        untrained: None (recommendations): an entry that fails on a seed is dropped, and so is
            one that stays at chance while another trains. A score (claims, which compare two
            recipes on every seed): a failure scores this, what a network that learned nothing
            scores, and only the paired tests drop anyone.
    """

    min_seeds: int = MIN_SEEDS
    max_seeds: int = 10
    min_effect: float = 0.01
    rank: str = "mean"
    alpha: float = ALPHA
    chance: float = 0.0
    cost_ratio: float = 0.0
    untrained: float | None = None

    def __post_init__(self) -> None:
        if not MIN_SEEDS <= self.min_seeds <= self.max_seeds:
            raise ValueError(f"a race needs {MIN_SEEDS} <= min_seeds <= max_seeds "
                             f"(got {self.min_seeds} and {self.max_seeds})")
        if self.rank not in RANKS:
            raise ValueError(f"rank must be one of {RANKS}, not {self.rank!r}")
        if not self.min_effect > 0:
            raise ValueError(f"min_effect must be > 0, not {self.min_effect!r}")

    @property
    def looks(self) -> int:
        return self.max_seeds - self.min_seeds + 1

    @property
    def level(self) -> float:
        """The significance level of one look: ``alpha`` spent evenly over the looks."""
        return self.alpha / self.looks

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def of(cls, protocol: Protocol, num_classes: int, n_val: int) -> "RaceRules":
        """The rules a protocol's ``confirm_*`` and ``min_effect`` keys set, for a confirm split
        of ``n_val`` images of ``num_classes`` classes (its chance level)."""
        untrained = (protocol.for_confirmation().untrained_score(num_classes)
                     if protocol.confirm_failures == "score" else None)
        return cls(min_seeds=protocol.confirm_seeds, max_seeds=protocol.confirm_max_seeds,
                   min_effect=protocol.min_effect, rank=protocol.confirm_rank,
                   chance=chance_level(num_classes, n_val), cost_ratio=protocol.confirm_cost_ratio,
                   untrained=untrained)


@dataclass(frozen=True)
class Look:
    """One look of the race: the seeds each survivor had, their accuracy estimates, the leader
    and who was dropped (name -> why)."""

    number: int
    seeds: int
    standings: dict[str, Estimate]
    leader: str | None
    dropped: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Outcome:
    """Where a race stands: ``stop`` (one of :data:`STOPS`), the survivors and the leader, who
    was dropped at which look and why, every look, and -- while ``running`` -- the ``(name,
    seed)`` jobs it wants trained next."""

    stop: str
    survivors: tuple[str, ...]
    leader: str | None
    dropped: dict[str, tuple[int, str]]
    looks: tuple[Look, ...]
    wanted: tuple[tuple[str, int], ...] = ()

    @property
    def seeds(self) -> int:
        """Seeds per survivor at the last look (0 before the first)."""
        return self.looks[-1].seeds if self.looks else 0

    @property
    def retired(self) -> tuple[str, ...]:
        """The dropped entries that were retired for cost, not found worse."""
        return tuple(m for m, (_, why) in self.dropped.items() if why.startswith(RETIRED))


def race(names: Sequence[str], reference: str | None, scores: Mapping[str, Mapping[int, Score]],
         seeds: Sequence[int], rules: RaceRules, costs: Mapping[str, float] | None = None) -> Outcome:
    """Replay the race over ``scores`` (``{name: {seed: accuracy or failure reason}}``).

    ``names``: the entries, in a fixed order (ties go to the earlier); ``reference``: PyTorch's
    default among them (None: not racing); ``seeds``: the race's seeds in the order they are
    used (at least ``rules.max_seeds`` of them).

    ``costs``: seconds per job of each entry, measured on its first ``rules.min_seeds`` seeds
    (fixed once they ran, so a replay retires who the race retired). With
    ``rules.cost_ratio``, a look that leaves the race running *retires* each survivor other
    than the leader and the reference whose job costs more than ``cost_ratio`` times the
    survivors' median (GradInit's paper-length init is ~10x a CPU job): it stops training, is
    reported as retired for cost, never as worse, and is never recommended. Like any drop of a
    non-reference entry, this costs power, never a false claim against the default; it
    applies only while two entries besides the retired stay in the race, so no winner and no
    stop comes from cost alone.
    """
    if rules.untrained is not None:  # a failure is a score, not a drop
        scores = {m: failures_scored(by_seed, rules.untrained) for m, by_seed in scores.items()}
    alive, dropped, looks = list(names), {}, []
    n = rules.min_seeds
    while True:
        use = list(seeds[:n])
        wanted = tuple((name, s) for s in use for name in alive if s not in scores.get(name, {}))
        if wanted:
            return Outcome("running", tuple(alive), None, dropped, tuple(looks), wanted)
        why: dict[str, str] = {}
        for name in alive:
            failed = next((s for s in use if isinstance(scores[name][s], str)), None)
            if failed is not None:
                why[name] = f"failed on seed {failed}: {scores[name][failed]}"
        alive = [m for m in alive if m not in why]
        trains = [m for m in alive if all(scores[m][s] > rules.chance for s in use)]
        if trains and rules.untrained is None:
            for m in alive:
                if m not in trains:
                    s = next(s for s in use if scores[m][s] <= rules.chance)
                    why[m] = (f"stayed at chance on seed {s} ({100 * scores[m][s]:.1f}%) while "
                              f"{trains[0]} trained on every seed")
            alive = trains
        values = {m: [scores[m][s] for s in use] for m in alive}
        standings = {m: estimate(v) for m, v in values.items()}
        leader = max(alive, key=lambda m: _rank(standings[m], rules.rank), default=None)
        others = [m for m in alive if m != leader]
        for m in others:
            c = paired(values[m], values[leader])
            if m == reference:  # a claim against the default: Bonferroni over who could lead
                c = replace(c, p_adj=min(1.0, c.p * len(others)))
            else:  # who keeps training: one-sided, is m below the leader?
                c = replace(c, p_adj=c.p / 2)
            if c.worse(rules.level):
                why[m] = f"worse than {leader}: {c.pp()}"
        alive = [m for m in alive if m not in why]
        looks.append(Look(len(looks) + 1, n, standings, leader, why))
        dropped.update({m: (len(looks), w) for m, w in why.items()})
        stop = None
        if not any(standings[m].mean > rules.chance for m in alive):
            stop = "nothing"
        elif len(alive) == 1:
            stop = "winner"
        elif reference in alive and all(paired(values[m], values[reference]).equivalent(
                rules.min_effect, rules.level) for m in alive if m != reference):
            stop = "equivalent"
        elif n >= min(rules.max_seeds, len(seeds)):
            stop = "budget"
        if stop:
            return Outcome(stop, tuple(alive), leader if leader in alive else None, dropped,
                           tuple(looks))
        retired = _retired(alive, leader, reference, costs or {}, rules.cost_ratio)
        if retired:
            alive = [m for m in alive if m not in retired]
            looks[-1] = replace(looks[-1], dropped={**why, **retired})
            dropped.update({m: (len(looks), w) for m, w in retired.items()})
        n += 1


def failures_scored(by_seed: Mapping[int, Score], untrained: float) -> dict[int, float]:
    """``{seed: score}`` with each failure (its reason) scored ``untrained``
    (:attr:`RaceRules.untrained`)."""
    return {s: untrained if isinstance(v, str) else v for s, v in by_seed.items()}


def _retired(alive: list[str], leader: str | None, reference: str | None,
             costs: Mapping[str, float], ratio: float) -> dict[str, str]:
    """Who :func:`race` retires for cost at a look (see there), and why."""
    known = [costs[m] for m in alive if costs.get(m)]
    if not ratio or len(known) < len(alive) or len(alive) < 3:
        return {}
    median = statistics.median(known)
    costly = [m for m in alive if m not in (leader, reference) and costs[m] > ratio * median]
    costly = costly[:max(0, len(alive) - 2)]  # the leader and one more stay: cost never ends a race
    return {m: (f"{RETIRED}: its job takes {costs[m]:.0f} s, {costs[m] / median:.1f}x the "
                f"median survivor's; not shown worse than {leader}") for m in costly}


def _rank(e: Estimate, rank: str) -> float:
    return e.mean if rank == "mean" or e.n < 2 else e.lo
