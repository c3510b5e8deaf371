"""timm's zoo read and initialised without overrides (issue 20): one model per family.

A family is a model module of timm (``timm.list_modules()``); its model is the one with the
fewest parameters (``python benchmarks/timm_zoo.py --picks FILE`` chooses them and measures
discovery time and every baseline per family; the table is in BENCHMARKS.md). Each is built the
way ``--model timm:NAME`` builds it (``pretrained=False``, 10 classes, ``img_size=32`` where the
family takes it). What is checked:

* every parameter belongs to a labelled unit, read from the traced graph -- symbolically, or
  on an example batch at the model's smallest input for the families whose forward branches on
  shapes (:data:`TRACED_ON_EXAMPLE`) -- and the vision transformers as pre-norm blocks;
* the families whose layouts issue 20 named read as they are built: LayerScale and ``Scale``
  modules, CaiT's late class token and its class-attention blocks, BEiT's q/v biases and
  relative-position tables, XCiT's temperature, talking heads, norm-free nets with gains;
* the families still refused get the one-line refusal naming the unit and the fix
  (:data:`REFUSED` says why each is left);
* every baseline either refuses in one line or applies and gives a finite output
  (``test_baselines_refuse_in_one_line_or_give_a_finite_output``; slow: ~14 baselines a model).
"""
from __future__ import annotations

import copy
import warnings

import pytest
import torch

from initsearch.archs import build_model
from initsearch.errors import UsageError
from initsearch.recipe import BASELINES, StepInit, why_not
from initsearch.roles import discover_roles
from initsearch.schemes.base import InitData

timm = pytest.importorskip("timm", reason="timm is in the test extra: pip install -e '.[test]'")
pytestmark = pytest.mark.usefixtures("one_thread")

