"""STUB: being written (issue 3)."""
from initsearch.schemes.base import Step


def gradinit_(model, roles, data=None, **options) -> dict:
    raise NotImplementedError("gradinit")


STEP = Step("gradinit", gradinit_, {}, summary="(stub)")
