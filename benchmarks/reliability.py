"""Reliability benchmark: the figures of issues 20 and 21, measured again so no change can lose them.

Sections (each prints its rows; the summary table goes to ``docs/reliability.md`` and the figures
to ``benchmarks/results/reliability.json``):

* **bad inputs**: a corpus of broken, hostile and misused inputs (truncated, empty and garbage
  files, 2D/5D/NaN/constant scans, headers claiming 10^12 voxels, scans given as label maps, grids
  that do not match, broken datasets, damaged and hostile checkpoints, outputs that are inputs)
  over every entry point: the command line (``predict``, ``evaluate``, ``train``, ``models``), the
  Python API (readers, writers, checkpoints, the predictor, the training set, ``train``) and the
  GUI's writer. Each probe must end in the project's own error (one line on the command line, no
  traceback), and no input file may change (SHA-256 of every input before and after).
* **no unpickling**: a checkpoint and a run whose ``.pt`` files run code when unpickled; the
  marker they would create must never appear.
* **size refusals**: the seconds until a 10^12-voxel header and a card asking for an absurd grid
  are refused (target: < 2 s, before any large allocation).
* **kill loops** (bounded count and time): ``cascadeseg train`` SIGKILLed at random moments, then
  resumed (or restarted when it had not started) until it finishes; kills injected at every step of
  the checkpoint swap; ``cascadeseg predict`` and "Add to training set" SIGKILLed at random
  moments. After each kill: no torn visible file; the next run cleans what was left; the finished
  run has every epoch once and verified checkpoints, and the folder holds no leftovers.
* **memory**: resident memory over 100 predictions in one process (after 5 warm-up ones).
* **orientation**: two scans (isotropic, and the same with 1 x 1 x 2.5 mm voxels) rewritten in six
  orientations; every prediction must give the same labels and the source file's affine.

Usage (from the repository root; about 10 minutes on a 2-core CPU, ``--quick`` about 3)::

    python benchmarks/reliability.py            # writes docs/reliability.md
    python benchmarks/reliability.py --quick    # fewer kills and predictions, same checks
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import hashlib
import io
import json
import os
import pickle
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("CASCADESEG_DATA", REPO.parent / "shared" / "data"))
LGG = DATA / "lgg-flair"
CASES = ["TCGA_CS_5397_20010315", "TCGA_CS_6665_20010817", "TCGA_DU_6404_19850629", "TCGA_HT_7692_19960724",
         "TCGA_DU_5851_19950428", "TCGA_FG_6690_20020226"]
CLI = [sys.executable, "-m", "cascadeseg.cli.main"]
SHIPPED = "lgg_flair_anu_net_2d"


# -- helpers ---------------------------------------------------------------------------------------

def sha(path: Path) -> dict[str, str]:
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file()) if path.exists() else []
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def crop(case: str, slices: int = 10) -> tuple[Any, Any]:
    from cascadeseg.io import load_labels, load_volume

    image = load_volume(LGG / "imagesTr" / f"{case}_0000.nii.gz")
    labels = load_labels(LGG / "labelsTr" / f"{case}.nii.gz", reference=image)
    z = np.flatnonzero(labels.array.any(axis=(1, 2)))
    lo = max(0, min(int(z.mean()) - slices // 2, labels.array.shape[0] - slices))
    return image.with_array(image.array[:, lo:lo + slices].copy()), labels.with_array(labels.array[lo:lo + slices].copy())


def small_dataset(folder: Path, cases: list[str], slices: int = 10) -> Path:
    """An MSD folder of real LGG cases cut to ``slices`` tumour slices (seconds to train on)."""
    from cascadeseg.io import save_labels, save_volume

    for case in cases:
        image, labels = crop(case, slices)
        save_volume(image, folder / "imagesTr" / f"{case}_0000.nii.gz")
        save_labels(labels, image, folder / "labelsTr" / f"{case}.nii.gz")
    return folder


def leftovers(folder: Path) -> list[str]:
    """Hidden entries a killed writer could leave (the run's lock file is meant to stay)."""
    if not folder.is_dir():
        return []
    keep = {".cascadeseg-run.lock"}
    return sorted(p.name for p in folder.rglob(".*") if p.name not in keep)


def cli(args: list[str], timeout: float = 600, **kwargs: Any) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE", **kwargs.pop("env", {})}
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, env=env, **kwargs)


def kill_at(args: list[str], seconds: float, env: dict[str, str] | None = None,
            script: str | None = None) -> tuple[bool, str]:
    """Run the command (or a Python ``script``), SIGKILL it after ``seconds``; (was it killed, stderr)."""
    command = [sys.executable, "-c", script] if script else [*CLI, *args]
    with tempfile.TemporaryFile("w+") as err:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err,
                                   env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})
        try:
            process.wait(timeout=seconds)
            killed = False
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGKILL)
            process.wait()
            killed = True
        err.seek(0)
        return killed, err.read()


@dataclass
class Section:
    name: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    def passed(self) -> int:
        return sum(1 for r in self.rows if r["ok"])


# -- bad inputs ------------------------------------------------------------------------------------