#: One model per timm family: the fewest parameters (benchmarks/timm_zoo.py, timm 1.0.31).
FAMILIES = {
    "beit": "beit_base_patch16_224", "byoanet": "halonet_h1", "byobnet": "test_byobnet",
    "cait": "cait_xxs24_224", "coat": "coat_tiny", "convit": "convit_tiny",
    "convmixer": "convmixer_768_32", "convnext": "test_convnext", "cpubone": "cpubone_nano",
    "crossvit": "crossvit_tiny_240", "csatv2": "csatv2", "cspnet": "cs3darknet_focus_s",
    "cspnext": "cspnext_tiny", "davit": "davit_tiny", "deepseek_vit": "deepseek_vit_412m",
    "deit": "deit_tiny_patch16_224", "densenet": "densenet121", "dla": "dla46x_c", "dpn": "dpn48b",
    "edgenext": "edgenext_xx_small", "efficientformer": "efficientformer_l1",
    "efficientformer_v2": "efficientformerv2_s0", "efficientnet": "test_efficientnet",
    "efficientvim": "efficientvim_m1", "efficientvit_mit": "efficientvit_b0",
    "efficientvit_msra": "efficientvit_m0", "eva": "vit_tiny_patch16_dinov3_qkvb",
    "fasternet": "fasternet_t0", "fastvit": "fastvit_t8", "focalnet": "focalnet_tiny_srf",
    "gcvit": "gcvit_xxtiny", "gemma4_vit": "gemma4_vit_167m_enc", "ghostnet": "ghostnet_050",
    "hardcorenas": "hardcorenas_b", "hgnet": "hgnetv2_b0", "hiera": "hiera_tiny_224",
    "hieradet_sam2": "sam2_hiera_tiny", "hrnet": "hrnet_w18_small", "iformer": "iformer_t",
    "inception_next": "inception_next_atto", "inception_resnet_v2": "inception_resnet_v2",
    "inception_v3": "inception_v3", "inception_v4": "inception_v4", "lcnetv2": "lcnetv2_small",
    "levit": "levit_128s", "lowformer": "lowformer_b0", "mambaout": "test_mambaout",
    "maxxvit": "test_coatnet", "metaformer": "poolformerv2_s12", "mlp_mixer": "gmlp_ti16_224",
    "mobilenetv3": "lcnet_035", "mobilenetv5": "mobilenetv5_base", "mobilevit": "mobilevit_xxs",
    "mvitv2": "mvitv2_tiny", "naflexvit": "naflexvit_base_patch16_parfac_gap",
    "nasnet": "nasnetalarge", "nest": "nest_tiny", "nextvit": "nextvit_small",
    "nfnet": "test_nfnet", "pit": "pit_ti_224", "pnasnet": "pnasnet5large", "pvt_v2": "pvt_v2_b0",
    "qwen3_vit": "qwen3_vit_88m", "rdnet": "rdnet_tiny", "regnet": "regnetx_002",
    "repghost": "repghostnet_050", "repvit": "repvit_m1", "res2net": "res2next50",
    "resnest": "resnest14d", "resnet": "test_resnet", "resnetv2": "resnetv2_18",
    "rexnet": "rexnet_100", "selecsls": "selecsls42", "senet": "legacy_seresnet18",
    "sequencer": "sequencer2d_s", "shvit": "shvit_s1", "sknet": "skresnet18",
    "starnet": "starnet_s050", "swiftformer": "swiftformer_xs",
    "swin_transformer": "swin_tiny_patch4_window7_224",
    "swin_transformer_v2": "swinv2_tiny_window8_256",
    "swin_transformer_v2_cr": "swinv2_cr_tiny_224", "tiny_vit": "tiny_vit_5m_224",
    "tnt": "tnt_s_legacy_patch16_224", "tresnet": "tresnet_m", "twins": "twins_svt_small",
    "vgg": "vgg11", "visformer": "visformer_tiny", "vision_transformer": "test_vit",
    "vision_transformer_hybrid": "vit_tiny_r_s16_p8_224",
    "vision_transformer_relpos": "test_vit_relpos",
    "vision_transformer_sam": "samvit_base_patch16_224", "vitamin": "vitamin_small_224",
    "volo": "volo_d1_224", "vovnet": "ese_vovnet19b_slim_dw", "xception": "legacy_xception",
    "xception_aligned": "xception41p", "xcit": "xcit_nano_12_p8_224",
}
#: Families still refused, and why (the refusal is the one-line UsageError): none.
REFUSED: dict[str, str] = {}
#: Families whose forward branches on its input's shape (TF "same" padding, windows that must
#: divide the map, ``if x.ndim != 4``): fx cannot trace them symbolically, so their graph is
#: traced on an example batch (initsearch.roles.tracing).
TRACED_ON_EXAMPLE = (
    "convit",
    "cpubone",
    "efficientvit_mit",
    "efficientvit_msra",
    "gemma4_vit",
    "mobilenetv5",
    "mobilevit",
    "naflexvit",
    "nasnet",
    "pnasnet",
    "tiny_vit",
    "twins",
    "vgg",
    "vision_transformer_hybrid",
)
#: The families issue 20 names, checked in the fast lane; the rest are slow.
NAMED = ("vision_transformer", "deit", "cait", "beit", "metaformer", "convnext", "nfnet",
         "efficientnet", "regnet", "swin_transformer", "maxxvit", "mlp_mixer", "levit", "xcit",
         "ghostnet", "mobilevit", "coat")


def _families(fast: tuple[str, ...]):
    return [pytest.param(f, marks=() if f in fast else pytest.mark.slow) for f in FAMILIES]


def _build(family: str) -> torch.nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build_model(f"timm:{FAMILIES[family]}")


def test_every_timm_family_has_a_model_here():
    """A timm that adds a family fails here: add its smallest model (benchmarks/timm_zoo.py)."""
    assert set(FAMILIES) == set(timm.list_modules())
    assert set(REFUSED) <= set(FAMILIES)


@pytest.mark.parametrize("family", _families(NAMED))
def test_every_parameter_belongs_to_a_labelled_unit(family):
    model = _build(family)
    if family in REFUSED:
        with pytest.raises(UsageError) as err:
            discover_roles(model)
        assert "role_overrides" in str(err.value) and "\n" not in str(err.value)
        return
    size = _input_size(model) or 32
    roles = discover_roles(model, input_shape=(3, size, size))  # raises if a unit is left unlabelled
    assert roles.source.startswith("graph (traced on") == (family in TRACED_ON_EXAMPLE), roles.source
    assert roles.source.startswith("graph"), roles.source
    if family in ("vision_transformer", "deit", "cait", "beit", "xcit", "swin_transformer"):
        assert roles.topology == "transformer" and roles.blocks[0].norm == "pre"


