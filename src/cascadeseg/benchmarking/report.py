"""The benchmark report: JSON and Markdown, stamped with the machine and its load."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .._atomic import write_text


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub-flavoured Markdown table; cells are converted with ``str``."""
    lines = [tuple(header), tuple("---" for _ in header), *(tuple(str(c) for c in r) for r in rows)]
    return "\n".join("| " + " | ".join(line) + " |" for line in lines)


def _meta(device: Any, args: argparse.Namespace, widths: list[int]) -> dict[str, Any]:
    import torch

    from .. import __version__

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    return {
        "device": str(device),
        "device_name": name,
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "project_version": __version__,
        "quick": args.quick,
        "widths": widths,
        "levels": args.levels,
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        # Other processes competing for the cores make every figure slower: recorded, not hidden.
        "load_average_at_start": _load_average(),
        "command": " ".join(["cascadeseg", *sys.argv[1:]])
        if Path(sys.argv[0]).name == "cascadeseg"
        else "cascadeseg bench (called from Python)",
    }


def _load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:  # not available on this platform
        return None


def write_report(report: dict[str, Any], folder: Path) -> tuple[Path, Path]:
    """JSON + Markdown named by device and time (never replacing an earlier report)."""
    meta = report["meta"]
    tag = f"{meta['device'].replace(':', '')}_{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
    json_path, md_path = folder / f"inference_{tag}.json", folder / f"inference_{tag}.md"
    write_text(json_path, json.dumps(report, indent=2) + "\n")
    write_text(md_path, render_markdown(report))
    return json_path, md_path


def _f(value: Any, fmt: str = ".2f") -> str:
    return "-" if value is None else format(value, fmt)


# The 2D throughput tables (the models, the size-matched U-Nets, the MONAI peers) end in the same
# five columns, measured the same way.
_SLICE_COLUMNS = ("batch", "slices/s", "GFLOPs/slice", "GFLOP/s", "peak MiB")


def _slice_cells(row: dict[str, Any]) -> tuple[object, ...]:
    """A 2D throughput row's cells for :data:`_SLICE_COLUMNS`."""
    return (
        row["batch"],
        _f(row["slices_per_s"]),
        _f(row["gflops_per_slice"], ".3f"),
        _f(row["achieved_gflop_s"], ".1f"),
        _f(row["peak_mib"], ".0f"),
    )


def _table_section(title: str, header: Sequence[str], rows: Sequence[Sequence[object]], note: str = "") -> list[str]:
    """A ``###`` heading, an optional paragraph, the table and a blank line: the report's sections."""
    return [f"### {title}", "", *([note, ""] if note else []), markdown_table(header, rows), ""]


def render_markdown(report: dict[str, Any]) -> str:
    meta = report["meta"]
    lines = [
        f"# Inference benchmark — {meta['device']} ({meta['device_name']})",
        "",
        f"torch {meta['torch']}, {meta['threads']} threads, {meta['cpu_count']} CPUs, "
        f"napari-cascade {meta['project_version']}, {meta['date_utc']} UTC, "
        f"{'quick run' if meta['quick'] else 'full run'}, levels {meta['levels']}; "
        f"load average (1/5/15 min) {meta.get('load_average_at_start')} at the start, "
        f"{meta.get('load_average_at_end')} at the end.",
        "",
        f"Command: `{meta['command']}`",
        "",
    ]
    for width, section in report.get("widths", {}).items():
        if not any(section.get(k) for k in ("2d", "3d", "peers", "overhead", "e2e")):
            continue  # every section skipped (e.g. a --memory-only run)
        lines += [f"## Base width {width}", ""]
        if section.get("2d"):
            lines += _table_section(
                "2D, 256x256 (slices/s; GFLOP/s = slices/s x GFLOPs per slice)",
                ("model", "depth", *_SLICE_COLUMNS),
                [(r["model"], r["depth"] or "full", *_slice_cells(r)) for r in section["2d"]],
            )
        if section.get("2d_unet_levels"):
            lines += _table_section(
                "Size-matched references: U-Net with fewer levels, 2D 256x256",
                ("model", "levels", *_SLICE_COLUMNS),
                [(r["model"], r["levels"], *_slice_cells(r)) for r in section["2d_unet_levels"]],
                note="Depth d of UNet++ / ANU-Net / UNet# runs d + 1 resolution levels; these U-Nets are "
                "their like-sized references (the last targets row).",
            )
        if section.get("3d"):
            lines += _table_section(
                "3D patches, batch 1",
                ("model", "depth", "patch", "patches/s", "GFLOPs/patch", "GFLOP/s", "peak MiB"),
                [
                    (
                        r["model"],
                        r["depth"] or "full",
                        "x".join(map(str, r["patch"])),
                        _f(r["patches_per_s"], ".3f"),
                        _f(r["gflops_per_patch"], ".1f"),
                        _f(r["achieved_gflop_s"], ".1f"),
                        _f(r["peak_mib"], ".0f"),
                    )
                    for r in section["3d"]
                ],
            )
        if section.get("peers"):
            lines += _table_section(
                "MONAI peers (same widths, plain loop), 2D 256x256",
                ("model", "params M", *_SLICE_COLUMNS),
                [(r["model"], _f(r["params_m"], ".3f"), *_slice_cells(r)) for r in section["peers"]],
            )
        if section.get("overhead"):
            o = section["overhead"]
            lines += [
                f"### Engine overhead: `Predictor.predict` {o['engine_s']:.3f} s vs bare batched forward "
                f"{o['bare_forward_s']:.3f} s on {o['case']} ({o['slices']} slices, batch {o['batch']}): "
                f"**{o['overhead']:+.1%}**",
                "",
            ]
        if section.get("e2e"):
            lines += _table_section(
                "End to end on a real scan (load, preprocess, predict, save)",
                ("model", "depth", "seconds"),
                [(r["model"], r["depth"] or "full", _f(r["seconds"], ".3f")) for r in section["e2e"]],
            )
        if section.get("targets"):
            rows = []
            for name, t in section["targets"].items():
                value = t["value"]
                shown = (
                    ", ".join(f"{k} {v:.2f}" for k, v in value.items()) if isinstance(value, dict) else f"{value:.3f}"
                )
                verdict = "PASS" if t["ok"] else "FAIL"
                rows.append(
                    (name, shown, f"{verdict} (context, not an issue target)" if t.get("informational") else verdict)
                )
            lines += _table_section("Targets", ("target", "measured", "result"), rows)
    if "memory_512x512x600" in report:
        m = report["memory_512x512x600"]
        partial = m.get("slices_done", m["shape_zyx"][0]) < m["shape_zyx"][0]
        lines += [
            "## 512x512x600 int16 CT in 2D (fresh process)",
            "",
            (
                f"Stopped after {m['slices_done']} slices (--memory-batches); the float copy and the label "
                f"map were allocated before the first batch, the final file write is not included. "
                if partial
                else ""
            )
            + f"{m['model']} on {m['device']}, {m['threads']} threads: {m['seconds']:.1f} s "
            f"({m['slices_per_s']:.1f} slices/s); peak resident memory **{m['peak_rss_mib']:.0f} MiB** "
            f"(volume {m['volume_mib']:.0f} MiB, process before the volume {m['before_volume_mib']:.0f} MiB; "
            f"target < 4096 MiB: {'PASS' if m['ok'] else 'FAIL'}); labels {m['label_dtype']}.",
            "",
        ]
    return "\n".join(lines)
