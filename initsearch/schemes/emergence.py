"""STUB: being written (issue 3)."""
from initsearch.schemes.base import Step


def emergence_(model, roles, data=None, **options) -> dict:
    raise NotImplementedError("emergence")


STEP = Step("emergence", emergence_, {}, summary="(stub)")
