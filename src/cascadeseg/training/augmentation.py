"""On-the-fly augmentation of whole batches on the training device (the papers' set).

Flips, 90-degree rotations, small rotations, zoom and a smooth elastic deformation are composed
into ONE sampling grid per sample and applied with a single ``grid_sample`` per batch (bilinear
for the image, nearest for the labels), so the cost is one resampling whatever is enabled, there
is no Python loop over voxels or samples, and it runs on the GPU when training does.

The elastic field is the papers' B-spline deformation: random coefficients on a coarse uniform
control grid, evaluated with the cubic B-spline basis at every voxel (separably: one small basis
matrix per axis, so 2D and 3D cost a few matrix products, not a per-voxel loop). The control grid
has ``elastic_control_points`` knots across the image plus one beyond each border, as SimpleITK's
``BSplineTransform`` lays out its mesh, so the field is smooth up to the edges.
Rotations are in the plane normal to the slice axis (array axes Y, X), because the slice axis
of clinical scans is usually much coarser than the plane.

Intensity scaling and shifting are drawn per sample and channel; so are, each with its own
probability, what makes scans from another scanner look different: gamma on the sample's own
intensity range, contrast around its mean, Gaussian noise, and a smooth multiplicative bias field
(MR coil inhomogeneity, built on the same cubic B-spline basis as the elastic field). One, off by
default, changes the patient rather than the scanner: the labelled structure's contrast to the
tissue around it (a lesion that barely stands out). Everything is
drawn from a ``torch.Generator`` the trainer seeds per step, so a run is reproducible.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ..losses.targets import dilate
from .config import AugmentationConfig


def _uniform(shape: tuple[int, ...], low: float, high: float, gen: torch.Generator, device: torch.device) -> Tensor:
    return torch.rand(shape, generator=gen, device=device) * (high - low) + low


def mirrored_axes(cfg: AugmentationConfig, dims: int) -> list[int]:
    """The spatial axes :func:`augment_batch` may mirror (2D: y, x = 0, 1; 3D: z, y, x, of which
    y, x = 1, 2): the card records them so that test-time mirroring flips nothing else."""
    if not (cfg.enabled and cfg.flip):
        return []
    return [0, 1] if dims == 2 else [1, 2]


def augment_batch(
    images: Tensor,
    labels: Tensor,
    cfg: AugmentationConfig,
    gen: torch.Generator,
    channel_slices: int = 1,
    num_classes: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Augment ``images`` (B, C, *S) and ``labels`` (B, *S) with the same spatial transform per
    sample; ``S`` is (H, W) or (D, H, W). ``gen`` must live on the images' device.
    ``channel_slices``: a 2.5D sample's channels are ``C / channel_slices`` scan channels of
    ``channel_slices`` neighbouring slices each; the intensity changes are drawn per scan channel
    and applied to its slices together (a scanner changes the whole volume, not one slice).
    ``num_classes``: labels at or above it carry a second mask on top of the class (the trainer's
    body mask, ``class + num_classes``); the foreground is then ``labels % num_classes > 0``."""
    if not cfg.enabled:
        return images, labels
    dims = images.ndim - 2
    b, device = images.shape[0], images.device
    spatial = images.shape[2:]
    matrix = _plane_matrix(b, spatial, cfg, gen, device)  # (B, 2, 2) acting on (x, y) of the plane
    theta = torch.zeros((b, dims, dims + 1), device=device)
    theta[:, :2, :2] = matrix
    if dims == 3:
        theta[:, 2, 2] = 1.0  # the slice axis is not flipped: anatomy is not top-bottom symmetric
    grid = F.affine_grid(theta, [b, 1, *spatial], align_corners=False)
    if cfg.elastic_probability > 0 and cfg.elastic_magnitude > 0:
        grid = grid + _elastic_field(b, spatial, cfg, gen, device)
    # Outside the crop is the project's one pad value (0, see inference.predictor.PAD_VALUE).
    images = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    labels = F.grid_sample(labels[:, None].float(), grid, mode="nearest", padding_mode="zeros", align_corners=False)
    labels = labels[:, 0].round().long()
    # Before the scanner's changes: a dim lesion is a property of the patient, the scanner comes after.
    images = _foreground_contrast(images, labels, cfg, gen, channel_slices, num_classes)
    if channel_slices > 1 and dims == 2:
        grouped = images.reshape(b, images.shape[1] // channel_slices, channel_slices, *spatial)
        images = _intensity(grouped, cfg, gen).reshape(images.shape)
    else:
        images = _intensity(images, cfg, gen)
    return images, labels


def _plane_matrix(
    b: int, spatial: torch.Size, cfg: AugmentationConfig, gen: torch.Generator, device: torch.device
) -> Tensor:
    """Per-sample 2x2 map of normalised plane coordinates (x, y): flips, rot90, rotation, zoom.

    Built in pixel units and conjugated by the normalisation so that rotations stay rotations on
    non-square planes (normalised coordinates stretch x and y differently)."""
    h, w = int(spatial[-2]), int(spatial[-1])
    angle = torch.zeros(b, device=device)
    if cfg.rot90 and h == w:  # a quarter turn of a non-square plane would not fit the grid
        angle = angle + torch.randint(0, 4, (b,), generator=gen, device=device).float() * (math.pi / 2)
    apply = torch.rand(b, generator=gen, device=device) < cfg.spatial_probability
    if cfg.rotate_degrees > 0:
        small = _uniform((b,), -cfg.rotate_degrees, cfg.rotate_degrees, gen, device) * (math.pi / 180)
        angle = angle + torch.where(apply, small, torch.zeros_like(small))
    zoom = _uniform((b,), cfg.scale_range[0], cfg.scale_range[1], gen, device)
    zoom = torch.where(apply, zoom, torch.ones_like(zoom))
    cos, sin = torch.cos(angle), torch.sin(angle)
    rot = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)  # (B, 2, 2)
    flips = torch.ones((b, 2), device=device)
    if cfg.flip:
        flips = torch.where(torch.rand((b, 2), generator=gen, device=device) < 0.5, -1.0, 1.0)
    pixel = rot * flips[:, None, :] * zoom[:, None, None]
    half = torch.tensor([w / 2.0, h / 2.0], device=device)
    return pixel * half[None, None, :] / half[None, :, None]  # D^-1 R D with D = diag(w/2, h/2)


