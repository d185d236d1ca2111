"""Honest splits and safe run folders on real LGG patients (issue 21): versions and studies of one
patient on one side of every split, one run per folder, and a run killed (SIGKILL, no cleanup) at
each step of its start and of the checkpoint swap leaves a folder that resumes or is cleanly
refused with the remedy."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest

from cascadeseg import _atomic
from cascadeseg.errors import DatasetError, OutputExistsError, RunFolderBusyError
from cascadeseg.io import load_labels, load_volume
from cascadeseg.io.dataset import patient_keys
from cascadeseg.training.config import TrainConfig
from cascadeseg.training.run_folder import OWNER_FILE, claim_run_folder
from cascadeseg.training.split import patient_groups, split_by_patient
from cascadeseg.training.trainer import train

# Held-out patients of the shipped LGG models (fine-tuning from them validates on unseen patients).
PATIENTS = ["TCGA_CS_5397_20010315", "TCGA_CS_6665_20010817", "TCGA_DU_6404_19850629", "TCGA_HT_7692_19960724",
            "TCGA_DU_5851_19950428"]
TINY = {"base_width": 4, "levels": 3}


def _cropped_case(root: Path, case: str, slices: int = 10):
    image = load_volume(root / "imagesTr" / f"{case}_0000.nii.gz")
    labels = load_labels(root / "labelsTr" / f"{case}.nii.gz", reference=image)
    z = np.flatnonzero(labels.array.any(axis=(1, 2)))
    lo = max(0, min(int(z.mean()) - slices // 2, labels.array.shape[0] - slices))
    return (image.with_array(image.array[:, lo:lo + slices].copy()),
            labels.with_array(labels.array[lo:lo + slices].copy()))


@pytest.fixture(scope="module")
def lgg_set(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A local training set of 5 real LGG patients (10 tumour slices each), each added twice, as
    "Add to training set" does when a corrected case is added again."""
    from cascadeseg.editing import TrainingSet

    folder = tmp_path_factory.mktemp("set") / "training_set"
    training_set = TrainingSet(folder)
    for case in PATIENTS:
        image, labels = _cropped_case(shared_data / "lgg-flair", case)
        for _ in range(2):
            training_set.add_case(image, labels, case)
    return folder


def tiny_config(data, run_dir: Path, **changes) -> TrainConfig:
    values = dict(data=str(data), run_dir=str(run_dir), model="unet", dims=2, model_options=dict(TINY),
                  inplane_size=64, batch_size=4, epochs=2, steps_per_epoch=2, val_fraction=0.4, seed=0, threads=1)
    values.update(changes)
    return TrainConfig(**values)


def log_epochs(run_dir: Path) -> list[str]:
    with open(run_dir / "log.csv", newline="") as handle:
        return [row["epoch"] for row in csv.DictReader(handle)]


def leftovers(run_dir: Path) -> list[str]:
    return sorted(p.name for p in run_dir.iterdir() if p.name.startswith(".") and "lock" not in p.name)


# -- splits ----------------------------------------------------------------------------------------

def test_versions_of_a_case_never_straddle_the_split(lgg_set: Path, tmp_path: Path) -> None:
    keys = patient_keys(lgg_set)
    assert keys[f"{PATIENTS[0]}_v2"] == keys[PATIENTS[0]] == "TCGA_CS_5397"  # recorded in dataset.json
    ids = sorted(keys)
    assert len(ids) == 10
    for seed in range(25):
        split = split_by_patient(ids, 0.4, seed, groups=patient_groups(str(lgg_set)))
        for case in PATIENTS:
            assert (case in split.val) == (f"{case}_v2" in split.val), (seed, case)
        assert len(split.val) == 4  # 2 of 5 patients, both versions each
    # The trainer draws the same split (and writes it): no scan validates a copy of itself.
    train(tiny_config(lgg_set, tmp_path / "run", epochs=1, steps_per_epoch=1))
    written = json.loads((tmp_path / "run" / "split.json").read_text())
    assert {c.removesuffix("_v2") for c in written["val"]}.isdisjoint({c.removesuffix("_v2") for c in written["train"]})


def test_versions_group_even_without_recorded_keys() -> None:
    ids = [f"{p}{suffix}" for p in PATIENTS for suffix in ("", "_v2", "_v3")]
    for seed in range(10):
        split = split_by_patient(ids, 0.4, seed)
        for case in PATIENTS:
            assert len({c in split.val for c in ids if c.startswith(case)}) == 1


# -- one run per folder ----------------------------------------------------------------------------

class _HoldAtFirstStep:
    """Keeps a training in its first step until the test lets it go."""

    def __init__(self) -> None:
        self.reached, self.go = threading.Event(), threading.Event()

    def on_step(self, info) -> None:
        if not self.reached.is_set():
            self.reached.set()
            assert self.go.wait(60)