class Corpus:
    """Broken and misused inputs, made once in ``root`` from real data."""

    def __init__(self, root: Path) -> None:
        from cascadeseg.inference import resolve_checkpoint

        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        real = LGG / "imagesTr" / f"{CASES[0]}_0000.nii.gz"
        self.scan = self._copy(real, "scan.nii.gz")
        self.label = self._copy(LGG / "labelsTr" / f"{CASES[0]}.nii.gz", "scan_label.nii.gz")
        raw = gzip.decompress(real.read_bytes())
        self.files = {
            "missing": root / "missing.nii.gz",
            "empty": self._write("empty.nii.gz", b""),
            "truncated .nii.gz": self._write("truncated.nii.gz", real.read_bytes()[:-3000]),
            "truncated .nii": self._write("truncated.nii", raw[:-1000]),
            "garbage .nii.gz": self._write("garbage.nii.gz", os.urandom(5000)),
            "text as .nii": self._write("text.nii", b"hello, not an image\n" * 40),
            "garbage .mha": self._write("garbage.mha", b"ObjectType = Image\nNDims = 3\nDimSize = 4 4\n"),
            "2D image": self._nifti("flat.nii.gz", np.ones((64, 64), np.int16)),
            "5D image": self._nifti("five.nii.gz", np.ones((8, 8, 8, 2, 2), np.int16)),
            "NaN voxels": self._nifti("nan.nii.gz", self._with_nan()),
            "constant scan": self._nifti("constant.nii.gz", np.full((64, 64, 12), 7, np.int16)),
            "10^12-voxel header .nii.gz": self._huge_nifti("huge.nii.gz", compress=True),
            "10^12-voxel header .nii": self._huge_nifti("huge.nii", compress=False),
            "10^12-voxel header .mha": self._huge_mha("huge.mha"),
            "empty folder": self._folder("empty_dir"),
            "negative labels": self._nifti("negative.nii.gz", -np.ones((64, 64, 12), np.int16)),
            "fractional labels": self._nifti("fraction.nii.gz", np.full((64, 64, 12), 0.5, np.float32)),
        }
        self.msd_orphan = self._dataset("ds_orphan", orphan=True)
        self.msd_bad_json = self._dataset("ds_bad_json", bad_json=True)
        self.msd_ok = self._dataset("ds_ok")
        self.preds_are_scans = self._folder("preds_scans")
        shutil.copy(real, self.preds_are_scans / f"{CASES[0]}.nii.gz")
        shipped = resolve_checkpoint(SHIPPED)
        self.ckpt = {name: self._checkpoint(shipped, name, change) for name, change in [
            ("card not JSON", lambda f: (f / "model_card.json").write_text("{oops")),
            ("card missing fields", lambda f: (f / "model_card.json").write_text('{"architecture": "unet"}')),
            ("card from the future", lambda f: self._card(f, format_version=99)),
            ("unknown architecture", lambda f: self._card(f, architecture="no_such_net")),
            ("unknown preprocessing", lambda f: self._card(f, input_channels=[
                {"name": "FLAIR", "preprocessing": {"type": "magic"}}])),
            ("zero spacing", lambda f: self._card(f, target_spacing=[1.0, 0.0, 2.0])),
            ("absurd target spacing", lambda f: self._card(f, target_spacing=[1.0, 1e-4, 1e-4])),
            ("weights truncated", lambda f: (f / "model.safetensors").write_bytes(
                (f / "model.safetensors").read_bytes()[:5000])),
            ("tensor bytes flipped", self._flip),
            ("weights missing", lambda f: (f / "model.safetensors").unlink()),
            ("only a pickle", self._pickle_only),
        ]}
        self.ckpt["missing folder"] = root / "no_such_checkpoint"
        self.good_ckpt = shipped
        self.marker = root / "PICKLE_WAS_EXECUTED"

    # builders
    def _write(self, name: str, data: bytes) -> Path:
        (self.root / name).write_bytes(data)
        return self.root / name

    def _copy(self, source: Path, name: str) -> Path:
        shutil.copy(source, self.root / name)
        return self.root / name

    def _folder(self, name: str) -> Path:
        (self.root / name).mkdir(exist_ok=True)
        return self.root / name

    def _nifti(self, name: str, array: np.ndarray) -> Path:
        nib.save(nib.Nifti1Image(array, np.eye(4)), self.root / name)
        return self.root / name

    def _with_nan(self) -> np.ndarray:
        data = np.random.default_rng(0).normal(100, 20, (64, 64, 12)).astype(np.float32)
        data[5, 5, 5] = np.nan
        return data

    def _huge_nifti(self, name: str, compress: bool) -> Path:
        header = nib.Nifti1Header()
        header.set_data_shape((10_000, 10_000, 10_000))
        header.set_data_dtype(np.uint8)
        raw = header.binaryblock + b"\0" * 4100
        return self._write(name, gzip.compress(raw) if compress else raw)

    def _huge_mha(self, name: str) -> Path:
        text = ("ObjectType = Image\nNDims = 3\nDimSize = 10000 10000 10000\nElementType = MET_UCHAR\n"
                "ElementDataFile = LOCAL\n")
        return self._write(name, text.encode() + b"\0" * 1000)

    def _dataset(self, name: str, orphan: bool = False, bad_json: bool = False) -> Path:
        folder = self.root / name
        for sub in ("imagesTr", "labelsTr"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        for case in CASES[:3]:
            shutil.copy(LGG / "imagesTr" / f"{case}_0000.nii.gz", folder / "imagesTr")
            shutil.copy(LGG / "labelsTr" / f"{case}.nii.gz", folder / "labelsTr")
        if orphan:
            shutil.copy(LGG / "labelsTr" / f"{CASES[3]}.nii.gz", folder / "labelsTr")
        if bad_json:
            (folder / "dataset.json").write_text("{not json")
        return folder

    def _checkpoint(self, shipped: Path, name: str, change: Callable[[Path], None]) -> Path:
        folder = self.root / "checkpoints" / name.replace(" ", "_")
        shutil.copytree(shipped, folder)
        change(folder)
        return folder

    @staticmethod
    def _card(folder: Path, **changes: Any) -> None:
        card = json.loads((folder / "model_card.json").read_text())
        (folder / "model_card.json").write_text(json.dumps({**card, **changes}))

    @staticmethod
    def _flip(folder: Path) -> None:
        weights = folder / "model.safetensors"
        raw = bytearray(weights.read_bytes())
        start = 8 + int.from_bytes(raw[:8], "little") + 1000
        raw[start:start + 2000] = np.random.default_rng(1).integers(0, 256, 2000, dtype=np.uint8).tobytes()
        weights.write_bytes(bytes(raw))

    def _pickle_only(self, folder: Path) -> None:
        (folder / "model.safetensors").unlink()
        (folder / "model.pt").write_bytes(malicious_pickle(self.root / "PICKLE_WAS_EXECUTED"))


class _Payload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204 - what an attacker's pickle does: run code when loaded
        return (Path.touch, (Path(self.marker),))


def malicious_pickle(marker: Path) -> bytes:
    buffer = io.BytesIO()
    pickle.dump({"state_dict": _Payload(str(marker))}, buffer)
    return buffer.getvalue()


def api_probe(call: Callable[[], Any]) -> tuple[str, str]:
    from cascadeseg.errors import CascadeSegError

    try:
        call()
    except CascadeSegError as exc:
        return "refused", str(exc).splitlines()[0][:160]
    except Exception as exc:  # noqa: BLE001 - what the benchmark counts
        return "traceback", "".join(traceback.format_exception_only(type(exc), exc)).strip()[:160]
    return "accepted", ""


def cli_probe(argv: list[str]) -> tuple[str, str]:
    """In-process ``cascadeseg`` (the console script is this function): exit 2 with one error line
    is a refusal; an exception escaping ``main`` is a traceback."""
    from cascadeseg.cli.main import main

    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = main(argv)
    except SystemExit as exc:
        code = exc.code
    except Exception as exc:  # noqa: BLE001
        return "traceback", "".join(traceback.format_exception_only(type(exc), exc)).strip()[:160]
    lines = [line for line in err.getvalue().splitlines() if line.startswith("cascadeseg: error:")]
    if code == 2 and len(lines) == 1 and "Traceback" not in err.getvalue():
        return "refused", lines[0][len("cascadeseg: error: "):][:160]
    return ("accepted" if code == 0 else f"exit {code}"), err.getvalue().strip()[-160:]


def bad_inputs(work: Path) -> Section:
    from cascadeseg.editing import RecoveryStore, TrainingSet
    from cascadeseg.inference import Predictor, load_checkpoint, read_card
    from cascadeseg.io import load_dataset, load_labels, load_volume, save_labels
    from cascadeseg.training.config import TrainConfig
    from cascadeseg.training.trainer import train
    from napari_cascade._writer import write_labels

    section = Section("bad inputs")
    c = Corpus(work / "corpus")
    out = work / "outputs"
    probes: list[tuple[str, str, Callable[[], tuple[str, str]], list[Path]]] = []

    def api(entry: str, what: str, call: Callable[[], Any], *inputs: Path) -> None:
        probes.append((entry, what, lambda: api_probe(call), list(inputs)))

    def command(what: str, argv: list[str], *inputs: Path) -> None:
        probes.append((f"cascadeseg {argv[0]}", what, lambda: cli_probe(argv), list(inputs)))

    label_probes = ("negative labels", "fractional labels")  # readable scans: bad only as label maps
    for what, path in c.files.items():
        if what in label_probes:
            continue
        if what != "constant scan":  # readable; what cannot be done is normalising it (predict below)
            api("load_volume", what, lambda p=path: load_volume(p), path)
        command(what, ["predict", str(path), "-o", str(out / "p"), "-c", SHIPPED], path)
    for what in ("negative labels", "fractional labels", "missing", "empty", "truncated .nii.gz"):
        api("load_labels", what, lambda p=c.files[what]: load_labels(p), c.files[what])
    api("load_labels", "a scan given as a label map", lambda: load_labels(c.scan), c.scan)
    api("load_labels", "label map on another grid",
        lambda: load_labels(c.label, reference=load_volume(c.files["constant scan"])), c.label)
    for what, folder in (("label without image", c.msd_orphan), ("dataset.json not JSON", c.msd_bad_json),
                         ("empty folder", c.files["empty folder"]), ("missing", c.files["missing"])):
        api("load_dataset", what, lambda f=folder: load_dataset(f), folder)
        api("train()", what, lambda f=folder: train(TrainConfig(data=str(f), run_dir=str(out / f"run-{f.name}"),
                                                               epochs=1, threads=1)), folder)
        command(what, ["train", str(folder), "--run-dir", str(out / f"cli-run-{folder.name}"), "--epochs", "1"], folder)
    card_problems = ("card not JSON", "card missing fields", "card from the future", "unknown preprocessing",
                     "zero spacing", "missing folder")  # what read_card (no weights read) must see
    for what, folder in c.ckpt.items():
        if what != "absurd target spacing":  # a loadable card: the prediction it asks for is refused
            api("load_checkpoint", what, lambda f=folder: load_checkpoint(f), folder)
        if what in card_problems:
            api("read_card", what, lambda f=folder: read_card(f), folder)
        command(what, ["predict", str(c.scan), "-o", str(out / "q"), "-c", str(folder)], folder, c.scan)
    api("Predictor.predict", "constant scan", lambda: Predictor.from_checkpoint(SHIPPED, device="cpu").predict(
        load_volume(c.files["constant scan"])), c.files["constant scan"])
    api("Predictor.predict", "two channels for a one-channel model", lambda: Predictor.from_checkpoint(
        SHIPPED, device="cpu").predict(_two_channels(c.scan)), c.scan)
    api("Predictor.predict", "absurd card grid", lambda: Predictor.from_checkpoint(
        c.ckpt["absurd target spacing"], device="cpu").predict(load_volume(c.scan)), c.scan)
    # outputs that are inputs, with every "replace" flag given
    command("-o the scan's folder, --overwrite", ["predict", str(c.scan), "-o", str(c.root), "-c", SHIPPED,
                                                  "--overwrite"], c.root)
    command("an MSD folder as its own output", ["predict", str(c.msd_ok), "-o", str(c.msd_ok), "-c", SHIPPED,
                                                "--overwrite"], c.msd_ok)
    command("-o <dataset>/imagesTr", ["predict", str(c.msd_ok), "-o", str(c.msd_ok / "imagesTr"), "-c", SHIPPED,
                                      "--overwrite"], c.msd_ok)
    command("-o <dataset>/labelsTr", ["predict", str(c.msd_ok), "-o", str(c.msd_ok / "labelsTr"), "-c", SHIPPED,
                                      "--overwrite"], c.msd_ok)
    command("-o onto a label file, --overwrite", ["evaluate", str(c.msd_ok / "labelsTr"), str(c.msd_ok), "-o",
                                                  str(c.msd_ok / "labelsTr" / f"{CASES[0]}.nii.gz"), "--overwrite"],
            c.msd_ok)
    command("scans given as predictions", ["evaluate", str(c.preds_are_scans), str(c.msd_ok)], c.preds_are_scans)
    command("missing folders", ["evaluate", str(c.files["missing"]), str(c.msd_ok)], c.msd_ok)
    api("save_labels", "over its own scan, overwrite=True", lambda: save_labels(
        np.zeros(load_volume(c.scan).spatial_shape, np.uint8), load_volume(c.scan), c.scan, overwrite=True), c.scan)
    image = load_volume(c.scan)
    api("napari writer", "over the scan the labels were drawn on", lambda: write_labels(
        str(c.scan), np.zeros(image.spatial_shape, np.uint8), {"name": "mask", "metadata": {"cascadeseg": {
            "spacing": list(image.spacing), "origin": list(image.origin), "direction": image.direction.tolist(),
            "source": str(c.scan), "reader_meta": image.meta}}}), c.scan)
    api("napari writer", "a 2D labels layer", lambda: write_labels(str(out / "flat.nii.gz"), np.zeros((8, 8), np.uint8),
                                                                  {"name": "flat"}))
    scan_labels = load_labels(c.label, reference=image)
    api("TrainingSet.add_case", "over the scan's own dataset, overwrite=True", lambda: TrainingSet(c.msd_ok).add_case(
        load_volume(c.msd_ok / "imagesTr" / f"{CASES[0]}_0000.nii.gz"), load_labels(
            c.msd_ok / "labelsTr" / f"{CASES[0]}.nii.gz"), CASES[0], overwrite=True), c.msd_ok)
    api("TrainingSet.add_case", "a 300-character case id", lambda: TrainingSet(out / "set").add_case(
        image, scan_labels, "x" * 300), c.scan)
    api("TrainingSet.add_case", "an empty mask", lambda: TrainingSet(out / "set").add_case(
        image, np.zeros(image.spatial_shape, np.uint8)), c.scan)
    api("TrainingSet.add_case", "a mask on another grid", lambda: TrainingSet(out / "set").add_case(
        image, np.ones((3, 3, 3), np.uint8)), c.scan)
    recovery = out / "recovery"
    recovery.mkdir(parents=True, exist_ok=True)
    store = RecoveryStore(recovery)
    store.path_for(c.scan).write_bytes(b"not an npz")
    api("RecoveryStore.load", "a corrupt recovery file", lambda: store.load(c.scan), c.scan)
    command("--resume of a folder that is no run", ["train", "--resume", "--run-dir", str(c.files["empty folder"])],
            c.files["empty folder"])
    command("--init-checkpoint unknown name", ["train", str(c.msd_ok), "--run-dir", str(out / "r-init"),
                                               "--init-checkpoint", "no_such_model", "--epochs", "1"], c.msd_ok)
    command("unknown model", ["models", "no_such_model"])

    for entry, what, probe, inputs in probes:
        before = {k: v for p in inputs for k, v in sha(p).items()}
        outcome, message = probe()
        message = message.replace(str(work), "<work>")
        unchanged = before == {k: v for p in inputs for k, v in sha(p).items()}
        section.rows.append({"entry": entry, "probe": what, "outcome": outcome, "inputs unchanged": unchanged,
                             "message": message, "ok": outcome == "refused" and unchanged})
    section.rows.append({"entry": "every probe", "probe": "no pickle was ever executed",
                         "outcome": "marker absent" if not c.marker.exists() else "EXECUTED",
                         "inputs unchanged": True, "message": "", "ok": not c.marker.exists()})
    return section


def _two_channels(scan: Path) -> Any:
    from cascadeseg.io import load_volume

    volume = load_volume(scan)
    return volume.with_array(np.concatenate([volume.array, volume.array]), channel_names=["a", "b"])


# -- no unpickling in a resumed run ----------------------------------------------------------------

def hostile_training_state(work: Path) -> Section:
    section = Section("no unpickling")
    data = small_dataset(work / "pickle-ds", CASES[:3], slices=6)
    run = work / "pickle-run"
    done = cli(["train", str(data), "--run-dir", str(run), "--model", "unet", "--base-width", "4", "--levels", "3",
                "--inplane-size", "64", "--epochs", "1", "--steps-per-epoch", "1", "--val-fraction", "0.34",
                "--threads", "1", "--no-progress"])
    assert done.returncode == 0, done.stderr
    marker = work / "PICKLE_WAS_EXECUTED"
    (run / "last" / "training_state.pt").write_bytes(malicious_pickle(marker))
    resumed = cli(["train", "--resume", "--run-dir", str(run), "--epochs", "2", "--no-progress"])
    error = resumed.stderr.strip().splitlines()[-1] if resumed.stderr.strip() else ""
    section.rows.append({"probe": "resume from a training_state.pt that runs code when unpickled",
                         "outcome": error[:160], "ok": resumed.returncode == 2 and not marker.exists()
                         and "Traceback" not in resumed.stderr})
    return section


# -- size refusals ---------------------------------------------------------------------------------

def size_refusals(work: Path) -> Section:
    from cascadeseg.errors import InsufficientMemoryError
    from cascadeseg.inference import Predictor
    from cascadeseg.io import load_volume

    section = Section("size refusals")
    corpus = work / "corpus"
    for name in ("huge.nii.gz", "huge.nii", "huge.mha"):
        start = time.perf_counter()
        try:
            load_volume(corpus / name)
            outcome = "accepted"
        except InsufficientMemoryError:
            outcome = "refused"
        seconds = time.perf_counter() - start
        section.rows.append({"probe": f"load_volume({name}): 10^12 voxels", "seconds": round(seconds, 4),
                             "outcome": outcome, "ok": outcome == "refused" and seconds < 2})
    start = time.perf_counter()
    done = cli(["predict", str(corpus / "huge.nii.gz"), "-o", str(work / "huge-out"), "-c", SHIPPED])
    seconds = time.perf_counter() - start
    section.rows.append({"probe": "cascadeseg predict huge.nii.gz (whole command, Python start included)",
                         "seconds": round(seconds, 2), "outcome": done.stderr.strip()[:100],
                         "ok": done.returncode == 2 and seconds < 2 and not (work / "huge-out").exists()})
    predictor = Predictor.from_checkpoint(corpus / "checkpoints" / "absurd_target_spacing", device="cpu")
    scan = load_volume(corpus / "scan.nii.gz")
    start = time.perf_counter()
    try:
        predictor.predict(scan)
        outcome = "accepted"
    except InsufficientMemoryError:
        outcome = "refused"
    seconds = time.perf_counter() - start
    section.rows.append({"probe": "Predictor.predict with a card asking for 1e-4 mm pixels", "seconds": round(seconds, 4),
                         "outcome": outcome, "ok": outcome == "refused" and seconds < 2})
    return section


# -- kill loops ------------------------------------------------------------------------------------

TRAIN_ARGS = ["--model", "unet", "--base-width", "4", "--levels", "3", "--inplane-size", "64", "--batch-size", "4",
              "--steps-per-epoch", "6", "--val-fraction", "0.34", "--threads", "1", "--no-progress"]


def _check_run(run: Path, epochs: int | None) -> tuple[bool, str]:
    """Finished-run invariants: every epoch once, verified loadable checkpoints, no leftovers."""
    import csv

    from cascadeseg.inference import load_checkpoint
    from cascadeseg.inference.checkpoint import verify_checkpoint

    problems = []
    if epochs is not None:
        with open(run / "log.csv", newline="") as handle:
            logged = [int(r["epoch"]) for r in csv.DictReader(handle)]
        if logged != list(range(1, epochs + 1)):
            problems.append(f"log epochs {logged}")
    for name in ("last", "best"):
        try:
            load_checkpoint(run / name)
            verify_checkpoint(run / name)
        except Exception as exc:  # noqa: BLE001
            problems.append(f"{name}: {exc}")
    if leftovers(run):
        problems.append(f"leftovers {leftovers(run)}")
    return not problems, "; ".join(problems)


def _visible_checkpoints_load(run: Path) -> bool:
    from cascadeseg.inference import load_checkpoint

    for name in ("last", "best"):
        if (run / name).exists():
            try:
                load_checkpoint(run / name)
            except Exception:  # noqa: BLE001
                return False
    return True


def train_kills(work: Path, kills: int, rng: random.Random, budget: float) -> Section:
    from cascadeseg.training.run_folder import run_started

    section = Section("kill cascadeseg train")
    data = small_dataset(work / "kill-ds", CASES[:4], slices=8)
    run = work / "kill-run"
    epochs = 40  # long enough that kills land in the start, the epochs, validation and checkpoint writes
    start = time.perf_counter()
    done = 0
    while done < kills and time.perf_counter() - start < budget:
        args = ["train", "--resume", "--run-dir", str(run), "--epochs", str(epochs)] if run_started(run) else \
            ["train", str(data), "--run-dir", str(run), "--epochs", str(epochs), *TRAIN_ARGS]
        moment = rng.uniform(0.5, 8.0)
        killed, err = kill_at(args, moment)
        if not killed:  # finished before the kill: start the loop again from a fresh folder
            shutil.rmtree(run)
            continue
        done += 1
        state = "not started" if not run_started(run) else (
            f"{len((run / 'log.csv').read_text().splitlines()) - 1} epoch(s) logged" if (run / "log.csv").exists()
            else "started, no epoch yet")
        section.rows.append({"kill": done, "after s": round(moment, 2), "run": state,
                             "left behind": ", ".join(leftovers(run))[:80] or "-",
                             "visible checkpoints load": _visible_checkpoints_load(run),
                             "ok": _visible_checkpoints_load(run)})
    final = cli(["train", "--resume", "--run-dir", str(run), "--epochs", str(epochs), "--no-progress"]
                if run_started(run) else ["train", str(data), "--run-dir", str(run), "--epochs", str(epochs), *TRAIN_ARGS])
    ok, problem = _check_run(run, epochs) if final.returncode == 0 else (False, final.stderr[-300:])
    section.rows.append({"kill": "final run", "after s": "-", "run": f"{epochs} epochs, each logged once" if ok else "-",
                         "left behind": problem or "-", "visible checkpoints load": ok, "ok": ok})
    return section


_SWAP_KILL = """
import os, signal
from pathlib import Path
import cascadeseg.training.trainer as trainer
from cascadeseg.training.config import TrainConfig
config = TrainConfig(**{config!r})
name, nth, point = {name!r}, {nth!r}, {point!r}
run = Path(config.run_dir)
real_replace = os.replace
count = {{"n": 0}}
die = lambda: os.kill(os.getpid(), signal.SIGKILL)
def replace(src, dst):
    src, dst = Path(src), Path(dst)
    if dst == run / name:  # the second rename of a swap of name/
        count["n"] += 1
        if count["n"] == nth and point == "before the second rename":
            die()
    if src == run / name and dst == run / f".{{name}}.old" and count["n"] + 1 == nth and point == "before the first rename":
        die()
    result = real_replace(src, dst)
    if dst == run / name and count["n"] == nth and point == "after the second rename":
        die()  # the backup .name.old is still there
    return result
os.replace = replace
import torch
real_save = torch.save
saves = {{"n": 0}}
def save(obj, handle, *args, **kwargs):
    # the training state goes into <run>/<staging>/<name>/: killed there, the swap has not begun
    if point == "while staging" and Path(getattr(handle, "name", handle)).parent.name == name:
        saves["n"] += 1
        if saves["n"] == nth:
            die()
    return real_save(obj, handle, *args, **kwargs)
torch.save = save
trainer.train(config)
"""


def swap_kills(work: Path, rng: random.Random, count: int) -> Section:
    from cascadeseg.training.config import TrainConfig

    section = Section("kills inside checkpoint swaps")
    data = small_dataset(work / "swap-ds", CASES[:3], slices=6)
    points = ["before the first rename", "before the second rename", "after the second rename"]
    # best/ is rewritten only when the Dice improves: its first write (no old one to move away) is
    # the one every run has
    combos = [("last", nth, point) for nth in (2, 3, 4) for point in points]
    combos += [("best", 1, "before the second rename"), ("best", 1, "while staging"), ("last", 3, "while staging")]
    combos = combos[:count]
    epochs = 5
    for index, (name, nth, point) in enumerate(combos, 1):
        run = work / f"swap-run-{index}"
        config = TrainConfig(data=str(data), run_dir=str(run), model="unet", dims=2,
                             model_options={"base_width": 4, "levels": 3}, inplane_size=64, batch_size=4,
                             steps_per_epoch=2, epochs=epochs, val_fraction=0.34, threads=1).to_dict()
        script = _SWAP_KILL.format(config=config, name=name, nth=nth, point=point)
        process = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600,
                                 env={**os.environ, "OMP_NUM_THREADS": "1"})
        killed = process.returncode == -9
        state = ", ".join(leftovers(run)) or "-"
        if not killed:  # best/ is not rewritten when the Dice does not improve: nothing to kill
            section.rows.append({"kill": f"{name} swap #{nth}, {point}", "left behind": "(no such swap in this run)",
                                 "resumed": "-", "ok": process.returncode == 0})
            continue
        resumed = cli(["train", "--resume", "--run-dir", str(run), "--no-progress"])
        ok, problem = _check_run(run, epochs) if resumed.returncode == 0 else (False, resumed.stderr[-300:])
        section.rows.append({"kill": f"{name} swap #{nth}, {point}", "left behind": state[:80],
                             "resumed": problem or "every epoch once, checkpoints verified, no leftovers", "ok": ok})
    return section


