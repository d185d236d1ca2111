"""DDP: two CPU processes with Gloo under torchrun train on a tiny real LGG subset and end with
identical weights; only rank 0 writes the run folder."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torch
from safetensors.torch import load_file

WORKER = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    import numpy as np
    import torch
    from safetensors.torch import save_file
    from cascadeseg.io import load_labels, load_volume
    from cascadeseg.training.config import TrainConfig
    from cascadeseg.training.trainer import train

    data, out = Path(sys.argv[1]), Path(sys.argv[2])
    pairs = []
    for case in ["TCGA_CS_4941_19960909", "TCGA_CS_4943_20000902", "TCGA_DU_6404_19850629"]:
        image = load_volume(data / "imagesTr" / f"{case}_0000.nii.gz")
        labels = load_labels(data / "labelsTr" / f"{case}.nii.gz", reference=image)
        z = np.flatnonzero(labels.array.any(axis=(1, 2)))
        lo = max(0, int(z.mean()) - 5)
        pairs.append((image.with_array(image.array[:, lo:lo + 10].copy()), labels.with_array(labels.array[lo:lo + 10].copy())))
    config = TrainConfig(
        data=pairs, run_dir=str(out / "run"), model="unet", model_options={"base_width": 4, "levels": 3},
        inplane_size=64, batch_size=2, epochs=2, steps_per_epoch=3, val_fraction=0.34, seed=0, threads=1,
        minutes=30,  # the cosine follows the clock: the ranks must agree on it or their weights drift
    )
    steps = []
    result = train(config, callbacks=type("CB", (), {"on_step": lambda self, i: steps.append(i.loss)})())
    rank = int(os.environ["RANK"])
    state = {k: v.contiguous() for k, v in result.model.state_dict().items()}
    save_file(state, str(out / f"rank{rank}.safetensors"))
    (out / f"rank{rank}.txt").write_text(f"{result.steps} {len(steps)}")
    """
)


def test_two_gloo_ranks_end_with_identical_weights(shared_data: Path, tmp_path: Path) -> None:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
         str(shared_data / "lgg-flair"), str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rank0 = load_file(str(tmp_path / "rank0.safetensors"))
    rank1 = load_file(str(tmp_path / "rank1.safetensors"))
    assert rank0.keys() == rank1.keys()
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key
    # Both ranks stepped 6 times (2 epochs x 3 steps), only rank 0 reported and wrote.
    assert (tmp_path / "rank0.txt").read_text() == "6 6"
    assert (tmp_path / "rank1.txt").read_text() == "6 0"
    run = tmp_path / "run"
    assert {"config.json", "split.json", "log.csv", "last", "best"} <= {p.name for p in run.iterdir()}
    # What rank 0 saved as last/ is what both ranks hold.
    last = load_file(str(run / "last" / "model.safetensors"))
    assert all(torch.equal(last[k], rank0[k]) for k in last)