def _run_in_thread(config: TrainConfig, hold: _HoldAtFirstStep) -> tuple[threading.Thread, dict]:
    outcome: dict = {}

    def target() -> None:
        try:
            outcome["result"] = train(config, callbacks=hold)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            outcome["error"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    assert hold.reached.wait(120)
    return thread, outcome


@pytest.mark.parametrize("resume", [False, True], ids=["two-trainings", "two-resumes"])
def test_a_second_writer_is_refused_and_the_first_is_unharmed(lgg_set: Path, tmp_path: Path, resume: bool) -> None:
    run_dir = tmp_path / "run"
    if resume:
        train(tiny_config(lgg_set, run_dir, epochs=1))
    config = tiny_config(lgg_set, run_dir, epochs=3 if resume else 2, resume=resume)
    hold = _HoldAtFirstStep()
    thread, outcome = _run_in_thread(config, hold)
    try:
        second = tiny_config(lgg_set, run_dir, epochs=3 if resume else 2, resume=resume)
        with pytest.raises(RunFolderBusyError, match=r"is in use by process \d+ on .* one run per folder"):
            train(second)
    finally:
        hold.go.set()
        thread.join(120)
    assert "error" not in outcome, outcome.get("error")
    assert log_epochs(run_dir) == (["1", "2", "3"] if resume else ["1", "2"])
    assert not (run_dir / OWNER_FILE).exists() and leftovers(run_dir) == []
    # finished: a fresh run is refused (never overwritten), a resume is welcome
    with pytest.raises(OutputExistsError, match="resume it with --resume"):
        train(tiny_config(lgg_set, run_dir))


def test_a_claim_left_by_a_killed_process_is_taken_over(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    run_dir = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from cascadeseg.training.run_folder import claim_run_folder
        claim = claim_run_folder({str(run_dir)!r}, resume=False)  # held while the process lives
        print("held", flush=True)
        time.sleep(120)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunFolderBusyError, match=f"process {holder.pid} on"):
            claim_run_folder(run_dir, resume=False)
    finally:
        holder.kill()  # SIGKILL: no cleanup, the owner record stays behind
        holder.wait()
    with claim_run_folder(run_dir, resume=False) as claim:
        assert any(f"took over the run folder from process {holder.pid}" in n for n in claim.notes)
    assert f"process {holder.pid}" in caplog.text


# -- a SIGKILL at each step of the start and of the checkpoint swap --------------------------------

_KILL_SCRIPT = """
import os, signal, sys
from pathlib import Path
import cascadeseg.training.split as split
import cascadeseg.training.trainer as trainer
from cascadeseg.training.config import TrainConfig

config = TrainConfig(**{config!r})
step = {step!r}
die = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
if step == "data load":
    trainer.read_cases = die
elif step == "between config and split":
    split.Split.save = die
else:
    real_replace, real_save = os.replace, trainer.torch.save
    swaps = []
    def replace(src, dst):
        if Path(dst) == Path(config.run_dir) / "last":  # the second rename of a swap of last/
            swaps.append(dst)
            if step == "between the swap renames" and len(swaps) == 2:
                die()  # the old last/ is already .last.old, the new one not yet in place
        return real_replace(src, dst)
    os.replace = replace
    saves = []
    def save(obj, f, *a, **k):
        saves.append(1)
        if step == "while staging a checkpoint" and len(saves) == 3:
            die()  # inside the staging folder of the third checkpoint written
        return real_save(obj, f, *a, **k)
    trainer.torch.save = save
    import cascadeseg.training.run_folder as run_folder
    run_folder.torch.save = save
trainer.train(config)
"""


def _killed_run(lgg_set: Path, run_dir: Path, step: str) -> None:
    config = tiny_config(lgg_set, run_dir, epochs=3).to_dict()
    done = subprocess.run([sys.executable, "-c", _KILL_SCRIPT.format(config=config, step=step)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == -9, done.stderr[-2000:]


@pytest.mark.parametrize("step", ["data load", "between config and split"])
def test_a_kill_before_the_run_started_is_refused_by_resume_and_reused_by_a_new_run(
        lgg_set: Path, tmp_path: Path, step: str) -> None:
    from cascadeseg.cli.main import main

    run_dir = tmp_path / "run"
    _killed_run(lgg_set, run_dir, step)
    assert not (run_dir / "split.json").exists()
    with pytest.raises(DatasetError, match="stopped before it started .* start it again with the same command "
                                           "without --resume"):
        train(tiny_config(lgg_set, run_dir, epochs=3, resume=True))
    assert main(["train", "--resume", "--run-dir", str(run_dir)]) == 2  # the CLI says the same, no traceback
    result = train(tiny_config(lgg_set, run_dir, epochs=1))
    assert result.epochs_completed == 1 and log_epochs(run_dir) == ["1"] and leftovers(run_dir) == []


@pytest.mark.parametrize("step", ["between the swap renames", "while staging a checkpoint"])
def test_a_kill_during_a_checkpoint_swap_resumes_with_no_leftovers(lgg_set: Path, tmp_path: Path, step: str,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    run_dir = tmp_path / "run"
    _killed_run(lgg_set, run_dir, step)
    left = leftovers(run_dir)
    if step == "between the swap renames":
        assert not (run_dir / "last").exists() and ".last.old" in left
    else:
        assert any(name.startswith(_atomic.TEMP_PREFIX) for name in left)
    result = train(tiny_config(lgg_set, run_dir, epochs=3, resume=True))
    assert result.epochs_completed == 3 and log_epochs(run_dir) == ["1", "2", "3"]
    assert leftovers(run_dir) == [] and (run_dir / "last").is_dir()
    expected = "restored last from .last.old" if step == "between the swap renames" else "killed while writing"
    assert expected in caplog.text


def test_fine_tuning_accepts_a_shipped_model_name(lgg_set: Path, tmp_path: Path) -> None:
    result = train(tiny_config(lgg_set, tmp_path / "run", model=None, model_options={}, inplane_size=None, epochs=1,
                               steps_per_epoch=1, init_checkpoint="lgg_flair_anu_net_2d"))
    card = json.loads((result.last_checkpoint / "model_card.json").read_text())
    assert card["architecture"] == "anu_net" and card["training"]["init_checkpoint"] == "lgg_flair_anu_net_2d"