def predict_kills(work: Path, kills: int, rng: random.Random) -> Section:
    from cascadeseg.io import load_labels, load_volume

    section = Section("kill cascadeseg predict")
    data = work / "predict-ds"
    (data / "imagesTr").mkdir(parents=True, exist_ok=True)
    for case in CASES:  # whole real scans: a run of several seconds, mostly network time and writes
        shutil.copy(LGG / "imagesTr" / f"{case}_0000.nii.gz", data / "imagesTr")
    out = work / "predict-out"
    args = ["predict", str(data), "-o", str(out), "-c", SHIPPED, "--overwrite", "--no-progress", "--device", "cpu",
            "--save-probabilities"]
    for index in range(1, kills + 1):
        moment = rng.uniform(2.0, 9.0)
        killed, _ = kill_at(args, moment)
        torn = []
        visible = [p for p in out.glob("*.nii.gz") if not p.name.startswith(".")] if out.is_dir() else []
        for path in sorted(visible):
            try:
                load_volume(path) if path.name.endswith("_probabilities.nii.gz") else load_labels(path)
            except Exception:  # noqa: BLE001
                torn.append(path.name)
        left = leftovers(out)
        section.rows.append({"kill": index, "after s": round(moment, 2), "killed": killed,
                             "left behind": ", ".join(left)[:80] or "-", "torn outputs": len(torn), "ok": not torn})
    final = cli(args)
    complete = sorted(p.name for p in out.iterdir())
    ok = final.returncode == 0 and complete == sorted(f"{c}{s}" for c in CASES for s in (".nii.gz", "_probabilities.nii.gz"))
    section.rows.append({"kill": "next run", "after s": "-", "killed": False, "left behind": ", ".join(leftovers(out)) or "-",
                         "torn outputs": 0, "ok": ok and not leftovers(out)})
    return section


