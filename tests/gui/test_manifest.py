"""The npe2 manifest validates and every contribution of this plugin resolves to real code."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import npe2

MANIFEST = Path(__file__).parents[2] / "napari_cascade" / "napari.yaml"


def test_npe2_validate_passes() -> None:
    for target in (str(MANIFEST), "napari-cascade"):  # the file, and the installed entry point
        proc = subprocess.run([sys.executable, "-m", "npe2", "validate", target], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "valid" in proc.stdout + proc.stderr


def test_every_command_points_at_code() -> None:
    manifest = npe2.PluginManifest.from_file(MANIFEST)
    contributions = manifest.contributions
    assert {r.command for r in contributions.readers} == {"napari-cascade.get_reader"}
    assert [w.layer_types for w in contributions.writers] == [["labels"]]
    assert {w.display_name for w in contributions.widgets} >= {"Segment", "Compare stages and depths",
                                                                "Correct mask", "Train"}
    assert [s.key for s in contributions.sample_data] == ["sample_scan", "sample_abdominal_mri", "sample_ct"]
    for command in contributions.commands:  # every one imports and is callable: no module may be missing
        module_name, _, attribute = command.python_name.partition(":")
        assert callable(getattr(importlib.import_module(module_name), attribute)), command.python_name
