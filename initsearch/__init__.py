"""initsearch: search the weight initialization of a neural network like a hyperparameter.

Public API::

    import initsearch
    result = initsearch.search(arch="resnet_ds", data_dir="...", budget=50)
    print(result.verdict.text)               # raced on fresh seeds and unseen images, with CIs
    initsearch.confirm_recipes([recipe], "resnet_ds", arch_options={"depth": 20},
                               confirm=initsearch.ConfirmConfig(epochs=12))  # at the target size
    result.best.apply(model)                 # a Recipe, applies to any nn.Module
    result.best.evidence                     # what the recommendation rests on
    result.best.save("recipe.yaml"); initsearch.Recipe.load("recipe.yaml")
    recipe.apply(model, data=initsearch.InitData(x, y))   # for LSUV/GradInit steps

The pipeline, one module each: data -> archs -> roles -> schemes -> recipe -> space ->
protocol -> trial -> engine (drivers, backends) -> confirm -> stats -> recommend -> report, with
tracking and the study record (``record``) beside them; ``plan`` resolves a study's set-up once
and ``study.search`` runs it. ``settings`` groups how a search runs.
"""
from initsearch.errors import UsageError
from initsearch.recipe import BASELINES, InitReport, Recipe, RoleInit, StepInit
from initsearch.roles import ROLES, discover_roles
from initsearch.schemes import SCHEMES, STEPS, InitData
from initsearch.settings import ConfirmConfig, RunConfig

__version__ = "0.1.0"
__all__ = ["search", "confirm_recipes", "SearchResult", "RunConfig", "ConfirmConfig", "Recipe", "RoleInit",
           "StepInit", "InitData", "InitReport", "BASELINES", "SCHEMES", "STEPS", "ROLES",
           "discover_roles", "UsageError"]


def __getattr__(name: str):
    # search pulls in Optuna and MLflow; keep `import initsearch` light for Ray workers and users
    # who only apply a recipe.
    if name in ("search", "confirm_recipes"):
        from initsearch import study
        return getattr(study, name)
    if name == "SearchResult":
        from initsearch.recommend import SearchResult
        return SearchResult
    raise AttributeError(name)
