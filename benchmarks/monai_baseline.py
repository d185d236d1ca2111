"""The MONAI baseline of the one-click race (issue 14): a tuned MONAI ``UNet`` on 2D slices.

What a careful MONAI user writes for the LGG FLAIR task in an afternoon: MONAI's ``UNet``
(channels 16-256, strides 2, two residual units: 1.63 M parameters), slices resampled to 128 px,
intensities z-scored over the non-zero voxels (MONAI's ``NormalizeIntensity(nonzero=True)``),
batches of 16 slices with half of them holding tumour, random flips and small rotations,
``DiceCELoss`` (softmax, one-hot), Adam 1e-3 with a cosine decay over the time budget. It trains for
exactly ``--minutes`` of wall-clock time and saves its weights; ``predict`` segments scans slice by
slice and zooms the logits back to each scan's grid before the argmax.

    python benchmarks/monai_baseline.py train DATA --minutes 20 --out runs/race/monai
    python benchmarks/monai_baseline.py predict runs/race/monai IMAGE ... -o runs/race/monai_pred
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

SIZE = 128
BATCH = 16


def _network() -> torch.nn.Module:
    from monai.networks.nets import UNet

    return UNet(spatial_dims=2, in_channels=1, out_channels=2, channels=(16, 32, 64, 128, 256),
                strides=(2, 2, 2, 2), num_res_units=2)


def _normalise(volume: np.ndarray) -> np.ndarray:
    from monai.transforms import NormalizeIntensity

    return np.asarray(NormalizeIntensity(nonzero=True)(volume.astype(np.float32)))


def _slices(image: np.ndarray) -> torch.Tensor:
    """(Z, Y, X) -> (Z, 1, SIZE, SIZE), area-averaged."""
    t = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[:, None]
    return F.interpolate(t, size=(SIZE, SIZE), mode="area")


def train(data: Path, minutes: float, out: Path, seed: int = 0) -> None:
    from monai.losses import DiceCELoss

    from cascadeseg.io import load_dataset

    t_start = time.perf_counter()
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for ref in load_dataset(data):
        image, lab = ref.load()
        images.append(_slices(_normalise(image.array[0])))
        labels.append((_slices((lab.array > 0).astype(np.float32)) > 0.5).long()[:, 0])
    x_all, y_all = torch.cat(images), torch.cat(labels)
    tumour = torch.nonzero(y_all.flatten(1).any(1)).flatten().numpy()
    net = _network()
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    budget = minutes * 60.0
    steps = 0
    net.train()
    while True:
        elapsed = time.perf_counter() - t_start
        if elapsed >= budget - 5.0:  # leave the time to save
            break
        for group in opt.param_groups:
            group["lr"] = 1e-3 * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, elapsed / budget))))
        half = BATCH // 2
        index = np.concatenate([rng.choice(tumour, half), rng.integers(0, len(x_all), BATCH - half)])
        x, y = x_all[index].clone(), y_all[index].clone()
        flip = torch.from_numpy(rng.random(BATCH) < 0.5)
        x[flip], y[flip] = x[flip].flip(-1), y[flip].flip(-1)
        angle = torch.from_numpy(rng.uniform(-0.26, 0.26, BATCH)).float()  # +-15 degrees
        theta = torch.zeros(BATCH, 2, 3)
        theta[:, 0, 0], theta[:, 0, 1] = torch.cos(angle), -torch.sin(angle)
        theta[:, 1, 0], theta[:, 1, 1] = torch.sin(angle), torch.cos(angle)
        grid = F.affine_grid(theta, (BATCH, 1, SIZE, SIZE), align_corners=False)
        x = F.grid_sample(x, grid, align_corners=False)
        y = F.grid_sample(y[:, None].float(), grid, mode="nearest", align_corners=False).long()
        loss = loss_fn(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        steps += 1
    out.mkdir(parents=True, exist_ok=True)
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(out / "model.safetensors"))
    (out / "run.json").write_text(json.dumps({
        "steps": steps, "seconds": round(time.perf_counter() - t_start, 1), "minutes": minutes,
        "parameters": sum(p.numel() for p in net.parameters()), "slices": int(len(x_all)),
    }, indent=2))


@torch.no_grad()
def predict(run: Path, images: list[Path], out: Path) -> None:
    from safetensors.torch import load_file

    from cascadeseg.io import load_volume, save_labels

    torch.set_num_threads(1)
    net = _network()
    net.load_state_dict(load_file(str(run / "model.safetensors")))
    net.eval()
    out.mkdir(parents=True, exist_ok=True)
    for path in images:
        image = load_volume(path)
        x = _slices(_normalise(image.array[0]))
        logits = torch.cat([net(x[i:i + 16]) for i in range(0, len(x), 16)])
        logits = F.interpolate(logits, size=image.array.shape[2:], mode="bilinear", align_corners=False)
        labels = logits.argmax(1).numpy().astype(np.uint8)
        name = path.name.replace("_0000.nii.gz", ".nii.gz")
        save_labels(labels, image, out / name, overwrite=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train")
    t.add_argument("data", type=Path)
    t.add_argument("--minutes", type=float, required=True)
    t.add_argument("--out", type=Path, required=True)
    t.add_argument("--seed", type=int, default=0)
    p = sub.add_parser("predict")
    p.add_argument("run", type=Path)
    p.add_argument("images", type=Path, nargs="+")
    p.add_argument("-o", "--out", type=Path, required=True)
    args = parser.parse_args()
    if args.command == "train":
        train(args.data, args.minutes, args.out, args.seed)
    else:
        predict(args.run, args.images, args.out)


if __name__ == "__main__":
    main()
