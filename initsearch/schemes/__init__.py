"""Init schemes, one module each; the math and the paper are in each module's docstring.

Layer schemes re-initialize one module and are chosen per role; steps act on the whole network
after them (structure-aware ones first, then data-dependent ones):

=================  =========================  ===================================================
name               kind, module               what
=================  =========================  ===================================================
``default``        layer, ``layer``           PyTorch's own ``reset_parameters``
``he``             layer, ``layer``           He/Kaiming (2015), fan_in or fan_out
``xavier``         layer, ``layer``           Glorot & Bengio (2010)
``orthogonal``     layer, ``layer``           Saxe et al. (2014)
``zero``           layer, ``layer``           all parameters 0 (LION-DG's auxiliary heads, Fixup)
``identity``       layer, ``identity``        ZerO (Zhao et al. 2022): partial identity/Hadamard
``fixup``          step, ``fixup``            Fixup's L^(-1/(2m-2)) branch scaling (2019)
``emergence``      step, ``emergence``        emergence-promoting alpha^n depth profile (2024)
``risotto``        step, ``risotto``          RISOTTO looks-linear isometry for ReLU ResNets
``lsuv``           step (data), ``lsuv``      LSUV layer-sequential unit variance (2016)
``gradinit``       step (data), ``gradinit``  GradInit (2021) at the paper's setting for the family
``gradinit_fast``  step (data), ``gradinit``  GradInit's rule at a cheap search setting (ours)
=================  =========================  ===================================================
"""
from initsearch.schemes import (emergence, fixup, gpt2, gradinit, identity, lsuv, mimetic, risotto,
                                tfixup)
from initsearch.schemes.base import InitData, Step, init_forward_mode  # noqa: F401
from initsearch.schemes.layer import SCHEMES as _LAYER_SCHEMES
from initsearch.schemes.layer import Scheme, scale_  # noqa: F401

#: Layer schemes by name (chosen per role).
SCHEMES: dict[str, Scheme] = {**_LAYER_SCHEMES, identity.SCHEME.name: identity.SCHEME}

#: Network-level steps by name, in the order a recipe must list them: static, then data.
STEPS: dict[str, Step] = {s.name: s for s in (
    fixup.STEP, emergence.STEP, risotto.STEP, gpt2.STEP, tfixup.STEP, mimetic.STEP, lsuv.STEP,
    gradinit.STEP, gradinit.FAST_STEP)}