def _input_size(model: torch.nn.Module) -> int | None:
    """The smallest of 32, 64, ... 256 pixels the model runs at (HaloNet is built for 256);
    None for CrossViT, which runs at none once built with ``img_size`` (timm rounds its two
    branches' patch grids apart; a space refuses it in one line when it binds)."""
    for size in (32, 64, 96, 128, 160, 224, 256):
        try:
            with torch.no_grad():
                model.eval()(torch.randn(1, 3, size, size))
            return size
        except Exception:  # noqa: BLE001 -- too small for its windows or patches: the next
            continue
    return None


@pytest.mark.slow
@pytest.mark.parametrize("family", [f for f in NAMED if f not in REFUSED])
def test_baselines_refuse_in_one_line_or_give_a_finite_output(family):
    """What a search does with a model: each baseline is checked on a copy (``why_not``, at the
    model's input size); one that is not refused is applied -- data steps on 16 random images,
    GradInit cut to 2 iterations (its rule runs; its budget is not the point) -- and the
    model's output must be finite. Emergence on GhostNet's ~90 layers is refused for its
    non-finite output, the case the issue measured."""
    model = _build(family)
    size = _input_size(model)
    roles = discover_roles(model, input_shape=(3, size, size))
    x = torch.randn(16, 3, size, size)
    applied = []
    for name, recipe in BASELINES.items():
        why = why_not(name, model, roles=roles, input_shape=(3, size, size))
        if why:
            assert "\n" not in why and why.strip()
            continue
        steps = tuple(StepInit(s.name, {"iters": 2, "batch_size": 4}) if s.name == "gradinit" else s
                      for s in recipe.steps)
        trial = copy.deepcopy(model)
        type(recipe)(recipe.roles, name, steps=steps).apply(
            trial, data=InitData(x, torch.randint(0, 10, (16,))), seed=0, roles=roles)
        with torch.no_grad():
            assert torch.isfinite(trial.eval()(x[:2])).all(), name
        applied.append(name)
    assert {"pytorch_default", "he"} <= set(applied)
    if family == "ghostnet":
        assert "emergence" not in applied


def _roles_of(name: str):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_model(f"timm:{name}")
    return discover_roles(model)


def test_the_layouts_issue_20_found_refused_are_read_as_built():
    """The four families refused before, read without overrides, each by its defining layout."""
    deit3 = _roles_of("deit3_small_patch16_224")  # timm's LayerScale modules on both branches
    assert deit3["blocks.0.ls1"] == deit3["blocks.0.ls2"] == "layer_scale"
    assert [(b.scale, b.norm) for b in deit3.blocks[:2]] == [("blocks.0.ls1", "pre"), ("blocks.0.ls2", "pre")]
    cait = _roles_of("cait_xxs24_224")  # the class token joins late, before class attention
    assert cait["cls_token"] == "token" and cait["blocks_token_only.0.gamma_1"] == "layer_scale"
    assert [cait[f"blocks_token_only.0.attn.{p}"] for p in "qkv"] == ["attn_q", "attn_k", "attn_v"]
    first = next(b for b in cait.blocks if b.path == "blocks_token_only.0.attn")
    assert first.branch[0] == "blocks_token_only.0.attn.q"  # not the patch embedding upstream
    assert cait["blocks.0.attn.qkv"] == "attn_qkv" and cait["blocks.0.attn.proj_l"] == "linear"
    beit = _roles_of("beit_base_patch16_224")  # q and v biases packed with a zero k bias
    assert beit["blocks.0.attn.q_bias"] == beit["blocks.0.attn.v_bias"] == "bias"
    assert beit["blocks.0.attn.relative_position_bias_table"] == "pos_embedding"
    assert beit["patch_embed.proj"] == "embedding" and beit["blocks.0.attn.qkv"] == "attn_qkv"
    pool = _roles_of("poolformer_s12")  # timm's Scale modules; the pooling branch has no layer
    assert pool["stages.0.blocks.0.layer_scale1"] == pool["stages.0.blocks.0.layer_scale2"] == "layer_scale"
    assert pool.blocks[0].scale == "stages.0.blocks.0.layer_scale2"


