"""Live training plot: loss per step and validation Dice per pruning depth per epoch.

A matplotlib ``FigureCanvasQTAgg`` in a dock. It only draws what the trainer reports through
:class:`cascadeseg.training.callbacks.StepInfo` / ``EpochInfo`` (handed over to the GUI thread by
the train widget); it computes nothing itself. Everything it draws runs on the GUI thread, so a
redraw only moves the data of lines made once and draws at most once a second: clearing and
re-plotting both axes with a tight layout on every draw, three times a second, cost 150 ms a draw
and a third of the GUI thread while a CPU training ran (issue 18's Train dock freezes). The tight
layout is computed when the canvas is resized or a run starts, not on every draw.
"""

from __future__ import annotations

import time
import warnings
from typing import TYPE_CHECKING, Any

from qtpy.QtWidgets import QLabel, QVBoxLayout, QWidget

if TYPE_CHECKING:
    from matplotlib.lines import Line2D

# matplotlib is imported when a plot is made, not with this module: the Train dock imports this
# module as it opens, and matplotlib's import took 0.25 s of that on the GUI thread. The dock
# imports these in the background meanwhile (``train_widget.import_for_first_run``).
MATPLOTLIB_MODULES = ("matplotlib.backends.backend_qtagg", "matplotlib.figure")


REDRAW_INTERVAL_S = 1.0