_ADD_LOOP = """
import sys
sys.path.insert(0, {bench!r})
from reliability import crop
from cascadeseg.editing import TrainingSet
pairs = [crop(c, 12) for c in {cases!r}]
while True:
    for case, (image, labels) in zip({cases!r}, pairs):
        TrainingSet({folder!r}).add_case(image, labels, case)
"""


def training_set_kills(work: Path, kills: int, rng: random.Random) -> Section:
    from cascadeseg.editing import TrainingSet

    section = Section("kill Add to training set")
    folder = work / "training-set"
    script = _ADD_LOOP.format(bench=str(Path(__file__).parent), cases=CASES[:3], folder=str(folder))
    for index in range(1, kills + 1):
        moment = rng.uniform(2.5, 6.0)
        killed, err = kill_at([], moment, script=script)
        left = leftovers(folder)
        try:
            training_set = TrainingSet(folder)  # opening it finishes or rolls back the killed write
            meta = json.loads((folder / "dataset.json").read_text())
            complete, incomplete = training_set.case_ids()
            ok = (killed and not incomplete and meta["numTraining"] == len(complete)
                  and set(meta["napari_cascade"]["patients"]) >= set(complete) and not leftovers(folder))
            note = f"{len(complete)} complete cases"
        except Exception as exc:  # noqa: BLE001
            ok, note = False, str(exc)[:120]
        section.rows.append({"kill": index, "after s": round(moment, 2), "left behind": ", ".join(left)[:80] or "-",
                             "after reopening": note, "ok": ok})
    return section


