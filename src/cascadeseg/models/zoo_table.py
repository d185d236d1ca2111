"""The measured model-zoo table: parameters and GFLOPs of every model per pruning depth, next to the
papers' figures.

``python -m cascadeseg.models.zoo_table`` prints the Markdown table committed in
``docs/model_zoo.md``; the CLI (``cascadeseg models --table``) calls :func:`zoo_rows` and
:func:`render_markdown`.

How the numbers are measured (nothing is computed by hand):

* every model is built at paper width (``base_width=32``, ``levels=5``, batch norm, one input
  channel, two classes) on PyTorch's ``meta`` device, so no memory is allocated and nothing is
  computed: only shapes propagate;
* one eval-mode forward at the given depth runs under :class:`torch.utils.flop_counter.FlopCounterMode`
  (torch's own counter: 2 FLOPs per multiply-accumulate of convolutions and matrix products;
  pooling, interpolation, norms and activations are not counted);
* the parameters of a depth are those of the modules that actually ran in that forward (forward
  hooks), so a pruned depth counts only its sub-network, exactly what it executes.

Inputs: ``1x256x256`` (2D) and ``1x128x128x128`` (3D), batch 1.

Each model is measured with its default options and, where the default departs from what a paper
prints, once more as :data:`PAPER_VARIANTS` builds it: the options that read the paper literally
(e.g. ANU-Net's ``merge="sum"``, which is what reproduces its Table 6). The papers' parameter
counts are compared with both rows.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..errors import CascadeSegError
from .registry import create_model, model_class, model_names

INPUT_2D = (1, 1, 256, 256)
INPUT_3D = (1, 1, 128, 128, 128)

# Parameters (millions) the papers report at width 32, 5 levels, keyed (model, depth) with depth
# None for the full model. UNet# L1..L4 and the UNet / UNet2+ / UNet 3+ baselines: paper 004
# (Sec. 3.4.3, Table 1); ANU-Net L1..L4: paper 003 (Table 6).
PAPER_PARAMS_M: dict[tuple[str, int | None], tuple[float, str]] = {
    ("unet_sharp", 1): (0.10, "004 Sec. 3.4.3"),
    ("unet_sharp", 2): (0.56, "004 Sec. 3.4.3"),
    ("unet_sharp", 3): (2.53, "004 Sec. 3.4.3"),
    ("unet_sharp", 4): (9.71, "004 Sec. 3.4.3, Table 1"),
    ("anu_net", 1): (0.1038, "003 Table 6"),
    ("anu_net", 2): (0.5134, "003 Table 6"),
    ("anu_net", 3): (2.1918, "003 Table 6"),
    ("anu_net", 4): (8.9506, "003 Table 6"),
    ("unet", None): (7.85, "004 Table 1"),
    ("unet_plus_plus", 4): (9.16, "004 Table 1 (UNet2+)"),
    ("unet3plus", None): (9.79, "004 Table 1"),
}


# The options that read each paper literally where the default does not (see each model's docstring
# for why the default differs): these rows are the ones to compare with the papers' tables.
PAPER_VARIANTS: dict[str, dict[str, Any]] = {
    "unet": {"upsample": "interp"},  # paper 004's U-Net baseline is bilinear (7.85 M)
    "anu_net": {"merge": "sum"},  # Eq. 4's sum over the gated same-level features (Table 6)
    # Eq. 1's f(u^n(A)), and full-scale links into the inner nodes and the output only (the one
    # layout that reproduces Table 1's 9.71 M with L1..L3 unchanged); its defaults already read the
    # paper's CGMs and 32-channel links.
    "unet_sharp": {"link_order": "upsample_first", "link_targets": "inner_and_output"},
    "inner_cascaded_u2net": {"rsu_heights": "paper"},  # paper 000: L = 7
    "coarse_to_fine_unet": {"coarse_factor": 1},  # paper 002 says nothing of a coarser stage-1 grid
}


@dataclass(frozen=True)
class Measurement:
    params_m: float | None
    gflops: float | None
    error: str | None = None


@dataclass(frozen=True)
class ZooRow:
    """One model at one pruning depth (``depth=None``: a model without pruning)."""

    model: str
    depth: int | None
    d2: Measurement
    d3: Measurement
    paper_params_m: float | None
    paper_source: str | None
    options: tuple[tuple[str, Any], ...] = ()

    @property
    def label(self) -> str:
        """The model name, with the non-default options of a paper variant: ``anu_net [merge=sum]``."""
        if not self.options:
            return self.model
        return f"{self.model} [{', '.join(f'{k}={v}' for k, v in self.options)}]"

    @property
    def difference(self) -> float | None:
        """Relative difference of the measured 2D parameters to the paper's, or ``None``."""
        if self.paper_params_m is None or self.d2.params_m is None:
            return None
        return self.d2.params_m / self.paper_params_m - 1.0