def format_duration(seconds: float | None) -> str:
    """``"1:05:09"`` / ``"4:02"`` for a time left; ``"?"`` when the trainer cannot tell yet."""
    if seconds is None:
        return "?"
    seconds = int(round(max(0.0, seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class TrainingPlot(QWidget):
    """Two panels (training loss; validation Dice per depth) and a status line."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.figure = Figure(figsize=(5.0, 3.2))
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(220)  # a bottom dock would otherwise squash it to a line
        self.loss_axes = self.figure.add_subplot(1, 2, 1)
        self.dice_axes = self.figure.add_subplot(1, 2, 2)
        self.loss_axes.set_title("training loss", fontsize=9)
        self.loss_axes.set_xlabel("step", fontsize=8)
        self.dice_axes.set_title("validation Dice per pruning depth", fontsize=9)
        self.dice_axes.set_xlabel("epoch", fontsize=8)
        self.dice_axes.set_ylim(0.0, 1.0)
        for axes in (self.loss_axes, self.dice_axes):
            axes.tick_params(labelsize=7)
        (self._step_line,) = self.loss_axes.plot([], [], lw=0.8, alpha=0.6, label="per step")
        (self._epoch_line,) = self.loss_axes.plot([], [], "o-", ms=3, label="epoch mean")
        self._depth_lines: dict[int, Line2D] = {}
        self.canvas.mpl_connect("resize_event", lambda _event: self._fit_layout())
        self.status = QLabel("No training yet.")
        self.status.setWordWrap(True)
        layout = QVBoxLayout(self)
        layout.addWidget(self.status)
        layout.addWidget(self.canvas, 1)
        self.reset()

    # -- data ---------------------------------------------------------------------------------
    def reset(self, title: str = "") -> None:
        """Clear the curves for a new run."""
        self.title = title
        self.step_numbers: list[int] = []
        self.step_losses: list[float] = []
        self.epoch_numbers: list[int] = []
        self.epoch_losses: list[float] = []
        self.dice_per_depth: dict[int, list[tuple[int, float]]] = {}
        self.last_step: Any = None
        self.last_epoch: Any = None
        self.draw_count = 0
        self._last_draw = 0.0
        for line in self._depth_lines.values():
            line.remove()
        self._depth_lines = {}
        for axes in (self.loss_axes, self.dice_axes):
            if axes.get_legend() is not None:
                axes.get_legend().remove()
        self.status.setText(f"{title}: starting…" if title else "No training yet.")
        self._fit_layout()
        self._redraw(force=True)

    def add_step(self, info: Any) -> None:
        """A :class:`StepInfo` (optimiser step) from the trainer. A step count that starts again
        (the calibration rebuilt the network narrower after timing its first steps) drops the
        earlier network's points: they were another network's loss."""
        if self.step_numbers and int(info.step) <= self.step_numbers[-1]:
            self.step_numbers, self.step_losses = [], []
        self.last_step = info
        self.step_numbers.append(int(info.step))
        self.step_losses.append(float(info.loss))
        self._update_status()
        self._redraw()

    def add_epoch(self, info: Any) -> None:
        """An :class:`EpochInfo` (validated epoch) from the trainer."""
        self.last_epoch = info
        epoch = int(info.epoch) + 1  # shown 1-based, as the status line counts
        self.epoch_numbers.append(epoch)
        self.epoch_losses.append(float(info.train_loss))
        for depth, dice in sorted(info.dice_per_depth.items()):
            self.dice_per_depth.setdefault(int(depth), []).append((epoch, float(dice)))
        self._update_status()
        self._redraw(force=True)

    def finish(self, text: str) -> None:
        """Final status (done, cancelled, failed), keeping the last numbers, and a full redraw."""
        numbers = self.status_text()
        text = f"{text} — last: {numbers}" if numbers else text
        self.status.setText(f"{self.title}: {text}" if self.title else text)
        self._redraw(force=True)

    # -- display ------------------------------------------------------------------------------
    def status_text(self) -> str:
        parts = []
        step, epoch = self.last_step, self.last_epoch
        if step is not None:
            parts.append(f"epoch {step.epoch + 1}, step {step.step_in_epoch}/{step.steps_per_epoch}")
            parts.append(f"loss {step.loss:.3f}")
            parts.append(f"{step.samples_per_second:.1f} samples/s")
            parts.append(f"{format_duration(step.time_left_seconds)} left")
        if epoch is not None and epoch.dice_per_depth:
            parts.append(
                f"best val Dice {epoch.best_dice:.3f} (epoch {epoch.best_epoch + 1}, "
                f"recommended L{epoch.recommended_depth})"
            )
        return " · ".join(parts)

    def _update_status(self) -> None:
        text = self.status_text()
        self.status.setText(f"{self.title}: {text}" if self.title else text)

    def _fit_layout(self) -> None:
        """Margins that fit the titles and tick labels (matplotlib's tight layout: about 100 ms,
        so only when the canvas is resized or a run starts, never per draw)."""
        if self.canvas.width() > 1 and self.canvas.height() > 1:
            # On a canvas too small for any margins matplotlib keeps the last ones and warns; a
            # dock dragged small is not worth a warning on every resize.
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", "Tight layout not applied", UserWarning)
                self.figure.tight_layout()

    def _redraw(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_draw < REDRAW_INTERVAL_S:
            return
        self._last_draw = now
        self._step_line.set_data(self.step_numbers, self.step_losses)
        if self.epoch_numbers and self.last_step is not None:
            # Epoch means sit at the step where each epoch ended.
            steps_per_epoch = max(1, int(self.last_step.steps_per_epoch))
            self._epoch_line.set_data([e * steps_per_epoch for e in self.epoch_numbers], self.epoch_losses)
        else:
            self._epoch_line.set_data([], [])
        if self.step_numbers and self.loss_axes.get_legend() is None:
            self.loss_axes.legend(fontsize=7)
        new_depth = False
        for depth, points in sorted(self.dice_per_depth.items()):
            line = self._depth_lines.get(depth)
            if line is None:
                # One colour per depth in every run (the colour cycle is not reset between runs).
                (line,) = self.dice_axes.plot([], [], "o-", ms=3, label=f"L{depth}", color=f"C{(depth - 1) % 10}")
                self._depth_lines[depth] = line
                new_depth = True
            line.set_data([p[0] for p in points], [p[1] for p in points])
        if new_depth:
            self.dice_axes.legend(fontsize=7)
        for axes in (self.loss_axes, self.dice_axes):
            axes.relim()
        self.loss_axes.autoscale_view()
        self.dice_axes.autoscale_view(scaley=False)  # Dice stays on 0..1
        self.canvas.draw_idle()
        self.draw_count += 1
