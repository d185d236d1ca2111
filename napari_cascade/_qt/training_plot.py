"""Live training plot: loss per step and validation Dice per pruning depth per epoch.

The dock shows an image of a matplotlib figure that a background thread draws with Agg; the GUI
thread only keeps the numbers the trainer reports (:class:`cascadeseg.training.callbacks.StepInfo`
/ ``EpochInfo``, handed over by the train widget) and paints the finished image. Drawing on the
GUI thread, even at most once a second with lines made once, cost 150-600 ms of freeze a draw on
a loaded 2-core machine while a CPU training ran (the Train dock's freeze test measured 265-614 ms
against its 200 ms bound; without the draws, 153-168 ms). The figure belongs to the drawing
thread: the GUI thread never touches it after it is made.

Draws are requested at most once a second (and at every epoch, reset, resize and finish); a request
made while a draw is running replaces any older one still waiting, so a slow machine draws less
often instead of queueing draws. The tight layout is computed when the canvas size changes or a
run starts, not on every draw (about 100 ms). The draws of those events wait until the requests
have stopped for a moment (:data:`SETTLE_QUIET_S`), which is when the GUI thread has finished the
work that came with them (docking the plot, announcing a model).
"""

from __future__ import annotations

import threading
import time
import warnings
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from qtpy.QtCore import QObject, QRect, Signal
from qtpy.QtGui import QImage, QPainter
from qtpy.QtWidgets import QLabel, QSizePolicy, QVBoxLayout, QWidget

from . import collection

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

# matplotlib is imported by the drawing thread, not with this module: the Train dock imports this
# module as it opens, and matplotlib's import took 0.25 s of that on the GUI thread. The dock
# imports these in the background meanwhile (``train_widget.import_for_first_run``).
MATPLOTLIB_MODULES = ("matplotlib.backends.backend_agg", "matplotlib.figure")

REDRAW_INTERVAL_S = 1.0
# A forced draw (a run's start or end, an epoch, a resize) waits until requests have stopped for
# this long: they come while the GUI thread docks and lays out the plot, or announces the run's
# model, and a draw then (0.1-0.2 s of Python taking the interpreter lock in 1 ms turns) slowed
# every Python call of that work (Train's start with a CT open: 298-358 ms of freeze).
SETTLE_QUIET_S = 0.2
# The figure's size before the canvas has one (a plot not yet shown), and its resolution.
DEFAULT_SIZE_PX = (500, 320)
DPI = 100.0