def cubic_bspline(t: Tensor) -> Tensor:
    """The cubic B-spline basis function beta3(t): 2/3 - t^2 + |t|^3/2 on |t| < 1,
    (2 - |t|)^3 / 6 on 1 <= |t| < 2, zero beyond."""
    a = t.abs()
    inner = 2.0 / 3.0 - a**2 + a**3 / 2.0
    outer = (2.0 - a).clamp(min=0.0) ** 3 / 6.0
    return torch.where(a < 1.0, inner, outer)


def bspline_basis(size: int, knots: int, device: torch.device | None = None) -> Tensor:
    """``(size, knots + 2)`` matrix: voxel ``i`` of an axis of ``size`` voxels against the
    coefficients at knot positions ``-1 .. knots`` (``knots`` knots spanning the axis end to end,
    one extra beyond each end)."""
    u = torch.linspace(0.0, float(knots - 1), size, device=device) if size > 1 else torch.zeros(1, device=device)
    k = torch.arange(-1, knots + 1, device=device, dtype=u.dtype)
    return cubic_bspline(u[:, None] - k[None, :])


# sqrt(sum of beta3(j)^2 over the integers): the standard deviation of a B-spline field at a knot
# per unit coefficient standard deviation, per axis. Dividing by it keeps `elastic_magnitude` the
# displacement's standard deviation, as it was with interpolated control points.
_BSPLINE_GAIN = math.sqrt((2.0 / 3.0) ** 2 + 2 * (1.0 / 6.0) ** 2)


def _elastic_field(
    b: int, spatial: torch.Size, cfg: AugmentationConfig, gen: torch.Generator, device: torch.device
) -> Tensor:
    """A smooth B-spline displacement field (B, *S, dims) in normalised units, zero for samples
    not drawn."""
    dims = len(spatial)
    n = max(2, int(cfg.elastic_control_points))
    # Normalised coordinates span 2 per axis, so a magnitude of 1 image size is 2 units.
    scale = 2 * cfg.elastic_magnitude / _BSPLINE_GAIN**dims
    coefficients = torch.randn((b, dims, *([n + 2] * dims)), generator=gen, device=device) * scale
    chosen = torch.rand(b, generator=gen, device=device) < cfg.elastic_probability
    coefficients = coefficients * chosen.float().view(b, *([1] * (dims + 1)))
    bases = [bspline_basis(int(s), n, device) for s in spatial]
    if dims == 3:
        coefficients[:, 2] = 0  # grid_sample's third component moves along the (coarse) slice axis
        field = torch.einsum("bcpqr,zp,yq,xr->bczyx", coefficients, *bases)
    else:
        field = torch.einsum("bcpq,yp,xq->bcyx", coefficients, *bases)
    return field.movedim(1, -1)


def _intensity(images: Tensor, cfg: AugmentationConfig, gen: torch.Generator) -> Tensor:
    b, c = images.shape[:2]
    view = (b, c) + (1,) * (images.ndim - 2)
    device = images.device
    images = _bias_field(images, cfg, gen)
    images = _gamma(images, cfg, gen)
    if cfg.contrast_probability > 0:
        factor = _uniform((b, c), cfg.contrast_range[0], cfg.contrast_range[1], gen, device).view(view)
        chosen = (torch.rand((b, c), generator=gen, device=device) < cfg.contrast_probability).view(view)
        mean = images.mean(dim=tuple(range(2, images.ndim)), keepdim=True)
        images = torch.where(chosen, (images - mean) * factor + mean, images)
    if cfg.noise_probability > 0:
        std = _uniform((b, 1), 0.0, cfg.noise_std, gen, device).view((b, 1) + (1,) * (images.ndim - 2))
        chosen = (torch.rand((b,), generator=gen, device=device) < cfg.noise_probability).view(
            (b, 1) + (1,) * (images.ndim - 2)
        )
        noise = torch.randn(images.shape, generator=gen, device=device) * std
        images = torch.where(chosen, images + noise, images)
    scale = _uniform((b, c), cfg.intensity_scale[0], cfg.intensity_scale[1], gen, device).view(view)
    shift = _uniform((b, c), -cfg.intensity_shift, cfg.intensity_shift, gen, device).view(view)
    return images * scale + shift


