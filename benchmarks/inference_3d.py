"""3D inference on this CPU: the shipped 3D models through the whole predictor against MONAI's
``sliding_window_inference`` alone with the same network.

For each model and its real scans, two measurements, each in a fresh process (so that its peak
resident memory, ``VmHWM``, is its own), one torch thread unless ``--threads`` says otherwise:

* **predictor**: ``Predictor.predict(volume)``, what ``cascadeseg predict --mode 3d`` and the
  Segment dock run: normalisation, resampling to the card's grid, the sliding window (MONAI's,
  Gaussian blending, the card's patch), the way back to the scan's grid, post-processing.
* **MONAI window only**: ``sliding_window_inference`` with the same network, patch, overlap and
  blending on the already-prepared input tensor: the floor the predictor's own work adds to.

Reported: seconds per case (median over the cases, after one warm-up), patches per second, peak
RSS, and the ratio predictor / MONAI. Writes ``benchmarks/results/inference_3d_<date>.md/.json``.

    python benchmarks/inference_3d.py --cases 8
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from _common import one_thread_env, write_results  # noqa: E402

DATA = ROOT.parent / "shared" / "data"

CHILD = textwrap.dedent(
    """
    import json, statistics, sys, time
    import torch
    from monai.inferers import sliding_window_inference
    from cascadeseg.inference import Predictor, resolve_checkpoint
    from cascadeseg.inference.predictor import PAD_VALUE, count_windows
    from cascadeseg.io import load_volume

    model, kind, threads, files = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:]
    torch.set_num_threads(threads)
    predictor = Predictor.from_checkpoint(resolve_checkpoint(model), device="cpu")
    patch = predictor._patch_size(None)
    seconds, windows = [], 0
    for i, path in enumerate([files[0], *files]):  # the first file twice: a warm-up
        volume = load_volume(path)
        if kind == "predictor":
            t0 = time.perf_counter()
            predictor.predict(volume)
            elapsed = time.perf_counter() - t0
            shape = predictor.prepare(volume, None).working_shape
        else:
            prepared = predictor.prepare(volume, None)
            x = torch.from_numpy(prepared.image)[None]
            shape = prepared.working_shape
            net, depth = predictor.model, predictor.resolve_depth(None)  # the depth the predictor runs
            with torch.inference_mode():
                t0 = time.perf_counter()
                sliding_window_inference(x, roi_size=patch, sw_batch_size=1, predictor=lambda t: net(t, depth=depth).logits,
                                         overlap=0.5, mode="gaussian", sigma_scale=0.125,
                                         padding_mode="constant", cval=PAD_VALUE)
                elapsed = time.perf_counter() - t0
        if i:
            seconds.append(elapsed)
            windows += count_windows(shape, patch, 0.5)
    with open("/proc/self/status") as fh:
        peak = next(int(line.split()[1]) for line in fh if line.startswith("VmHWM"))
    print(json.dumps({"seconds_per_case": statistics.median(seconds), "patches_per_s": windows / sum(seconds),
                      "peak_rss_mb": peak / 1024, "cases": len(seconds), "patch": list(patch)}))
    """
)

MODELS = {
    "hippocampus_unet_plus_plus_3d": ("hippocampus", "imagesTr"),
    "ct_liver_unet_3d": ("totalseg", None),
}


def scans(model: str, count: int) -> list[str]:
    """Held-out scans of the model's card where it names them, else the data's scans."""
    from cascadeseg.inference import load_checkpoint, resolve_checkpoint

    data, sub = MODELS[model]
    _, card = load_checkpoint(resolve_checkpoint(model))
    if sub is None:
        return [str(DATA / "totalseg" / "example_ct.nii.gz")]
    return [str(DATA / data / sub / f"{case}_0000.nii.gz") for case in card.validation["cases"][:count]]


def measure(model: str, kind: str, threads: int, files: list[str]) -> dict:
    env = one_thread_env() | {"OMP_NUM_THREADS": str(threads)}
    done = subprocess.run([sys.executable, "-c", CHILD, model, kind, str(threads), *files],
                          capture_output=True, text=True, env=env, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    rows = []
    for model in args.models:
        files = scans(model, args.cases)
        ours, monai = (measure(model, kind, args.threads, files) for kind in ("predictor", "monai"))
        rows.append({"model": model, "cases": ours["cases"], "patch": ours["patch"], "predictor": ours, "monai": monai,
                     "ratio": ours["seconds_per_case"] / monai["seconds_per_case"]})
    lines = [
        "# 3D inference on a CPU: the predictor against MONAI's sliding window alone",
        "",
        f"`python benchmarks/inference_3d.py --cases {args.cases} --threads {args.threads}`; median seconds per case "
        "after a warm-up, patches/s over all cases, peak RSS of the process (VmHWM). Same network, patch, overlap "
        "0.5 and Gaussian blending; MONAI's column starts from the prepared tensor.",
        "",
        "| model | cases | patch | predictor s/case | MONAI window s/case | predictor / MONAI | "
        "predictor patches/s | MONAI patches/s | predictor peak RSS MB | MONAI peak RSS MB |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        p, m = r["predictor"], r["monai"]
        lines.append(
            f"| {r['model']} | {r['cases']} | {'x'.join(map(str, r['patch']))} | {p['seconds_per_case']:.3f} | "
            f"{m['seconds_per_case']:.3f} | {r['ratio']:.2f} | {p['patches_per_s']:.1f} | {m['patches_per_s']:.1f} | "
            f"{p['peak_rss_mb']:.0f} | {m['peak_rss_mb']:.0f} |"
        )
    write_results(args.results, "inference_3d", "\n".join(lines) + "\n", rows)


if __name__ == "__main__":
    main()