def measure(model: nn.Module, input_shape: Sequence[int], depth: int | None) -> Measurement:
    """Parameters that run and FLOPs of one eval forward of ``model`` (on the meta device)."""
    ran: set[int] = set()
    hooks = [m.register_forward_hook(lambda mod, _i, _o: ran.add(id(mod))) for m in model.modules()]
    counter = FlopCounterMode(display=False)
    try:
        with torch.no_grad(), counter:
            model(torch.empty(*input_shape, device="meta"), depth=depth)
    finally:
        for hook in hooks:
            hook.remove()
    params = sum(p.numel() for m in model.modules() if id(m) in ran for p in m.parameters(recurse=False))
    return Measurement(params_m=params / 1e6, gflops=counter.get_total_flops() / 1e9)


def _measure_model(
    name: str, dims: int, depth: int | None, input_shape: Sequence[int], options: dict[str, Any] | None = None
) -> Measurement:
    if dims not in model_class(name).info.dims:
        return Measurement(None, None, f"no {dims}D variant")
    try:
        with torch.device("meta"):
            model = create_model(
                name, in_channels=1, num_classes=2, dims=dims, base_width=32, levels=5, **(options or {})
            ).eval()
        return measure(model, input_shape, depth)
    except (CascadeSegError, NotImplementedError, RuntimeError, TypeError, ValueError) as exc:
        # A model whose forward needs real values (e.g. a data-dependent crop) cannot run on meta.
        return Measurement(None, None, f"{type(exc).__name__}: {str(exc).splitlines()[0][:80]}")


def zoo_rows(names: Sequence[str] | None = None, variants: bool = True) -> list[ZooRow]:
    """Measure every model (or ``names``) at each of its pruning depths in 2D and 3D, with its
    default options and (``variants``) as its paper variant (:data:`PAPER_VARIANTS`)."""
    rows: list[ZooRow] = []
    for name in names if names is not None else model_names():
        depths: Sequence[int | None] = model_class(name).info.pruning_depths or (None,)
        builds: list[dict[str, Any]] = [{}]
        if variants and name in PAPER_VARIANTS:
            builds.append(PAPER_VARIANTS[name])
        for options in builds:
            for depth in depths:
                paper = PAPER_PARAMS_M.get((name, depth))
                rows.append(
                    ZooRow(
                        model=name,
                        depth=depth,
                        d2=_measure_model(name, 2, depth, INPUT_2D, options),
                        d3=_measure_model(name, 3, depth, INPUT_3D, options),
                        paper_params_m=paper[0] if paper else None,
                        paper_source=paper[1] if paper else None,
                        options=tuple(options.items()),
                    )
                )
    return rows


def _cell(value: float | None, fmt: str) -> str:
    return "–" if value is None else format(value, fmt)


def render_markdown(rows: Sequence[ZooRow]) -> str:
    """The table as GitHub Markdown, one line per model and depth."""
    lines = [
        "| model | depth | params 2D (M) | GFLOPs 2D @1x256x256 | params 3D (M) | GFLOPs 3D @1x128³ "
        "| paper params (M) | 2D vs paper | source |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        diff = row.difference
        cells = [
            row.label,
            "full" if row.depth is None else f"L{row.depth}",
            _cell(row.d2.params_m, ".3f") if row.d2.error is None else f"n/a ({row.d2.error})",
            _cell(row.d2.gflops, ".2f"),
            _cell(row.d3.params_m, ".3f") if row.d3.error is None else f"n/a ({row.d3.error})",
            _cell(row.d3.gflops, ".1f"),
            _cell(row.paper_params_m, ".4g"),
            "–" if diff is None else f"{diff:+.1%}",
            row.paper_source or "",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cascadeseg.models.zoo_table", description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", help="model names (default: all)")
    parser.add_argument("--no-variants", action="store_true", help="default options only, no paper-variant rows")
    args = parser.parse_args(argv)
    print(render_markdown(zoo_rows(args.models or None, variants=not args.no_variants)), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
