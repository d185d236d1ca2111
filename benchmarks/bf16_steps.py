"""Training-step time in bf16 autocast against fp32 on this CPU, for the networks the planner plans
(the trainer's calibration times both on the run's first steps and keeps the faster; this prints the
same comparison outside a run, per network, so the docs can say what bf16 buys on a given CPU).

Real inputs: crops of LGG FLAIR slices (2D) and hippocampus MRI crops (3D) with their labels, one
thread, Adam, ``dice_ce``, the outputs a training step asks for (deep-supervision heads included).
Steps alternate bf16 / fp32 after two warm-up steps each; the median of ``--steps`` is printed.

    python benchmarks/bf16_steps.py --steps 6
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from cascadeseg.io import load_labels, load_volume
from cascadeseg.losses import build_loss
from cascadeseg.models import OutputRequest, create_model
from cascadeseg.training.planner import cpu_has_native_bf16

DATA = Path(os.environ.get("CASCADESEG_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def _fit(array: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Crop or zero-pad ``array`` (spatial axes only) to ``shape``, centred."""
    out = np.zeros(shape, dtype=array.dtype)
    src, dst = [], []
    for have, want in zip(array.shape, shape):
        take = min(have, want)
        a, b = (have - take) // 2, (want - take) // 2
        src.append(slice(a, a + take))
        dst.append(slice(b, b + take))
    out[tuple(dst)] = array[tuple(src)]
    return out


def lgg_batch(batch: int = 8, size: int = 96) -> tuple[torch.Tensor, torch.Tensor]:
    case = "TCGA_CS_4941_19960909"
    image = load_volume(DATA / "lgg-flair" / "imagesTr" / f"{case}_0000.nii.gz").array[0]
    labels = load_labels(DATA / "lgg-flair" / "labelsTr" / f"{case}.nii.gz").array
    slices = np.linspace(image.shape[0] // 4, 3 * image.shape[0] // 4, batch).astype(int)
    x = np.stack([_fit(image[z], (size, size)) for z in slices])[:, None]
    y = np.stack([_fit(labels[z], (size, size)) for z in slices])
    return torch.from_numpy(((x - x.mean()) / (x.std() + 1e-6)).astype(np.float32)), torch.from_numpy(y.astype(np.int64))


def hippocampus_batch(batch: int = 2, shape: tuple[int, int, int] = (48, 64, 48)) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = [], []
    for i in (1, 3)[:batch]:
        case = f"hippocampus_{i:03d}"
        image = load_volume(DATA / "hippocampus" / "imagesTr" / f"{case}_0000.nii.gz").array[0]
        xs.append(_fit(image, shape))
        ys.append(_fit(load_labels(DATA / "hippocampus" / "labelsTr" / f"{case}.nii.gz").array, shape))
    x = np.stack(xs)[:, None]
    return torch.from_numpy(((x - x.mean()) / (x.std() + 1e-6)).astype(np.float32)), torch.from_numpy(np.stack(ys).astype(np.int64))


def step_seconds(name: str, dims: int, width: int, x: torch.Tensor, y: torch.Tensor, steps: int) -> tuple[float, float]:
    torch.manual_seed(0)
    classes = int(y.max()) + 1
    model = create_model(name, in_channels=1, num_classes=max(2, classes), dims=dims, base_width=width)
    optimiser = torch.optim.Adam(model.parameters(), 1e-3)
    loss_fn = build_loss("dice_ce")

    def step(bf16: bool) -> float:
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = loss_fn(model(x, request=OutputRequest.for_training()), y)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        return time.perf_counter() - start

    for bf16 in (True, False, True, False):
        step(bf16)
    times: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(steps):
        for bf16 in (True, False):
            times[bf16].append(step(bf16))
    return statistics.median(times[True]), statistics.median(times[False])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6)
    args = parser.parse_args()
    torch.set_num_threads(1)
    lgg, hippo = lgg_batch(), hippocampus_batch()
    rows = [
        ("unet", 2, 8, lgg, "LGG, 8 crops of 96 px (the 20-minute plan)"),
        ("unet", 2, 16, lgg, "LGG, 8 crops of 96 px"),
        ("unet", 3, 8, hippo, "hippocampus, 2 crops of 48x64x48"),
        ("unet_plus_plus", 3, 8, hippo, "hippocampus, 2 crops of 48x64x48 (the shipped model's)"),
    ]
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "unknown CPU")
    print(f"# bf16 against fp32 training steps, one thread, {cpu} (bf16 in hardware, as the planner "
          f"sees it: {cpu_has_native_bf16()}), torch {torch.__version__}\n")
    print("| network | input | bf16 step (s) | fp32 step (s) | fp32 / bf16 |\n|---|---|---:|---:|---:|")
    for name, dims, width, (x, y), what in rows:
        bf16, fp32 = step_seconds(name, dims, width, x, y, args.steps)
        print(f"| {name} {dims}D width {width} | {what} | {bf16:.3f} | {fp32:.3f} | {fp32 / bf16:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
