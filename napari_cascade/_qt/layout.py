"""Dock layouts that fit a 1366x768 laptop screen with all four docks open.

napari stacks docks of one area on top of each other; a dock taller than its share of the window
either grows the window past the screen or is squashed until its buttons are clipped. Every
napari-cascade dock therefore puts its content in a vertical scroll area (:func:`scrollable`):
the dock asks for little height, never clips, and scrolls when it is short of room. Groups a user
needs rarely can fold away (:class:`Section`), so the common path fits without scrolling.
"""

from __future__ import annotations

from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QComboBox,
    QFormLayout,
    QFrame,
    QHBoxLayout,
    QLayout,
    QScrollArea,
    QSizePolicy,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

# Height a dock asks for at least: its first rows stay readable when docks share a column.
MIN_DOCK_HEIGHT = 160
# Characters a combo box shows at least (longer entries are elided; the list shows them whole).
MIN_COMBO_CHARACTERS = 14


def scrollable(dock: QWidget, content: QWidget | QLayout) -> QScrollArea:
    """Put ``content`` (a widget, or a layout to host in one) into a vertical scroll area that
    fills ``dock``; returns the scroll area.

    The dock asks for the content's smallest width and :data:`MIN_DOCK_HEIGHT` of height, so
    napari can stack four docks in a 768-pixel window; what does not fit scrolls (sideways too,
    when a dock column is made narrower than a row: a row is never cut off).
    """
    if isinstance(content, QLayout):
        holder = QWidget()
        holder.setLayout(content)
        content = holder
    scroll = QScrollArea(dock)
    scroll.setObjectName("cascade_scroll")
    scroll.setWidgetResizable(True)
    scroll.setFrameShape(QFrame.NoFrame)
    scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarAsNeeded)
    # Combo boxes ask for their longest entry's width (a model list, a long layer name): let them
    # shrink to a few characters so a dock column of a laptop screen still shows every row whole.
    for combo in content.findChildren(QComboBox):
        combo.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
        combo.setMinimumContentsLength(MIN_COMBO_CHARACTERS)
        combo.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Fixed)
    scroll.setWidget(content)
    # A scroll area's own size hint is tiny: ask for the content's smallest width (no row is cut)
    # and a few rows of height; the rest scrolls.
    scroll.setMinimumWidth(content.minimumSizeHint().width() + scroll.verticalScrollBar().sizeHint().width())
    scroll.setMinimumHeight(MIN_DOCK_HEIGHT)
    outer = dock.layout() or QVBoxLayout(dock)
    outer.setContentsMargins(0, 0, 0, 0)
    outer.addWidget(scroll)
    return scroll


def hbox(*widgets: QWidget, grow: QWidget | None = None) -> QHBoxLayout:
    """The docks' rows of widgets side by side (a combo and its button, a pair of tools), left to
    right; ``grow``, one of them, takes the spare width."""
    row = QHBoxLayout()
    for widget in widgets:
        row.addWidget(widget, 1 if widget is grow else 0)
    return row


FormRow = QWidget | QLayout | tuple[str, QWidget | QLayout]


def form(*rows: FormRow, parent: QWidget | None = None) -> QFormLayout:
    """The docks' labelled rows, top to bottom: ``("label:", widget or row)``, or a widget alone
    across the row (a check box, a button). ``parent``: the group box the form fills."""
    layout = QFormLayout(parent) if parent is not None else QFormLayout()
    for row in rows:
        if isinstance(row, tuple):
            layout.addRow(*row)
        else:
            layout.addRow(row)
    return layout


class Section(QWidget):
    """A titled group that folds away with a click on its title (open by default)."""

    def __init__(self, title: str, body: QWidget | QLayout, expanded: bool = True,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.toggle = QToolButton()
        self.toggle.setText(title)
        self.toggle.setCheckable(True)
        self.toggle.setToolButtonStyle(Qt.ToolButtonTextBesideIcon)
        self.toggle.setStyleSheet("QToolButton { border: none; font-weight: bold; }")
        if isinstance(body, QLayout):
            holder = QWidget()
            holder.setLayout(body)
            body = holder
        self.body = body
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(2)
        layout.addWidget(self.toggle)
        layout.addWidget(body)
        self.toggle.toggled.connect(self.set_expanded)
        self.toggle.setChecked(expanded)
        self.set_expanded(expanded)

    @property
    def expanded(self) -> bool:
        return self.toggle.isChecked()

    def set_expanded(self, expanded: bool) -> None:
        self.toggle.setArrowType(Qt.DownArrow if expanded else Qt.RightArrow)
        if self.toggle.isChecked() != expanded:
            self.toggle.setChecked(expanded)
        self.body.setVisible(expanded)