# -- memory and orientation ------------------------------------------------------------------------

def memory_check(predictions: int) -> Section:
    import psutil

    from cascadeseg.inference import Predictor

    section = Section("memory over repeated predictions")
    predictor = Predictor.from_checkpoint(SHIPPED, device="cpu")
    scan, _ = crop(CASES[0], 24)
    process = psutil.Process()
    for _ in range(5):
        predictor.predict(scan)
    start = process.memory_info().rss
    for _ in range(predictions):
        predictor.predict(scan)
    end = process.memory_info().rss
    growth = (end - start) / start
    section.rows.append({"predictions": predictions, "RSS before MiB": round(start / 2**20, 1),
                         "RSS after MiB": round(end / 2**20, 1), "growth": f"{growth:+.2%}", "ok": growth < 0.01})
    return section


ORIENTATIONS = ["LPS", "PIL", "RAS", "SAR", "AIR", "LAS"]


def orientation_round_trip(work: Path) -> Section:
    from cascadeseg.cli.main import main
    from cascadeseg.io import load_labels

    section = Section("orientation round trip")
    source = nib.load(LGG / "imagesTr" / f"{CASES[1]}_0000.nii.gz")
    variants = {"isotropic": source,
                "1 x 1 x 2.5 mm": nib.Nifti1Image(np.asanyarray(source.dataobj), source.affine @ np.diag([1, 1, 2.5, 1]))}
    for name, image in variants.items():
        reference = None
        for code in ORIENTATIONS:
            folder = work / "orient" / name.replace(" ", "") / code
            folder.mkdir(parents=True, exist_ok=True)
            ornt = nib.orientations.ornt_transform(nib.io_orientation(image.affine), nib.orientations.axcodes2ornt(code))
            scan = folder / "scan.nii.gz"
            nib.save(image.as_reoriented(ornt), scan)
            with contextlib.redirect_stderr(io.StringIO()):
                assert main(["predict", str(scan), "-o", str(folder / "out"), "-c", SHIPPED, "--no-progress"]) == 0
            written = folder / "out" / "scan.nii.gz"
            labels = load_labels(written).array  # canonical orientation: comparable across variants
            reference = labels if reference is None else reference
            same_affine = np.allclose(nib.load(written).affine, nib.load(scan).affine, atol=1e-5)
            same_labels = labels.shape == reference.shape and bool(np.array_equal(labels, reference))
            section.rows.append({"scan": name, "written as": code, "labels identical": same_labels,
                                 "affine of the source": same_affine, "ok": same_labels and same_affine})
    return section


