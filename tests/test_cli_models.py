"""`cascadeseg models --checkpoints`: the installed models from their cards alone (no torch: a
cold start of torch and the model registry made it take 23 s), with each card's validation Dice,
the cascades' included (they have no pruning depth to look it up by)."""

from __future__ import annotations

import json
import subprocess
import sys

from cascadeseg.cli.models import checkpoints_table
from cascadeseg.shipped import checkpoints_dir


def test_listing_reads_cards_without_importing_torch() -> None:
    code = ("import sys; from cascadeseg.cli.main import main; code = main(['models', '--checkpoints']); "
            "print('TORCH' if 'torch' in sys.modules else 'NO TORCH'); sys.exit(code)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip().endswith("NO TORCH"), done.stdout[-300:]
    assert "| lgg_flair_anu_net_2d | shipped |" in done.stdout


def test_every_shipped_model_shows_the_dice_its_card_holds() -> None:
    """The table quotes each card's figure for new patients: its held-out Dice, or, for weights that
    trained on their parent's held-out patients, the parent's figures there (``validation.estimate``)."""
    table = checkpoints_table()
    for folder in sorted(p for p in checkpoints_dir().iterdir() if (p / "model_card.json").is_file()):
        card = json.loads((folder / "model_card.json").read_text())
        per_depth = card["validation"].get("estimate", card["validation"])["dice_per_depth"]
        depth = card.get("recommended_depth")
        expected = per_depth[str(depth)] if depth is not None else next(iter(per_depth.values()))
        row = next(line for line in table.splitlines() if line.startswith(f"| {folder.name} |"))
        assert f"| {float(expected):.3f} |" in row, row
