"""U-Net and the cascade family: shapes, size constraint, stages, gradients, anisotropic 3D,
coarse-to-fine cropping on real label maps, and a forward on a real LGG FLAIR slice.

Tiny widths (base_width 4) keep the whole file to seconds on 2 CPU cores.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cascadeseg.errors import ModelConfigError
from cascadeseg.losses import build_loss, class_frequency_weighted_ce
from cascadeseg.models import LogitsOnly, OutputRequest, SegmentationOutput, create_model, model_class
from cascadeseg.models.blocks.rsu import RSU, RSU4F
from cascadeseg.models.coarse_to_fine_unet import candidate_box, foreground_mask, stage2_region
from cascadeseg.models.cu_net import hierarchical_fusion
from cascadeseg.models.inner_cascaded_u2net import RSU_HEIGHTS

FAMILY = ["unet", "cascaded_unet", "cu_net", "coarse_to_fine_unet", "inner_cascaded_unet", "inner_cascaded_u2net"]
WITH_STAGES = ["cascaded_unet", "cu_net", "coarse_to_fine_unet"]
TINY = dict(base_width=4, levels=3)


def tiny(name: str, dims: int, num_classes: int = 3, in_channels: int = 1, **options) -> nn.Module:
    torch.manual_seed(0)
    return create_model(name, in_channels=in_channels, num_classes=num_classes, dims=dims, **{**TINY, **options})


def spatial(dims: int, model: nn.Module, scale: int = 2) -> tuple[int, ...]:
    """A small valid input size: a multiple of the divisor, not square (catches axis mix-ups)."""
    base = (scale * 4, scale * 6) if dims == 2 else (scale * 2, scale * 4, scale * 6)
    return tuple(-(-b // d) * d for b, d in zip(base, model.size_divisor))


def all_outputs(out: SegmentationOutput) -> list[Tensor]:
    return [out.logits, *out.heads.values(), *out.stages.values(), *out.aux.values()]


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("name", FAMILY)
def test_shapes_and_size_constraint(name: str, dims: int) -> None:
    model = tiny(name, dims).eval()
    size = spatial(dims, model)
    with torch.no_grad():
        out = model(torch.randn(2, 1, *size))
    assert out.logits.shape == (2, 3, *size)
    assert torch.isfinite(out.logits).all()
    odd = (size[0] + 1, *size[1:])
    with pytest.raises(ModelConfigError, match=r"multiple of"):
        model(torch.randn(1, 1, *odd))
    with pytest.raises(ModelConfigError, match="input channel"):
        model(torch.randn(1, 2, *size))
    with pytest.raises(ModelConfigError, match="pruning depth 2"):  # no pruning in this family
        model(torch.randn(1, 1, *size), depth=2)


@pytest.mark.parametrize("name", FAMILY)
def test_registry_info_matches(name: str) -> None:
    cls = model_class(name)
    assert cls.info.name == name
    assert set(cls.info.dims) >= {2, 3}
    assert cls.info.default_loss in {"dice_ce", "focal_tversky", "weighted_sampling", "class_weighted_ce"}


@pytest.mark.parametrize("name", WITH_STAGES)
def test_stages_only_when_requested(name: str) -> None:
    model = tiny(name, 2).eval()
    x = torch.randn(1, 1, *spatial(2, model))
    calls: list[str] = []
    hooks = [m.register_forward_hook(lambda *_ , n=n: calls.append(n))
             for n, m in model.named_modules() if n.startswith("aux")]
    with torch.no_grad():
        plain = model(x)
        assert plain.stages == {} and plain.aux == {} and plain.heads == {}
        assert calls == []  # auxiliary heads never ran
        full = model(x, request=OutputRequest.for_training())
    for hook in hooks:
        hook.remove()
    assert list(full.stages) == list(model.info.stages)
    assert torch.equal(full.logits, plain.logits)
    for logits in full.stages.values():
        assert logits.shape[2:] == x.shape[2:]
    if name == "cu_net":
        assert full.stages["stage1"].shape[1] == 2  # whole target vs background
        assert full.stages["stage2"].shape[1] == 3
        assert len(full.aux) == 2 * (TINY["levels"] - 1) and len(calls) == len(full.aux)


def test_cu_net_has_eight_auxiliary_supervisions_at_paper_depth() -> None:
    model = create_model("cu_net", in_channels=4, num_classes=4, dims=2, base_width=2, levels=5).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 4, 32, 32), request=OutputRequest.for_training())
    assert len(out.aux) == 8
    assert {k.split("_")[0] for k in out.aux} == {"stage1", "stage2"}
    assert all(v.shape[-1] < 32 for v in out.aux.values())  # lower resolution, compared with down-scaled GT


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("name", FAMILY)
def test_every_parameter_gets_a_gradient(name: str, dims: int) -> None:
    model = tiny(name, dims).train()
    size = spatial(dims, model)
    x = torch.randn(2, 1, *size)
    target = torch.randint(0, 3, (2, *size))
    out = model(x, request=OutputRequest.for_training())
    loss = torch.zeros(())
    for logits in all_outputs(out):
        t = target.clamp(max=logits.shape[1] - 1)
        if logits.shape[2:] != t.shape[1:]:
            t = F.interpolate(t[:, None].float(), size=logits.shape[2:], mode="nearest")[:, 0].long()
        loss = loss + F.cross_entropy(logits, t)
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


@pytest.mark.parametrize("name", FAMILY)
def test_anisotropic_3d_pools_in_plane_first(name: str) -> None:
    spacing = (6.5, 0.7, 0.7)
    # Instance norm here: small 3D batches are where it replaces the papers' batch norm.
    model = tiny(name, 3, spacing=spacing, levels=4, norm="instance").eval()
    assert not any(isinstance(m, nn.BatchNorm3d) for m in model.modules())
    assert model.plan[0] == (1, 2, 2)  # the 6.5 mm axis is not pooled at the first level
    assert model.size_divisor[0] < model.size_divisor[1]
    with torch.no_grad():
        out = model(torch.randn(1, 1, 8, 64, 64))
    assert out.logits.shape == (1, 3, 8, 64, 64)


def test_bad_spacing_is_a_model_config_error() -> None:
    with pytest.raises(ModelConfigError, match="spacing"):
        create_model("unet", in_channels=1, num_classes=2, dims=3, spacing=(1.0, 1.0))
    with pytest.raises(ModelConfigError, match="coarse_factor"):
        create_model("coarse_to_fine_unet", in_channels=1, num_classes=2, dims=3, coarse_factor=3)


def test_unet_parameter_count_at_paper_width() -> None:
    def params(**options) -> int:
        with torch.device("meta"):
            return sum(p.numel() for p in create_model("unet", in_channels=1, num_classes=2, dims=2, **options).parameters())

    assert abs(params() - 7.85e6) / 7.85e6 < 0.02  # transposed up-convolutions (the 2015 U-Net): 7.76 M
    # Paper 004's U-Net baseline is the bilinear one: 7.85 M exactly (to its two decimals).
    assert params(upsample="interp") == pytest.approx(7.85e6, abs=5e3)
    with pytest.raises(ModelConfigError, match="upsample must be one of"):
        create_model("unet", in_channels=1, num_classes=2, dims=2, upsample="nearest")


def test_u2net_rsu_heights_paper_is_rsu7_everywhere() -> None:
    assert RSU_HEIGHTS == ("u2net", "paper")

    def heights(model: nn.Module) -> list[int]:  # RSU-L has L - 1 encoder layers; RSU-4F counts 4
        return [len(m.encoder) + 1 if isinstance(m, RSU) else 4 for m in model.modules() if isinstance(m, (RSU, RSU4F))]

    default = tiny("inner_cascaded_u2net", 2, levels=5)
    paper = tiny("inner_cascaded_u2net", 2, levels=5, rsu_heights="paper")
    assert sorted(set(heights(default))) == [4, 5, 6, 7] and any(isinstance(m, RSU4F) for m in default.modules())
    assert set(heights(paper)) == {7} and not any(isinstance(m, RSU4F) for m in paper.modules())
    x = torch.randn(1, 1, 32, 32)  # the deepest level is 2x2: RSU-7 pools it down to 1x1 (ceil mode)
    with torch.no_grad():
        assert paper.eval()(x).logits.shape == (1, 3, 32, 32)
    with pytest.raises(ModelConfigError, match="rsu_heights"):
        tiny("inner_cascaded_u2net", 2, rsu_heights="7")


def test_cu_net_fusion_is_hierarchical() -> None:
    whole = torch.tensor([[5.0, -5.0], [-5.0, 5.0]]).T.reshape(1, 2, 1, 2)  # voxel 0 background, 1 target
    parts = torch.tensor([[9.0, 0.0, 3.0, 0.0], [9.0, 0.0, 0.0, 3.0]]).T.reshape(1, 4, 1, 2)
    fused = hierarchical_fusion(whole, parts)
    assert torch.allclose(fused.logsumexp(dim=1), torch.zeros(1, 1, 2), atol=1e-6)  # log-probabilities
    # Stage 2's background vote (9.0) is ignored: it only chooses among substructures.
    assert fused.argmax(dim=1).tolist() == [[[0, 3]]]


# --- real data -----------------------------------------------------------------------------------


def _array(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


@pytest.fixture(scope="module")
def lgg_slice(shared_data: Path) -> tuple[Tensor, np.ndarray]:
    """The 256x256 FLAIR slice with the most tumour of the first LGG case, z-scored, and its label."""
    case = "TCGA_CS_4941_19960909"
    image = _array(shared_data / "lgg-flair" / "imagesTr" / f"{case}_0000.nii.gz").astype(np.float32)
    label = _array(shared_data / "lgg-flair" / "labelsTr" / f"{case}.nii.gz")
    z = int(label.reshape(label.shape[0], -1).sum(axis=1).argmax())
    flair = image[z]
    flair = (flair - flair.mean()) / (flair.std() + 1e-6)
    return torch.from_numpy(flair)[None, None], label[z]


@pytest.mark.parametrize("name", FAMILY)
def test_forward_on_real_lgg_slice(name: str, lgg_slice: tuple[Tensor, np.ndarray]) -> None:
    image, label = lgg_slice
    assert image.shape == (1, 1, 256, 256) and label.any()
    model = create_model(name, in_channels=1, num_classes=2, dims=2, base_width=4, levels=5).eval()
    with torch.no_grad():
        out = model(image, request=OutputRequest.everything())
    assert out.logits.shape == (1, 2, 256, 256)
    assert torch.isfinite(out.logits).all()
    assert list(out.stages) == list(model.info.stages)


@pytest.mark.parametrize("name", FAMILY)
def test_learns_a_real_lgg_tumour(name: str, lgg_slice: tuple[Tensor, np.ndarray]) -> None:
    """Overfitting one real 64x64 tumour crop in 40 Adam steps: a mis-wired network (a dead skip,
    a stage cut off from the output, a broken fusion) does not get there."""
    image, label = lgg_slice
    ys, xs = np.nonzero(label)
    cy, cx = int(ys.mean()), int(xs.mean())
    crop = (slice(cy - 32, cy + 32), slice(cx - 32, cx + 32))
    x = image[(..., *crop)]
    target = torch.from_numpy(label[crop].astype(np.int64))[None]
    assert 0.05 < target.float().mean() < 0.95
    model = tiny(name, 2, num_classes=2)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(40):
        loss = F.cross_entropy(model(x).logits, target)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    with torch.no_grad():
        predicted = model.eval()(x).logits.argmax(dim=1)
    dice = 2 * ((predicted == 1) & (target == 1)).sum() / ((predicted == 1).sum() + (target == 1).sum())
    assert losses[-1] < 0.5 * losses[0]
    assert dice > 0.9


class FixedLogits(nn.Module):
    """Stands in for a trained stage 1: returns logits made from a real label map."""

    def __init__(self, logits: Tensor) -> None:
        super().__init__()
        self.logits = logits

    def forward(self, x: Tensor) -> Tensor:
        assert x.shape[2:] == self.logits.shape[2:]
        return self.logits


def _one_hot_logits(label: np.ndarray, num_classes: int) -> Tensor:
    one_hot = F.one_hot(torch.from_numpy(label.astype(np.int64)), num_classes).movedim(-1, 0)[None].float()
    return 10.0 * one_hot


@pytest.mark.parametrize("dims", [2, 3])
def test_coarse_to_fine_stage2_sees_only_the_candidate_box(dims: int, shared_data: Path) -> None:
    if dims == 3:
        # TotalSegmentator CT (3 mm): spleen (1) and liver (5) as a 3-class organ problem.
        seg = _array(shared_data / "totalseg" / "example_seg.nii.gz")
        label = np.select([seg == 1, seg == 5], [1, 2], 0).astype(np.uint8)
        spacing, num_classes = (3.0, 3.0, 3.0), 3
    else:
        label = _array(shared_data / "lgg-flair" / "labelsTr" / "TCGA_CS_4941_19960909.nii.gz")[13]
        spacing, num_classes = None, 2
    model = create_model("coarse_to_fine_unet", in_channels=1, num_classes=num_classes, dims=dims,
                         base_width=4, levels=3, spacing=spacing, margin_mm=6.0).eval()
    size = tuple(s // d * d for s, d in zip(label.shape, model.size_divisor))
    label = label[tuple(slice(0, s) for s in size)]
    assert label.any()
    coarse_label = label[tuple(slice(None, None, c) for c in model.coarse)]
    model.stage1 = FixedLogits(_one_hot_logits(np.ascontiguousarray(coarse_label), num_classes))
    seen: list[tuple[int, ...]] = []
    model.stage2.register_forward_hook(lambda _m, inp, _o: seen.append(tuple(inp[0].shape[2:])))

    with torch.no_grad():
        out = model(torch.randn(1, 1, *size), request=OutputRequest(stages=True))
    box = model.last_crop
    assert box is not None
    box_size = tuple(s.stop - s.start for s in box)
    assert seen == [box_size]  # stage 2 ran once, on the crop only
    assert all(b % d == 0 for b, d in zip(box_size, model.fine_divisor))
    assert 0 < model.last_crop_fraction < 1
    assert model.last_crop_fraction == pytest.approx(np.prod(box_size) / np.prod(size))
    # The box holds all of stage 1's foreground (what stage 1 predicted, up-sampled).
    predicted = out.stages["stage1"].argmax(dim=1)[0].numpy() != 0
    inside = np.zeros(size, dtype=bool)
    inside[box] = True
    assert not (predicted & ~inside).any()
    # Outside the box the output is stage 1's logits exactly; inside it is stage 2's.
    outside = torch.from_numpy(~inside)
    assert torch.equal(out.logits[0][:, outside], out.stages["stage1"][0][:, outside])
    assert not torch.equal(out.logits[0][:, ~outside], out.stages["stage1"][0][:, ~outside])
    # The ablation the saving is measured against: stage 2 over the whole input, once.
    model.restrict_stage2 = False
    with torch.no_grad():
        everywhere = model(torch.randn(1, 1, *size))
    assert seen[1:] == [size] and model.last_crop_fraction == 1.0
    assert everywhere.logits.shape == out.logits.shape


def test_coarse_to_fine_loss_supervises_stage2_exactly_where_the_model_ran_it(shared_data: Path) -> None:
    """One stage-2 region for model and loss: in training the class-weighted CE of stage 2 covers the
    model's own box (margin in mm, grown to the size divisor), and nothing outside it."""
    label = _array(shared_data / "lgg-flair" / "labelsTr" / "TCGA_CS_4941_19960909.nii.gz")[13]
    model = create_model("coarse_to_fine_unet", in_channels=1, num_classes=2, dims=2, base_width=4, levels=3,
                         margin_mm=6.0).train()
    size = tuple(s // d * d for s, d in zip(label.shape, model.size_divisor))
    label = np.ascontiguousarray(label[: size[0], : size[1]])
    model.stage1 = FixedLogits(_one_hot_logits(np.ascontiguousarray(label[:: model.coarse[0], :: model.coarse[1]]), 2))
    out = model(torch.randn(1, 1, *size), request=OutputRequest.for_training())
    inside = torch.zeros(1, *size, dtype=torch.bool)
    inside[(slice(None), *model.last_crop)] = True
    assert 0 < inside.float().mean() < 1
    assert torch.equal(stage2_region(out.stages["stage1"], out.stages["stage2"]), inside)
    target = torch.from_numpy(label.astype(np.int64))[None]
    expected = class_frequency_weighted_ce(out.stages["stage1"], target) + class_frequency_weighted_ce(
        out.stages["stage2"], target, roi=inside)
    assert build_loss("class_weighted_ce")(out, target).item() == pytest.approx(expected.item(), rel=1e-6)


def test_coarse_to_fine_skips_stage2_when_stage1_finds_nothing() -> None:
    model = tiny("coarse_to_fine_unet", 2, num_classes=2).eval()
    size = spatial(2, model)
    small = tuple(s // c for s, c in zip(size, model.coarse))
    empty = torch.zeros(1, 2, *small)
    empty[:, 0] = 1.0
    model.stage1 = FixedLogits(empty)
    with torch.no_grad():
        out = model(torch.randn(1, 1, *size))
    assert model.last_crop is None and model.last_crop_fraction == 0.0
    assert (out.logits.argmax(dim=1) == 0).all()


def test_candidate_box_margin_and_edges() -> None:
    mask = torch.zeros(1, 32, 32, dtype=torch.bool)
    mask[0, 1, 20:22] = True
    box = candidate_box(mask, margin=(2, 2), multiple=(8, 8))
    # Axis 0: rows 0..3 after the margin, grown to 8 and kept inside; axis 1: 18..23 grown to 8 both ways.
    assert box == (slice(0, 8), slice(17, 25))
    assert candidate_box(torch.zeros(2, 8, 8, dtype=torch.bool), (1, 1), (4, 4)) is None


def test_foreground_mask_equals_argmax_not_background() -> None:
    logits = torch.randint(-2, 3, (2, 4, 6, 7, 5)).float()  # integer scores: many ties
    assert torch.equal(foreground_mask(logits), logits.argmax(dim=1) != 0)
    mask = torch.zeros(2, 20, 30, 40, dtype=torch.bool)
    mask[0, 3, 5, 7] = True
    mask[1, 10, 25, 30] = True  # the box is the union over the batch
    assert candidate_box(mask, (0, 0, 0), (1, 1, 1)) == (slice(3, 11), slice(5, 26), slice(7, 31))


def test_coarse_to_fine_refuses_export_with_a_clear_error() -> None:
    """Its crop depends on stage 1's values; an export would freeze one box silently."""
    model = tiny("coarse_to_fine_unet", 2).eval()
    with pytest.raises(Exception, match="cannot be exported"):
        torch.export.export(LogitsOnly(model), (torch.randn(1, 1, *spatial(2, model)),))


@pytest.mark.parametrize("dims", [2, 3])
def test_unet_deep_supervision_gives_one_output_per_level_below_full_resolution(dims: int) -> None:
    """nnU-Net's deep supervision: a head on every decoder level but full resolution and the
    bottleneck, only when heads are asked for; the logits are those of the same U-Net without it."""
    plain = tiny("unet", dims, levels=4)
    supervised = tiny("unet", dims, levels=4, deep_supervision=True)
    supervised.load_state_dict(plain.state_dict(), strict=False)  # the same body, extra heads
    x = torch.randn(2, 1, *spatial(dims, supervised, scale=4))
    out = supervised(x, request=OutputRequest.for_training())
    assert sorted(out.aux) == ["level1", "level2"]
    for level, name in ((1, "level1"), (2, "level2")):
        assert out.aux[name].shape == (2, 3, *(s // 2**level for s in x.shape[2:]))
    torch.testing.assert_close(out.logits, plain(x).logits)
    assert supervised(x).aux == {}  # prediction asks for nothing
    assert sorted(n for n, _ in supervised.named_parameters() if "aux_heads" in n) == [
        "aux_heads.level1.bias", "aux_heads.level1.weight", "aux_heads.level2.bias", "aux_heads.level2.weight"
    ]
    with pytest.raises(ModelConfigError, match="deep_supervision must be one of"):
        tiny("unet", dims, deep_supervision="yes")