# -- report ----------------------------------------------------------------------------------------

def markdown(sections: list[Section], meta: dict[str, Any]) -> str:
    text = _markdown(sections, meta)
    return text.replace(meta["work"].rstrip("/"), "<work>") if meta.get("work") else text


def _markdown(sections: list[Section], meta: dict[str, Any]) -> str:
    lines = [
        "# Reliability benchmark",
        "",
        f"`python benchmarks/reliability.py{' --quick' if meta['quick'] else ''}` on {meta['machine']}, "
        f"{meta['date']}, {meta['minutes']:.1f} minutes. Every row is a check that passed or failed on this run; "
        "the script (its docstring says what each section does) writes this file and "
        "`benchmarks/results/reliability.json`.",
        "",
        "| check | passed | of | seconds |",
        "|---|---|---|---|",
    ]
    for s in sections:
        lines.append(f"| {s.name} | {s.passed()} | {len(s.rows)} | {s.seconds:.0f} |")
    bad = next((s for s in sections if s.name == "bad inputs"), Section("bad inputs"))
    entries = sorted({r["entry"] for r in bad.rows})
    lines += ["", f"Bad inputs: {len(bad.rows)} probes over {len(entries)} entry points ({', '.join(entries)}); "
              f"outcomes: " + ", ".join(f"{o} {sum(1 for r in bad.rows if r['outcome'] == o)}"
                                        for o in sorted({r['outcome'] for r in bad.rows})) + "; inputs changed: "
              f"{sum(1 for r in bad.rows if not r['inputs unchanged'])}."]
    for s in sections:
        if s.name == "bad inputs":
            continue
        keys = [k for k in s.rows[0] if k != "ok"] if s.rows else []
        lines += ["", f"## {s.name}", "", "| " + " | ".join(keys + ["ok"]) + " |", "|" + "---|" * (len(keys) + 1)]
        for row in s.rows:
            lines.append("| " + " | ".join(str(row[k]).replace("|", "/") for k in keys) + f" | {'yes' if row['ok'] else 'NO'} |")
    lines += ["", "## bad inputs", "", "| entry point | probe | outcome | inputs unchanged | message |", "|---|---|---|---|---|"]
    for row in bad.rows:
        lines.append(f"| {row['entry']} | {row['probe']} | {row['outcome']} | {'yes' if row['inputs unchanged'] else 'NO'} | "
                     f"{row['message'].replace('|', '/')[:120]} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer kills and predictions (same checks)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "reliability.md")
    parser.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "reliability.json")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--only", nargs="+", default=None, metavar="SECTION",
                        choices=("inputs", "pickle", "sizes", "train-kills", "swap-kills", "predict-kills", "set-kills",
                                 "memory", "orientation"),
                        help="run only these sections (to iterate on one; the docs table comes from a full run)")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch

    torch.set_num_threads(2)
    from cascadeseg._atomic import write_text

    rng = random.Random(args.seed)
    kills = (5, 4, 4, 6, 20) if args.quick else (20, 12, 12, 20, 100)
    t0 = time.perf_counter()
    sections: list[Section] = []
    with tempfile.TemporaryDirectory(prefix="cascadeseg-reliability-") as scratch:
        work = args.work or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        os.environ["CASCADESEG_HOME"] = str(work / "home")  # the user's own home is never touched
        chosen = {
            "inputs": lambda: bad_inputs(work), "pickle": lambda: hostile_training_state(work),
            "sizes": lambda: size_refusals(work), "train-kills": lambda: train_kills(work, kills[0], rng, budget=900),
            "swap-kills": lambda: swap_kills(work, rng, kills[1]), "predict-kills": lambda: predict_kills(work, kills[2], rng),
            "set-kills": lambda: training_set_kills(work, kills[3], rng), "memory": lambda: memory_check(kills[4]),
            "orientation": lambda: orientation_round_trip(work),
        }
        if args.only:
            chosen = {k: v for k, v in chosen.items() if k in args.only or (k == "inputs" and "sizes" in args.only)}
        for run in chosen.values():
            start = time.perf_counter()
            section = run()
            section.seconds = time.perf_counter() - start
            sections.append(section)
            print(f"{section.name}: {section.passed()} of {len(section.rows)} passed ({section.seconds:.0f} s)",
                  flush=True)
            for row in section.rows:
                if not row["ok"]:
                    print(f"  FAILED: {row}", flush=True)
    meta = {"quick": args.quick, "seed": args.seed, "work": str(args.work or scratch),
            "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores, torch {torch.__version__}",
            "date": time.strftime("%Y-%m-%d"), "minutes": (time.perf_counter() - t0) / 60}
    write_text(args.out, markdown(sections, meta))
    figures = json.dumps({"meta": meta, "sections": [{"name": s.name, "seconds": s.seconds, "rows": s.rows}
                                                     for s in sections]}, indent=1, default=str)
    write_text(args.json, figures.replace(meta["work"].rstrip("/"), "<work>") + "\n")
    print(markdown(sections, meta).split("\n\n")[2])
    return 0 if all(s.passed() == len(s.rows) for s in sections) else 1


if __name__ == "__main__":
    sys.exit(main())
