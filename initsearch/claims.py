"""The seed papers' claims, each a comparison the product runs: ``initsearch claims``.

A claim names its paper, what it says in one line with the paper's figure, the setting scaled
to the profile (architecture and options, protocol keys such as warm-up), the recipe it is
about and the *control* that isolates the init (the same network and training with another
init). Running it races the two recipes through the racing confirmation on fresh seeds
(:func:`initsearch.study.confirm_recipes`'s machinery, with no other baseline), logs every job
to the MLflow experiment ``initsearch-claims`` (the result cache serves a job trained before),
and ends with one word and its reason (:func:`judge_claim`):

* **reproduced**: a "better" claim's paired difference is significantly above 0, or a
  "comparable" claim's lies within ``±min_effect`` (TOST);
* **not reproduced**: the interval excludes the claimed effect -- below 0 for "better" (the
  opposite sign or no gain at all), or wholly beyond ``±min_effect`` for "comparable";
* **inconclusive at this power**: neither, with the half-width the race reached.

A claim about *spread* (``kind="less_variable"``: "its runs vary less from seed to seed") is
judged on the ratio of the two recipes' variances over the same seeds (the paired
Pitman-Morgan test, :func:`~initsearch.stats.paired_variance`): **reproduced** when the
ratio's interval lies below 1, **not reproduced** when it lies above 1, else inconclusive. Its
seeds are a fixed design: both recipes train on every seed of the race's budget (``--confirm-max-seeds``) and
the test runs once, since a race that stops when the *means* are decided would stop a spread
claim at three seeds.

A claim whose control trains *another network* (``control_options``: RISOTTO without BN
against the same ResNet with BN) runs two studies, one per network, on the same fresh seeds (a
seed fixes the data order and augmentation in both, so the scores still pair), each on every
seed of the budget, and is judged like any other.

A job that failed (diverged, raised) is scored as a network that learned nothing, and the race
keeps both recipes on every seed until the paired test decides (``confirm_failures: score``):
a recipe that diverges where its control trains does not reproduce a claim that it trains
better, and one side staying at chance does not end a claim's race at its first seeds.

A claim that cannot run here (CIFAR-100 is not on this machine) says so and runs nothing.
Paper figures marked UNVERIFIED are quoted from third parties (``docs/init-methods.md`` 9).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any, Mapping

from initsearch.confirm import Entry, scores
from initsearch.plan import plan_study
from initsearch.protocol import machine
from initsearch.race import Score, failures_scored
from initsearch.recipe import BASELINES, Recipe, RoleInit
from initsearch.settings import ConfirmConfig, RunConfig
from initsearch.stats import MIN_SEEDS, Paired, VarianceRatio, paired, paired_variance
from initsearch.study import run_study

#: The MLflow experiment every claim's runs go to.
EXPERIMENT = "initsearch-claims"
WORDS = ("reproduced", "not reproduced", "inconclusive at this power", "cannot run here")


@dataclass(frozen=True)
class Claim:
    """One claim of one paper, as a comparison of two recipes on one model.

    Attributes:
        name: what ``initsearch claims NAME`` runs.
        paper: authors, venue, method.
        says: the claim in one line.
        paper_figure: the paper's number(s) for it.
        arch, options: the model, sized by the profile, then ``options`` over it.
        recipe: the init the claim is about; ``control``: the init it is measured against.
        kind: ``"better"`` (the recipe scores higher), ``"comparable"`` (within
            ``±min_effect``) or ``"less_variable"`` (its scores vary less over seeds).
        objective: what a job scores (:meth:`~initsearch.protocol.Protocol.score`): ``final``
            accuracy, or ``auc`` for a claim about how fast a network trains.
        protocol: protocol keys over the profile's (the paper's setting, scaled: warm-up off,
            the optimizer, ...).
        control_options: where the control trains another network, its options over
            ``options`` (None: the control trains the recipe's network).
        unavailable: why it cannot run here, if it cannot.
    """

    name: str
    paper: str
    says: str
    paper_figure: str
    arch: str
    recipe: Recipe
    control: Recipe
    kind: str = "better"
    objective: str = "final"
    options: dict[str, Any] = field(default_factory=dict)
    protocol: dict[str, Any] = field(default_factory=dict)
    control_options: dict[str, Any] | None = None
    unavailable: str | None = None

    @property
    def fixed_seeds(self) -> bool:
        """Both sides train every seed of the budget, then one test (see the module docstring)."""
        return self.kind == "less_variable" or self.control_options is not None

    def setting(self) -> str:
        """The setting in one line: the model, its options and the protocol keys changed."""
        parts = [self.arch, *(f"{k}={v}" for k, v in self.options.items()),
                 *([f"control on {', '.join(f'{k}={v}' for k, v in self.control_options.items())}"]
                   if self.control_options else []),
                 *(f"{k}: {v}" for k, v in self.protocol.items()), f"objective {self.objective}"]
        return ", ".join(parts)


_XAVIER = Recipe({r: RoleInit("xavier") for r in ("embedding", "attn_qkv", "attn_q", "attn_k",
                                                  "attn_v", "attn_out", "mlp_in", "mlp_out",
                                                  "linear", "classifier", "stem", "conv")},
                 "xavier")
#: GradInit's own starting point (He fan_out convs, PyTorch's default elsewhere) without its
#: step: the control that isolates what the learned scales do.
_GRADINIT_START = Recipe(BASELINES["gradinit"].roles, "gradinit_start")
#: Where a transformer needs warm-up: AdamW at lr 1e-2 (at 1e-3 the default trains without it;
#: at 1e-2 it stays at chance, BENCHMARKS "can an init replace warm-up?"), none given.
_NO_WARMUP = {"warmup_epochs": 0, "optimizer": {"name": "adamw", "lr": 0.01, "weight_decay": 0.05}}
#: VGG-19 without BN at SGD lr 0.01: at the profile's 0.05 no init trained it in 300 steps of
#: 64 images (ZerO, PyTorch's default and He all at 10 %; one seed each), at 0.01 He reached
#: 35 %, ZerO 23 %, the default stayed at 10 % and emergence diverged -- a probe on the training
#: set, not the claims' seeds. A claim needs a setting where its control can train.
_PLAIN_VGG = {"optimizer": {"name": "sgd", "lr": 0.01, "momentum": 0.9, "nesterov": True,
                            "weight_decay": 5.0e-4}}
_LION_DG = ("Kim 2026 (arXiv 2601.02105), LION-DG: zero-init auxiliary heads, He backbone "
            "(Table 1 as quoted by a third party; 'speedup' undefined in that quote)")

CLAIMS: dict[str, Claim] = {c.name: c for c in (
    Claim("lion_dg_speed_densenet", _LION_DG,
          "LION-DG trains a deeply-supervised DenseNet faster than He, at comparable accuracy",
          "CIFAR-10 DenseNet-DS: +8.3 % faster convergence; 80.59 vs He 81.11 %", "densenet_ds",
          BASELINES["lion_dg"], BASELINES["he"], objective="auc"),
    Claim("lion_dg_speed_resnet", _LION_DG,
          "LION-DG trains a deeply-supervised ResNet faster than He",
          "CIFAR-10 ResNet-DS: +3.6 % faster convergence; 87.18 vs He 89.42 %", "resnet_ds",
          BASELINES["lion_dg"], BASELINES["he"], objective="auc"),
    Claim("lion_dg_final_densenet", _LION_DG,
          "LION-DG's final accuracy is comparable to He's on DenseNet-DS",
          "CIFAR-10 DenseNet-DS: 80.59 vs He 81.11 %", "densenet_ds",
          BASELINES["lion_dg"], BASELINES["he"], kind="comparable"),
    Claim("lsuv_lion_dg_vs_lsuv", _LION_DG,
          "the LSUV + LION-DG hybrid is the most accurate on DenseNet-DS, above LSUV alone",
          "CIFAR-10 DenseNet-DS: 81.92 % (LION-DG 80.59, He 81.11)", "densenet_ds",
          BASELINES["lsuv_lion_dg"], BASELINES["lsuv"]),
    Claim("lsuv_lion_dg_vs_lion_dg", _LION_DG,
          "the LSUV + LION-DG hybrid is more accurate than LION-DG alone on DenseNet-DS",
          "CIFAR-10 DenseNet-DS: 81.92 vs 80.59 %", "densenet_ds",
          BASELINES["lsuv_lion_dg"], BASELINES["lion_dg"]),
    Claim("lion_dg_cifar100", _LION_DG,
          "LION-DG trains a side-tap ResNet-DS on CIFAR-100 11.3 % faster than He",
          "CIFAR-100 ResNet-DS: +11.3 % faster; 64.96 vs He 64.87 %", "resnet_ds",
          BASELINES["lion_dg"], BASELINES["he"], objective="auc",
          unavailable="CIFAR-100 is not on this machine; initsearch reads CIFAR-10 only"),
    Claim("risotto_vs_fixup", "Gadhikar & Burkholz (arXiv 2210.02411), RISOTTO",
          "RISOTTO trains a normalization-free ResNet better than Fixup",
          "outperforms Fixup and SkipInit in most cases without BN (ResNet-18/50, figures "
          "UNVERIFIED)", "resnet",
          BASELINES["risotto"], BASELINES["fixup"], options={"norm": "none"}),
    Claim("risotto_vs_skipinit", "Gadhikar & Burkholz (arXiv 2210.02411), RISOTTO",
          "RISOTTO trains a normalization-free ResNet better than SkipInit",
          "outperforms SkipInit in most cases without BN (figures UNVERIFIED)", "resnet",
          BASELINES["risotto"], BASELINES["skipinit"], options={"norm": "none"}),
    Claim("emergence_mlp", "Li, George & Silva 2024 (arXiv 2407.19044), emergence-promoting init",
          "emergence scaling trains an MLP better than its He base",
          "MLP/CNN on CIFAR-10: higher accuracy after 1 epoch (Tables 1-2, UNVERIFIED)", "mlp",
          BASELINES["emergence"], BASELINES["he"], objective="auc"),
    Claim("emergence_cnn", "Li, George & Silva 2024 (arXiv 2407.19044), emergence-promoting init",
          "emergence scaling trains a CNN (VGG with BN) better than its He base",
          "MLP/CNN on CIFAR-10: higher accuracy after 1 epoch (Tables 1-2, UNVERIFIED)", "vgg",
          BASELINES["emergence"], BASELINES["he"], objective="auc"),
    Claim("emergence_cnn_no_bn", "Li, George & Silva 2024 (arXiv 2407.19044), emergence-promoting init",
          "emergence scaling trains a CNN without BN (VGG) better than its He base",
          "CNN on CIFAR-10 with and without BN (UNVERIFIED)", "vgg",
          BASELINES["emergence"], BASELINES["he"], objective="auc", options={"norm": "none"},
          protocol=_PLAIN_VGG),
    Claim("risotto_vs_bn", "Gadhikar & Burkholz (arXiv 2210.02411), RISOTTO",
          "RISOTTO without BN is competitive with the same ResNet with BN",
          "competitive with BN ResNets (figures UNVERIFIED)", "resnet",
          BASELINES["risotto"], BASELINES["pytorch_default"], kind="comparable",
          options={"norm": "none"}, control_options={"norm": "batch"}),
    Claim("zero_resnet", "Zhao, Schäfer & Anandkumar, TMLR 2022, ZerO",
          "ZerO trains a ResNet as well as random initialization",
          "CIFAR-10 ResNet-18: about 5.1 % error, state-of-the-art level (UNVERIFIED)", "resnet",
          BASELINES["zerO"], BASELINES["pytorch_default"], kind="comparable",
          protocol={"warmup_epochs": 0.3}),  # the paper warms up 10 of 200 epochs: 5 %, scaled
    Claim("zero_plain_no_bn", "Zhao, Schäfer & Anandkumar, TMLR 2022, ZerO",
          "ZerO trains a deep plain network without BN, better than random init",
          "deep plain networks without BN train from the deterministic init (UNVERIFIED)", "vgg",
          BASELINES["zerO"], BASELINES["pytorch_default"], options={"norm": "none"},
          protocol={"warmup_epochs": 0.3, **_PLAIN_VGG}),
    Claim("zero_variance", "Zhao, Schäfer & Anandkumar, TMLR 2022, ZerO",
          "ZerO's runs vary less from seed to seed than random init's (its init is deterministic)",
          "lower seed-to-seed variance (UNVERIFIED)", "resnet",
          BASELINES["zerO"], BASELINES["pytorch_default"], kind="less_variable",
          protocol={"warmup_epochs": 0.3}),  # zero_resnet's setting: its jobs serve from the cache
    Claim("gradinit_postln_no_warmup", "Zhu et al., NeurIPS 2021, GradInit (the paper's 780 iterations)",
          "GradInit lets a Post-LN transformer train without warm-up, better than its starting point",
          "IWSLT'14 De-En Post-LN without warm-up (Table 4, UNVERIFIED)", "transformer_postln",
          BASELINES["gradinit"], _GRADINIT_START, options={"depth": 8}, protocol=_NO_WARMUP),
    Claim("gradinit_vgg_no_bn", "Zhu et al., NeurIPS 2021, GradInit (the paper's 390 iterations)",
          "GradInit's learned scales train VGG without BatchNorm better than its He starting point",
          "CIFAR-10 VGG-19 without BN (Table 1; figures UNVERIFIED)", "vgg",
          BASELINES["gradinit"], _GRADINIT_START, options={"norm": "none"}),
    Claim("gradinit_resnet_no_bn", "Zhu et al., NeurIPS 2021, GradInit (the paper's 390 iterations)",
          "GradInit's learned scales train a ResNet without BatchNorm better than its starting point",
          "CIFAR-10 ResNet-110 without BN (Table 1, UNVERIFIED)", "resnet",
          BASELINES["gradinit"], _GRADINIT_START, options={"norm": "none"}),
    Claim("tfixup_vs_default", "Huang et al., ICML 2020, T-Fixup",
          "T-Fixup trains a LayerNorm-free transformer without warm-up, better than the default "
          "init of the same LayerNorm-free network",
          "IWSLT'14 De-En 6+6, no LayerNorm, no warm-up: 35.73 BLEU", "transformer_postln",
          BASELINES["tfixup"], BASELINES["pytorch_default"], options={"norm": "none", "depth": 8},
          protocol=_NO_WARMUP),
    Claim("tfixup_vs_xavier", "Huang et al., ICML 2020, T-Fixup",
          "T-Fixup beats a LayerNorm-free Xavier init without warm-up",
          "IWSLT'14 De-En 6+6 without LayerNorm or warm-up: 35.73 BLEU (T-Fixup)", "transformer_postln",
          BASELINES["tfixup"], _XAVIER, options={"norm": "none", "depth": 8}, protocol=_NO_WARMUP),
)}


@dataclass(frozen=True)
class Finding:
    """What running a claim found: the word, its reason, the measurement it rests on (the
    paired difference, or for a spread claim the variance ratio), the wall time and the
    studies that ran it."""

    claim: Claim
    word: str
    reason: str
    measured: Paired | VarianceRatio | None = None
    seconds: float = 0.0
    study: str = ""


def judge_claim(claim: Claim, recipe: Mapping[int, Score], control: Mapping[int, Score],
                min_effect: float, untrained: float
                ) -> tuple[str, str, Paired | VarianceRatio | None]:
    """The word for a claim from its recipe's and its control's scores by seed (see the module
    docstring), its reason, and what it was measured by: the paired difference, or for a
    ``less_variable`` claim the paired variance ratio.

    A seed's score is a number, or why the job failed there (diverged, raised). A network that
    failed is scored ``untrained`` -- what a network that learned nothing scores, 1/K accuracy
    for ``final`` and ``auc`` -- so a recipe that diverges where its control trains loses by
    the control's whole gain, which is what a user who ran it would see. Seeds where both sides
    failed tell nothing about the difference and are left out; the reason counts both kinds."""
    seeds = sorted(set(recipe) & set(control))
    both_failed = [s for s in seeds if isinstance(recipe[s], str) and isinstance(control[s], str)]
    seeds = [s for s in seeds if s not in both_failed]
    notes = [f"{side.name} failed on {len(bad)} of {len(seeds)} seeds (seed {bad[0]}: {by_seed[bad[0]]}), "
             f"scored untrained ({100 * untrained:.1f}%)"
             for side, by_seed in ((claim.recipe, recipe), (claim.control, control))
             if (bad := [s for s in seeds if isinstance(by_seed[s], str)])]
    if both_failed:
        notes.append(f"{len(both_failed)} seeds where both failed left out")
    if len(seeds) < MIN_SEEDS:
        return ("inconclusive at this power", "; ".join(
            [f"only {len(seeds)} seeds on which either side trained (a paired test needs {MIN_SEEDS})"]
            + notes), None)
    ours, theirs = failures_scored(recipe, untrained), failures_scored(control, untrained)
    a, b = [ours[s] for s in seeds], [theirs[s] for s in seeds]
    label = f"{claim.recipe.name} vs {claim.control.name}"
    if claim.kind == "less_variable":
        try:
            v = paired_variance(a, b)
        except ValueError as exc:  # a side that does not vary: no ratio to test
            return "inconclusive at this power", "; ".join([f"{label}: {exc}"] + notes), None
        return (*_spread_word(v, label, notes), v)
    d = paired(a, b)
    word, why = _word(claim, d, min_effect)
    return word, "; ".join([f"{claim.recipe.name} - {claim.control.name}: {d.pp()}: {why}"] + notes), d


def _spread_word(v: VarianceRatio, label: str, notes: list[str]) -> tuple[str, str]:
    """The word a variance ratio gives a "varies less" claim, and its reason."""
    if v.hi < 1:
        word, why = "reproduced", "the ratio's interval is below 1"
    elif v.lo > 1:
        word, why = "not reproduced", "the ratio's interval is above 1 (it varies more)"
    else:
        word, why = "inconclusive at this power", (
            f"the ratio's interval spans 1 (it rules out ratios below {v.lo:.3g} and above {v.hi:.3g})")
    return word, "; ".join([f"{label}: {v.pp()}: {why}"] + notes)


def _word(claim: Claim, d: Paired, min_effect: float) -> tuple[str, str]:
    """The word the paired difference gives the claim, and why."""
    half = f"half-width {100 * (d.diff.hi - d.diff.lo) / 2:.2f} pp"
    if claim.kind == "better":
        if d.diff.lo > 0:
            return "reproduced", "the interval is above 0"
        if d.diff.hi < 0:
            return "not reproduced", "the interval is below 0 (the opposite sign)"
        return "inconclusive at this power", f"the interval spans 0 ({half})"
    if d.equivalent(min_effect):
        return "reproduced", f"within ±{100 * min_effect:.1f} pp (TOST)"
    if d.diff.lo > min_effect or d.diff.hi < -min_effect:
        return "not reproduced", f"the interval lies beyond ±{100 * min_effect:.1f} pp"
    return "inconclusive at this power", f"neither within nor beyond ±{100 * min_effect:.1f} pp ({half})"


def run_claim(claim: Claim, *, profile: str | None = None, data_dir=None,
              run: RunConfig | None = None, confirm: ConfirmConfig | None = None) -> Finding:
    """Race the claim's recipe against its control on fresh seeds and judge the claim.

    ``run.experiment`` defaults to :data:`EXPERIMENT`; ``confirm`` sets the race (its
    ``min_effect`` is the margin of a "comparable" claim, its ``max_seeds`` the seeds of a
    fixed-seed claim)."""
    if claim.unavailable:
        return Finding(claim, "cannot run here", claim.unavailable)
    run = replace(run or RunConfig(), experiment=(run.experiment if run else None) or EXPERIMENT,
                  name=(run.name if run else None) or f"claim-{claim.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    confirm = confirm or ConfirmConfig()
    t0 = time.perf_counter()
    if claim.control_options is None:  # one network: both recipes in one race
        sides = [(claim.options, (claim.recipe, claim.control), run)]
    else:  # two networks: a study each, on the same fresh seeds
        sides = [(claim.options, (claim.recipe,), replace(run, name=f"{run.name}-{claim.recipe.name}")),
                 ({**claim.options, **claim.control_options}, (claim.control,),
                  replace(run, name=f"{run.name}-{claim.control.name}"))]
    by_seed, studies = {}, []
    for options, recipes, side_run in sides:
        plan = plan_study(claim.arch, arch_options=options, data_dir=data_dir, budget=0,
                          profile=profile, objective=claim.objective, run=side_run, confirm=confirm,
                          protocol_keys={**claim.protocol, "confirm_cost_ratio": 0,  # both in full,
                                         "confirm_failures": "score"})  # every seed, failed or not
        if claim.fixed_seeds:  # every seed of the budget from the start: one look, one test
            plan = replace(plan, protocol=replace(plan.protocol,
                                                  confirm_seeds=plan.protocol.confirm_max_seeds))
        result = run_study(plan, side_run, confirm, [Entry(r.name, r, r.name, None) for r in recipes],
                           race_baselines=False)
        by_seed.update(scores({r.name: r.runs for r in result.verdict.rows}))
        studies.append(result.study_name)
    # both sides ran one profile and dataset: the margin and the untrained score are the same
    word, reason, measured = judge_claim(claim, by_seed[claim.recipe.name], by_seed[claim.control.name],
                                         plan.protocol.min_effect, result.verdict.rules.untrained)
    return Finding(claim, word, reason, measured, time.perf_counter() - t0, ", ".join(studies))


def format_claims(claims: list[Claim]) -> str:
    """The list ``initsearch claims`` prints."""
    lines = []
    for c in claims:
        lines += [f"{c.name}  [{c.kind}]  {c.paper}",
                  f"    claim: {c.says}", f"    paper: {c.paper_figure}",
                  f"    setting: {c.setting()}",
                  f"    compared: {c.recipe.name} vs {c.control.name} (the control)"
                  + (f"\n    cannot run here: {c.unavailable}" if c.unavailable else "")]
    return "\n".join(lines)


def format_markdown(findings: list[Finding], profile: str) -> str:
    """The claims table as Markdown (``initsearch claims --markdown FILE`` writes it; README
    and BENCHMARKS carry it as written): one row per claim, the machine and the profile above."""
    lines = [f"Profile `{profile}`; {machine()}; {time.strftime('%Y-%m-%d')}. Measured: the claim's "
             "recipe minus its control, paired by seed, 95 % CI.", "",
             "| claim | setting | paper | measured | seeds | verdict | wall |",
             "|---|---|---|---|---|---|---|"]
    for f in findings:
        measured = f.measured.pp() if f.measured else "-"
        seeds = str(f.measured.n) if f.measured else "-"
        why = f.reason.split(measured, 1)[-1].strip(" :") if f.measured else f.reason
        lines.append(f"| `{f.claim.name}` ({f.claim.recipe.name} vs {f.claim.control.name}) | "
                     f"{f.claim.setting()} | {f.claim.paper_figure} | {measured} | {seeds} | "
                     f"**{f.word}** ({why}) | {f.seconds:.0f} s |")
    return "\n".join(lines) + "\n"


def format_findings(findings: list[Finding], profile: str) -> str:
    """The claims table: the paper's figure beside the measured one, the word and its reason."""
    lines = [f"claims on profile {profile}: paper | measured (paired, 95% CI) | seeds | verdict | wall"]
    for f in findings:
        measured = f.measured.pp() if f.measured else "-"
        seeds = str(f.measured.n) if f.measured else "-"
        lines += [f"{f.claim.name}: {f.word.upper()}",
                  f"    paper: {f.claim.paper_figure}",
                  f"    measured: {measured}; {seeds} seeds; {f.seconds:.0f} s; study {f.study or '-'}",
                  f"    why: {f.reason}"]
    return "\n".join(lines)
