"""The output contract, checked the same way for every registered model in 2D and 3D.

Generic on purpose: the test knows models only through the registry, ``ModelInfo`` and
``SegmentationOutput`` (what inference, training and the GUI rely on), never model-specific code.
Tiny networks (``base_width=4``, ``levels=4``) and inputs of a few voxels keep the file within its
CPU budget; ``torch.compile`` and ONNX export, which are slow, run for one 2D model per family.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from cascadeseg.errors import ModelConfigError
from cascadeseg.models import LogitsOnly, OutputRequest, SegmentationOutput, create_model, model_class, model_names
from cascadeseg.models.blocks.classification_guided import MaxPoolPresenceHead, PooledPresenceHead

NAMES = model_names()
TINY = dict(base_width=4, levels=4)
IN_CHANNELS = 2  # more than one, so channel handling is exercised
NUM_CLASSES = 3  # multi-class: background + 2
# One 2D model per family for the slow export checks (plain U-Net, nested with attention gates,
# nested with full-scale skips and the CGM, full-scale UNet 3+, a cascade).
EXPORT_SET = ["unet", "anu_net", "unet_sharp", "unet3plus", "cascaded_unet"]
# Compiling costs ~10 s of CPU per model: UNet 3+ shares UNet#'s full-scale links and CGM, so it is
# left out of the compile run (it is still exported to ONNX).
COMPILE_SET = ["unet", "anu_net", "unet_sharp", "cascaded_unet"]


def build(name: str, dims: int, **options) -> nn.Module:
    torch.manual_seed(0)
    return create_model(name, in_channels=IN_CHANNELS, num_classes=NUM_CLASSES, dims=dims, **{**TINY, **options})


def valid_size(model: nn.Module, dims: int) -> tuple[int, ...]:
    """Smallest non-square size that fits the model's divisor (non-square catches axis mix-ups)."""
    base = (8, 12) if dims == 2 else (4, 8, 12)
    return tuple(-(-b // d) * d for b, d in zip(base, model.size_divisor))


def image(size: tuple[int, ...], batch: int = 2) -> Tensor:
    return torch.randn(batch, IN_CHANNELS, *size)


def optional_outputs(out: SegmentationOutput) -> list[Tensor]:
    maps = [*out.heads.values(), *out.aux.values(), *out.stages.values(), *out.attention.values(),
            *out.branch_classification.values()]
    return maps + ([out.classification] if out.classification is not None else [])


def pruning_depths(model: nn.Module) -> list[int]:
    return list(range(1, model.max_depth + 1)) if model_class(model.info.name).info.pruning_depths else []


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("name", NAMES)
def test_output_shapes_even_and_odd(name: str, dims: int) -> None:
    model = build(name, dims).eval()
    size = valid_size(model, dims)
    with torch.no_grad():
        out = model(image(size), request=OutputRequest.everything())
        assert out.logits.shape == (2, NUM_CLASSES, *size)
        assert torch.isfinite(out.logits).all()
        for k, head in out.heads.items():
            assert head.shape == (2, NUM_CLASSES, *size), f"head {k}"
        for stage, logits in out.stages.items():
            assert logits.shape[0] == 2 and logits.shape[2:] == size, f"stage {stage}"
        stage_classes = {NUM_CLASSES} | {logits.shape[1] for logits in out.stages.values()}
        for name_, aux in out.aux.items():
            # A cascade stage may have its own class count (CU-Net: whole target first).
            assert aux.shape[0] == 2 and aux.shape[1] in stage_classes, f"aux {name_}"
            assert all(s % a == 0 for s, a in zip(size, aux.shape[2:])), f"aux {name_} is not a down-scaled grid"
        if out.classification is not None:
            assert out.classification.shape == (2, NUM_CLASSES - 1)
        # Odd sizes: either the model copes, or it says which multiple it needs (the predictor pads).
        odd = tuple(s + 1 for s in size)
        try:
            odd_out = model(image(odd, batch=1))
        except ModelConfigError as exc:
            assert "multiple of" in str(exc) and str(model.size_divisor) in str(exc)
        else:
            assert odd_out.logits.shape == (1, NUM_CLASSES, *odd)


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("name", NAMES)
def test_every_parameter_receives_a_gradient(name: str, dims: int) -> None:
    model = build(name, dims).train()
    x = image(valid_size(model, dims))
    out = model(x, request=OutputRequest.for_training())
    # A deep-supervised loss touches every output the model trains: logits, heads, aux, stages, CGM.
    terms = [out.logits, *out.heads.values(), *out.aux.values(), *out.stages.values(), *out.branch_classification.values()]
    if out.classification is not None:
        terms.append(out.classification)
    loss = sum(t.float().pow(2).mean() for t in terms)
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert not missing, f"parameters without gradient: {missing[:10]}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("name", NAMES)
def test_pruned_depth_equals_full_models_head(name: str, dims: int) -> None:
    model = build(name, dims).eval()
    x = image(valid_size(model, dims))
    depths = pruning_depths(model)
    with torch.no_grad():
        full = model(x, request=OutputRequest(heads=True))
        if not depths:
            assert full.heads == {}
            torch.testing.assert_close(model(x, depth=1).logits, full.logits, rtol=0, atol=1e-6)
            with pytest.raises(ModelConfigError, match="depth"):
                model(x, depth=2)
            return
        assert sorted(full.heads) == depths
        torch.testing.assert_close(full.logits, full.heads[model.max_depth], rtol=0, atol=0)
        for k in depths:
            pruned = model(x, depth=k)
            torch.testing.assert_close(pruned.logits, full.heads[k], rtol=0, atol=1e-6)
        with pytest.raises(ModelConfigError, match="depth"):
            model(x, depth=model.max_depth + 1)


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("name", NAMES)
def test_attention_maps_in_unit_range_with_gated_shape(name: str, dims: int) -> None:
    model = build(name, dims).eval()
    size = valid_size(model, dims)
    with torch.no_grad():
        out = model(image(size), request=OutputRequest(attention=True))
    if not model_class(name).info.attention:
        assert out.attention == {}
        return
    assert out.attention, "a model with attention gates returned no maps"
    for gate, alpha in out.attention.items():
        assert alpha.shape[:2] == (2, 1), gate
        # The gated skip map lives on one of the network's grids: the input size down-scaled.
        assert all(s % a == 0 for s, a in zip(size, alpha.shape[2:])), gate
        assert alpha.min() >= 0 and alpha.max() <= 1, gate


@pytest.mark.parametrize("name", NAMES)
def test_requesting_nothing_returns_empty_optional_outputs(name: str) -> None:
    model = build(name, 2).eval()
    x = image(valid_size(model, 2))
    with torch.no_grad():
        out = model(x)
        out_none = model(x, request=None)
    for o in (out, out_none):
        assert o.heads == {} and o.aux == {} and o.stages == {} and o.attention == {}
        assert o.classification is None
    torch.testing.assert_close(out.logits, out_none.logits)


def _force_presence(model: nn.Module, logit: float) -> None:
    """Make every classification-guided module answer ``logit`` for every class and image."""
    heads = [m for m in model.modules() if isinstance(m, (PooledPresenceHead, MaxPoolPresenceHead))]
    assert heads, "model claims a classification-guided module but has none"
    for head in heads:
        last = [m for m in head.modules() if isinstance(m, (nn.Linear, nn.Conv2d, nn.Conv3d))][-1]
        nn.init.zeros_(last.weight)
        nn.init.constant_(last.bias, logit)


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("name", [n for n in NAMES if model_class(n).info.classification_guided])
def test_cgm_zeroes_heads_for_an_empty_prediction(name: str, dims: int) -> None:
    model = build(name, dims).eval()
    x = image(valid_size(model, dims))
    request = OutputRequest(heads=True, classification=True)
    with torch.no_grad():
        ungated = build(name, dims, cgm_gating=False).eval()(x, request=request)
        _force_presence(model, 20.0)  # "present": the gate must leave every output as it is
        present = model(x, request=request)
        _force_presence(model, -20.0)  # "absent": no foreground anywhere
        absent = model(x, request=request)
        model.train()
        training = model(x, request=request)  # training: outputs stay ungated (the heads keep learning)
    torch.testing.assert_close(present.logits, ungated.logits)
    assert (present.classification > 0).all() and (absent.classification < 0).all()
    gated = [absent.logits, *absent.heads.values(), *absent.aux.values()]
    assert len(gated) >= 1 + len(absent.heads)
    for logits in gated:
        assert (logits.argmax(dim=1) == 0).all()
        assert (torch.softmax(logits, dim=1)[:, 1:] < 1e-6).all()
    assert (training.logits.argmax(dim=1) != 0).any()


@pytest.mark.slow
@pytest.mark.parametrize("name", COMPILE_SET)
def test_torch_compile_runs_and_matches_eager(name: str) -> None:
    model = build(name, 2).eval()
    depth = model.max_depth - 1 if pruning_depths(model) else None  # a pruned graph where there is one
    wrapper = LogitsOnly(model, depth).eval()
    x = image(valid_size(model, 2), batch=1)
    with torch.no_grad():
        expected = wrapper(x)
        compiled = torch.compile(wrapper)(x)
    torch.testing.assert_close(compiled, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("name", EXPORT_SET)
def test_onnx_export_for_inference(name: str) -> None:
    onnx = pytest.importorskip("onnx")  # a test extra in pyproject; importorskip names it if absent
    from onnx.reference import ReferenceEvaluator

    model = build(name, 2).eval()
    # The exporter restores the wrapper's training flag on the model afterwards: keep it in eval.
    wrapper = LogitsOnly(model).eval()
    x = image(valid_size(model, 2), batch=1)
    buffer = io.BytesIO()
    torch.onnx.export(wrapper, (x,), buffer, dynamo=False, input_names=["image"], output_names=["logits"])
    proto = onnx.load_from_string(buffer.getvalue())
    onnx.checker.check_model(proto, full_check=True)
    result = ReferenceEvaluator(proto).run(None, {"image": x.numpy()})[0]
    with torch.no_grad():
        expected = wrapper(x).numpy()
    np.testing.assert_allclose(result, expected, rtol=1e-4, atol=1e-4)