def format_duration(seconds: float | None) -> str:
    """``"1:05:09"`` / ``"4:02"`` for a time left; ``"?"`` when the trainer cannot tell yet."""
    if seconds is None:
        return "?"
    seconds = int(round(max(0.0, seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


@dataclass(frozen=True)
class PlotData:
    """What one draw shows: a copy of the numbers, made on the GUI thread."""

    run: int  # counts resets: a new run clears the per-depth lines and legends
    size_px: tuple[int, int]
    device_pixel_ratio: float
    step_numbers: tuple[int, ...] = ()
    step_losses: tuple[float, ...] = ()
    epoch_steps: tuple[int, ...] = ()  # where each epoch's mean sits on the step axis
    epoch_losses: tuple[float, ...] = ()
    dice_per_depth: dict[int, tuple[tuple[int, float], ...]] = field(default_factory=dict)
    relayout: bool = False
    settle: bool = False  # drawn once requests have stopped for SETTLE_QUIET_S


class _ImageReady(QObject):
    """Hands a drawn image from the drawing thread to the GUI thread (a queued signal)."""

    image = Signal(object)


class FigureDrawer:
    """The figure and the thread that draws it.

    Only the drawing thread touches the figure once it exists (matplotlib figures are not
    thread-safe); the GUI thread hands over :class:`PlotData` with :meth:`request` and gets a
    ``QImage`` back through :attr:`ready`.
    """

    def __init__(self) -> None:
        self.ready = _ImageReady()
        self.draw_count = 0
        self.figure: Figure | None = None
        self.loss_axes: Axes | None = None
        self.dice_axes: Axes | None = None
        self._step_line: Line2D | None = None
        self._epoch_line: Line2D | None = None
        self._depth_lines: dict[int, Line2D] = {}
        self._drawn_run = -1
        self._drawn_size: tuple[int, int, float] | None = None
        self._pending: PlotData | None = None
        self._busy = False
        self._stopped = False
        self._condition = threading.Condition()
        # From a request until the thread has drawn what was asked, its garbage is collected on
        # the GUI thread (collection.py); idle, it runs no Python.
        self._holding = False
        self._thread = threading.Thread(target=self._loop, name="napari-cascade training plot", daemon=True)
        self._thread.start()

    # -- GUI thread ---------------------------------------------------------------------------
    def request(self, data: PlotData) -> None:
        """Draw ``data`` when the thread is free; replaces a request still waiting (keeping its
        re-layout and settling, which the newer one must not lose)."""
        with self._condition:
            if self._pending is not None:
                relayout, settle = data.relayout or self._pending.relayout, data.settle or self._pending.settle
                data = replace(data, relayout=relayout, settle=settle)
            self._pending = data
            if not self._holding and not self._stopped:
                collection.hold()
                self._holding = True
            self._condition.notify()

    def wait_idle(self, timeout_s: float = 30.0) -> bool:
        """Block until every request so far is drawn (tests, screenshots). False on timeout."""
        deadline = time.monotonic() + timeout_s
        with self._condition:
            while self._pending is not None or self._busy:
                left = deadline - time.monotonic()
                if left <= 0 or self._stopped:
                    return False
                self._condition.wait(left)
        return True

    def stop(self) -> None:
        """End the thread after the draw in progress (the plot was closed)."""
        with self._condition:
            self._stopped = True
            self._pending = None
            self._condition.notify_all()

    # -- drawing thread -----------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._condition:
                while self._pending is None and not self._stopped:
                    self._condition.wait()
                while self._pending is not None and self._pending.settle and not self._stopped:
                    waiting = self._pending
                    self._condition.wait(SETTLE_QUIET_S)
                    if self._pending is waiting:
                        break
                if self._stopped:
                    self._release_hold()
                    return
                assert self._pending is not None
                data, self._pending, self._busy = self._pending, None, True
            try:
                image = self._draw(data)
            except Exception as exc:  # a failed draw must not end the thread, nor a training
                warnings.warn(f"napari-cascade: the training plot could not be drawn: {exc}", stacklevel=1)
                image = None
            with self._condition:
                self._busy = False
                stopped = self._stopped
                self._condition.notify_all()
            if image is not None and not stopped:
                self.ready.image.emit(image)
            with self._condition:
                if self._pending is None:
                    self._release_hold()

    def _release_hold(self) -> None:
        """(With the condition held.) The drawing asked for is done: automatic collection may
        come back (collection.py)."""
        if self._holding:
            self._holding = False
            collection.release()

    def _make_figure(self) -> None:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        figure = Figure(figsize=(DEFAULT_SIZE_PX[0] / DPI, DEFAULT_SIZE_PX[1] / DPI), dpi=DPI)
        FigureCanvasAgg(figure)
        loss_axes, dice_axes = figure.add_subplot(1, 2, 1), figure.add_subplot(1, 2, 2)
        loss_axes.set_title("training loss", fontsize=9)
        loss_axes.set_xlabel("step", fontsize=8)
        dice_axes.set_title("validation Dice per pruning depth", fontsize=9)
        dice_axes.set_xlabel("epoch", fontsize=8)
        dice_axes.set_ylim(0.0, 1.0)
        for axes in (loss_axes, dice_axes):
            axes.tick_params(labelsize=7)
        (self._step_line,) = loss_axes.plot([], [], lw=0.8, alpha=0.6, label="per step")
        (self._epoch_line,) = loss_axes.plot([], [], "o-", ms=3, label="epoch mean")
        self.figure, self.loss_axes, self.dice_axes = figure, loss_axes, dice_axes

    def _draw(self, data: PlotData) -> QImage:
        if self.figure is None:
            self._make_figure()
        figure, loss_axes, dice_axes = self.figure, self.loss_axes, self.dice_axes
        assert figure is not None and loss_axes is not None and dice_axes is not None
        assert self._step_line is not None and self._epoch_line is not None
        relayout = data.relayout
        if data.run != self._drawn_run:  # a new run starts from empty axes
            self._drawn_run = data.run
            for line in self._depth_lines.values():
                line.remove()
            self._depth_lines = {}
            for axes in (loss_axes, dice_axes):
                if axes.get_legend() is not None:
                    axes.get_legend().remove()
        size = (*data.size_px, data.device_pixel_ratio)
        if size != self._drawn_size:
            self._drawn_size = size
            figure.set_dpi(DPI * data.device_pixel_ratio)
            figure.set_size_inches(data.size_px[0] / DPI, data.size_px[1] / DPI)
            relayout = True
        self._step_line.set_data(data.step_numbers, data.step_losses)
        self._epoch_line.set_data(data.epoch_steps, data.epoch_losses)
        if data.step_numbers and loss_axes.get_legend() is None:
            loss_axes.legend(fontsize=7)
        new_depth = False
        for depth, points in sorted(data.dice_per_depth.items()):
            line = self._depth_lines.get(depth)
            if line is None:
                # One colour per depth in every run (the colour cycle is not reset between runs).
                (line,) = dice_axes.plot([], [], "o-", ms=3, label=f"L{depth}", color=f"C{(depth - 1) % 10}")
                self._depth_lines[depth] = line
                new_depth = True
            line.set_data([p[0] for p in points], [p[1] for p in points])
        if new_depth:
            dice_axes.legend(fontsize=7)
        for axes in (loss_axes, dice_axes):
            axes.relim()
        loss_axes.autoscale_view()
        dice_axes.autoscale_view(scaley=False)  # Dice stays on 0..1
        if relayout:
            # On a canvas too small for any margins matplotlib keeps the last ones and warns; a
            # dock dragged small is not worth a warning on every resize.
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", "Tight layout not applied", UserWarning)
                figure.tight_layout()
        canvas = figure.canvas
        canvas.draw()
        width, height = canvas.get_width_height(physical=True)
        # copy(): the QImage owns its pixels, not matplotlib's buffer (redrawn by the next draw).
        image = QImage(canvas.buffer_rgba(), width, height, 4 * width, QImage.Format.Format_RGBA8888).copy()
        image.setDevicePixelRatio(data.device_pixel_ratio)
        self.draw_count += 1
        return image


def warm_up_drawing() -> None:
    """Draw a small figure with text once, off the GUI thread, as the Train dock opens: matplotlib
    finds and loads its fonts at the first draw of a process (about 0.3 s here), which otherwise
    happened while the first Train docked the plot and started the training, the three competing
    for the interpreter lock in the freeze of Train's first press."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(2.0, 1.0), dpi=DPI)
    canvas = FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    axes.set_title("warm-up", fontsize=9)
    axes.plot([0, 1], [0, 1], "o-", label="L1")
    axes.legend(fontsize=7)
    canvas.draw()


class PlotCanvas(QWidget):
    """Paints the latest drawn image, scaled to the widget while a redraw for a new size runs."""

    def __init__(self, on_resize: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.image: QImage | None = None
        self._on_resize = on_resize
        self.setMinimumHeight(220)  # a bottom dock would otherwise squash it to a line
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)

    def show_image(self, image: QImage) -> None:
        self.image = image
        self.update()

    def paintEvent(self, event: Any) -> None:  # noqa: N802 (Qt's name)
        if self.image is None:
            return
        painter = QPainter(self)
        painter.drawImage(QRect(0, 0, self.width(), self.height()), self.image)
        painter.end()

    def resizeEvent(self, event: Any) -> None:  # noqa: N802 (Qt's name)
        super().resizeEvent(event)
        self._on_resize()


class TrainingPlot(QWidget):
    """Two panels (training loss; validation Dice per depth) and a status line."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.drawer = FigureDrawer()
        self.canvas = PlotCanvas(on_resize=lambda: self._redraw(force=True, relayout=True))
        self.drawer.ready.image.connect(self.canvas.show_image)
        drawer = self.drawer
        self.destroyed.connect(lambda *_: drawer.stop())
        self.status = QLabel("No training yet.")
        self.status.setWordWrap(True)
        layout = QVBoxLayout(self)
        layout.addWidget(self.status)
        layout.addWidget(self.canvas, 1)
        self._run = 0
        self.reset()

    # The figure and its lines belong to the drawing thread: read them only after ``wait_drawn``.
    @property
    def figure(self) -> Figure | None:
        return self.drawer.figure

    @property
    def draw_count(self) -> int:
        """Draws finished so far (all runs)."""
        return self.drawer.draw_count

    def wait_drawn(self, timeout_s: float = 30.0) -> bool:
        """Block until the numbers reported so far are drawn (tests and screenshots)."""
        return self.drawer.wait_idle(timeout_s)

    def closeEvent(self, event: Any) -> None:  # noqa: N802 (Qt's name)
        self.drawer.stop()
        super().closeEvent(event)

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
        self._last_draw = 0.0
        self._run += 1
        self.status.setText(f"{title}: starting…" if title else "No training yet.")
        self._redraw(force=True, relayout=True)

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

    def _canvas_size(self) -> tuple[int, int]:
        width, height = self.canvas.width(), self.canvas.height()
        if not self.canvas.isVisible() or width < 2 or height < 2:
            return DEFAULT_SIZE_PX
        return width, height

    def _redraw(self, force: bool = False, relayout: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_draw < REDRAW_INTERVAL_S:
            return
        self._last_draw = now
        epoch_steps: tuple[int, ...] = ()
        if self.epoch_numbers and self.last_step is not None:
            # Epoch means sit at the step where each epoch ended.
            steps_per_epoch = max(1, int(self.last_step.steps_per_epoch))
            epoch_steps = tuple(e * steps_per_epoch for e in self.epoch_numbers)
        self.drawer.request(
            PlotData(
                run=self._run,
                size_px=self._canvas_size(),
                device_pixel_ratio=float(self.canvas.devicePixelRatioF()),
                step_numbers=tuple(self.step_numbers),
                step_losses=tuple(self.step_losses),
                epoch_steps=epoch_steps,
                epoch_losses=tuple(self.epoch_losses) if epoch_steps else (),
                dice_per_depth={depth: tuple(points) for depth, points in self.dice_per_depth.items()},
                relayout=relayout,
                settle=force,
            )
        )
