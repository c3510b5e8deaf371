"""initsearch: search the weight initialization of a neural network like a hyperparameter.

Public API::

    import initsearch
    result = initsearch.search(arch="resnet_ds", data_dir="...", budget=50)
    print(result.verdict.text)               # confirmed on fresh seeds, with CIs
    result.best.apply(model)                 # a Recipe, applies to any nn.Module
    result.best.evidence                     # what the recommendation rests on
    result.best.save("recipe.yaml"); initsearch.Recipe.load("recipe.yaml")
    recipe.apply(model, data=initsearch.InitData(x, y))   # for LSUV/GradInit steps

The pipeline, one module each: data -> archs -> roles -> schemes -> recipe -> space ->
protocol -> trial -> engine (drivers, backends) -> confirm -> stats -> recommend -> report, with
tracking beside them; ``study.search`` ties them. ``settings`` groups how a search runs.
"""
from initsearch.errors import UsageError
from initsearch.recipe import BASELINES, InitReport, Recipe, RoleInit, StepInit
from initsearch.roles import ROLES, discover_roles
from initsearch.schemes import SCHEMES, STEPS, InitData
from initsearch.settings import ConfirmConfig, RunConfig

__version__ = "0.1.0"
__all__ = ["search", "SearchResult", "RunConfig", "ConfirmConfig", "Recipe", "RoleInit",
           "StepInit", "InitData", "InitReport", "BASELINES", "SCHEMES", "STEPS", "ROLES",
           "discover_roles", "UsageError"]


def __getattr__(name: str):
    # search pulls in Optuna and MLflow; keep `import initsearch` light for Ray workers and users
    # who only apply a recipe.
    if name == "search":
        from initsearch.study import search
        return search
    if name == "SearchResult":
        from initsearch.recommend import SearchResult
        return SearchResult
    raise AttributeError(name)
