"""cascadeseg: the napari-free engine of napari-cascade.

Reading and writing scans (:mod:`cascadeseg.io`), preprocessing, the model zoo of cascaded and
nested U-Nets (:mod:`cascadeseg.models`), losses, metrics, inference, training and the command
line. Nothing in this package imports napari or Qt.
"""

__version__ = "0.1.0"