def test_attention_tensors_activations_and_gates_by_what_they_do():
    """XCiT's per-head temperature acts inside its attention; StarReLU's scale and bias make an
    activation, not a branch multiplier; a squeeze-excitation gate runs after a bottleneck's
    last conv but does not end the branch (NFNet, SE-ResNet), so ZerO and Fixup zero the conv
    that carries the data."""
    xcit = _roles_of("xcit_nano_12_p8_224")
    assert xcit["blocks.0.attn.temperature"] == "attn_param" and xcit["cls_token"] == "token"
    v2 = _roles_of("poolformerv2_s12")
    assert v2["stages.0.blocks.0.mlp.act"] == "activation"
    assert all(b.scale is None or "res_scale" in b.scale or "layer_scale" in b.scale for b in v2.blocks)
    nf = _roles_of("test_nfnet")
    block = next(b for b in nf.blocks if b.path == "stages.0.0")
    assert block.branch[-1] == "stages.0.0.conv3" and nf["stages.0.0.conv3"] == "branch_last"
    assert nf["stages.0.0.attn_last.fc2"] == "conv"
    se = _roles_of("seresnet18")
    assert se["layer1.0.conv2"] == "branch_last" and se["layer1.0.se.fc2"] == "conv"


def test_timm_models_by_name_and_their_refusals():
    """``--model timm:NAME`` builds for CIFAR (img_size 32 where the family takes it); a name
    timm does not have is one line."""
    model = build_model("timm:vit_tiny_patch16_224")
    assert model.patch_embed.img_size == (32, 32) and model.head.out_features == 10
    with pytest.raises(UsageError, match="timm has no model 'nope_net'"):
        build_model("timm:nope_net")
    with pytest.raises(UsageError, match="--model timm:vit_tiny_patch16_224 failed"):
        build_model("timm:vit_tiny_patch16_224", options={"depth": "x"})


def test_a_hybrid_reads_its_conv_blocks_as_convolutional_and_its_mlps_as_mlps():
    """MobileViT: inverted-residual conv blocks (a depthwise 3x3 inside) end in ``branch_last``,
    the transformer's MLPs in ``mlp_out``. Its forward branches on the feature map's shape, so
    it is traced on an example batch."""
    roles = _roles_of("mobilevit_xxs")
    assert roles.source.startswith("graph (traced on a 1x3x32x32 example")
    assert roles["stages.0.0.conv3_1x1.conv"] == "branch_last"
    assert roles["stages.0.0.conv1_1x1.conv"] == roles["stages.0.0.conv2_kxk.conv"] == "conv"
    mlp = "stages.2.1.transformer.0.mlp"
    assert (roles[f"{mlp}.fc1"], roles[f"{mlp}.fc2"]) == ("mlp_in", "mlp_out")
    assert roles["stages.2.1.transformer.0.attn.qkv"] == "attn_qkv"


def test_an_additive_attention_query_vector_keeps_its_init():
    """SwiftFormer's ``w_g``: a (dim, 1) matrix the queries are multiplied by, in an attention
    with no softmax. Read as an ``attn_param`` by its owner's class (EfficientAdditiveAttention),
    so no fan-based scheme reads its fans the wrong way round: every baseline keeps it."""
    from initsearch.roles import units

    model = _build("swiftformer")
    roles = discover_roles(model)
    paths = [p for p in units(model) if p.endswith(".w_g")]
    assert paths and all(roles[p] == "attn_param" for p in paths)
    w_g = dict(model.named_parameters())[paths[0]].detach().clone()
    BASELINES["he"].apply(model, seed=0, roles=roles)
    assert torch.equal(dict(model.named_parameters())[paths[0]], w_g)
