"""STUB: being written (issue 3)."""
from initsearch.schemes.base import Step


def risotto_(model, roles, data=None, **options) -> dict:
    raise NotImplementedError("risotto")


STEP = Step("risotto", risotto_, {}, summary="(stub)")
