"""napari-cascade: segment MRI and CT in napari with cascaded and nested U-Nets.

The plugin is thin: readers, writer, sample data and widgets turn calls of the napari-free engine
(:mod:`cascadeseg`) into layers. Contributions are declared in ``napari.yaml``.
"""

__version__ = "0.1.0"