def _foreground_contrast(
    images: Tensor,
    labels: Tensor,
    cfg: AugmentationConfig,
    gen: torch.Generator,
    channel_slices: int,
    num_classes: int | None,
) -> Tensor:
    """Make the labelled structure stand out less (or as much): ``x -> m + s (x - m)`` on the
    foreground, ``m`` the mean of a ring of ``foreground_contrast_margin`` voxels around it (the
    tissue it is seen against), ``s`` drawn per sample and scan channel from
    ``foreground_contrast_range``. The edge is averaged over 3 voxels so that no step at the
    label's border tells the network where the structure is. Samples without foreground, or
    whose foreground fills the ring's whole neighbourhood, are left alone."""
    if cfg.foreground_contrast_probability <= 0:
        return images
    b, c = images.shape[:2]
    dims = images.ndim - 2
    device = images.device
    classes = labels % num_classes if num_classes else labels
    inside = classes > 0
    foreground = inside.to(images.dtype)[:, None]  # (B, 1, *S)
    avg_pool = F.avg_pool2d if dims == 2 else F.avg_pool3d
    ring = (dilate(inside, int(cfg.foreground_contrast_margin)) & ~inside).to(images.dtype)[:, None]
    ring_voxels = ring.flatten(2).sum(2)  # (B, 1)
    view = (b, c) + (1,) * dims
    ring_mean = ((images * ring).flatten(2).sum(2) / ring_voxels.clamp(min=1)).view(view)
    edge = avg_pool(foreground, 3, 1, 1, count_include_pad=False)
    low, high = cfg.foreground_contrast_range
    factor = _uniform((b, c // channel_slices), low, high, gen, device).repeat_interleave(channel_slices, dim=1)
    chosen = torch.rand((b,), generator=gen, device=device) < cfg.foreground_contrast_probability
    chosen = chosen & (ring_voxels[:, 0] > 0)
    factor = torch.where(chosen[:, None], factor, torch.ones_like(factor)).view(view)
    return images - edge * (1 - factor) * (images - ring_mean)


def _gamma(images: Tensor, cfg: AugmentationConfig, gen: torch.Generator) -> Tensor:
    """``x -> lo + (hi - lo) * ((x - lo) / (hi - lo)) ** gamma`` on each sample's own range (as
    nnU-Net: a normalised scan has negative values, gamma needs [0, 1]); gamma < 1 or > 1 equally
    likely."""
    if cfg.gamma_probability <= 0:
        return images
    b, c = images.shape[:2]
    view = (b, c) + (1,) * (images.ndim - 2)
    device = images.device
    low, high = cfg.gamma_range
    below = _uniform((b, c), low, 1.0, gen, device)
    above = _uniform((b, c), 1.0, high, gen, device)
    gamma = torch.where(torch.rand((b, c), generator=gen, device=device) < 0.5, below, above).view(view)
    chosen = (torch.rand((b, c), generator=gen, device=device) < cfg.gamma_probability).view(view)
    flat = images.flatten(2)
    lo = flat.min(dim=2).values.view(view)
    hi = flat.max(dim=2).values.view(view)
    span = (hi - lo).clamp(min=1e-6)
    mapped = lo + span * ((images - lo) / span).clamp(0, 1) ** gamma
    return torch.where(chosen, mapped, images)


def _bias_field(images: Tensor, cfg: AugmentationConfig, gen: torch.Generator) -> Tensor:
    """Multiply by ``exp(f)``, ``f`` a smooth cubic B-spline field of 4 control points per axis
    with standard deviation ``bias_magnitude`` (slowly varying gain, as a receive coil gives),
    on the sample's values relative to its minimum so the background stays where it is."""
    if cfg.bias_probability <= 0:
        return images
    b, c = images.shape[:2]
    spatial = images.shape[2:]
    device = images.device
    dims = len(spatial)
    knots = 4
    coefficients = torch.randn((b, c, *([knots + 2] * dims)), generator=gen, device=device)
    coefficients = coefficients * (cfg.bias_magnitude / _BSPLINE_GAIN**dims)
    chosen = torch.rand((b,), generator=gen, device=device) < cfg.bias_probability
    coefficients = coefficients * chosen.float().view(b, *([1] * (dims + 1)))
    bases = [bspline_basis(int(s), knots, device) for s in spatial]
    if dims == 3:
        field = torch.einsum("bcpqr,zp,yq,xr->bczyx", coefficients, *bases)
    else:
        field = torch.einsum("bcpq,yp,xq->bcyx", coefficients, *bases)
    low = images.flatten(2).min(dim=2).values.view((b, c) + (1,) * dims)
    return low + (images - low) * torch.exp(field)
