"""napari-cascade: segment MRI and CT in napari with cascaded and nested U-Nets.

The plugin is thin: readers, writer, sample data and widgets turn calls of the napari-free engine
(:mod:`cascadeseg`) into layers. Contributions are declared in ``napari.yaml``.
"""

from cascadeseg import __version__ as __version__  # one version for the engine and the plugin
