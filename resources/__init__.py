"""Shipped data of napari-cascade, installed as ``cascadeseg.resources``.

``configs/`` (training configs), ``sample/`` (the bundled sample scan with its mask and licence) and
``checkpoints/`` (default models with their model cards). Read them through
:func:`cascadeseg.resources_path`-style ``importlib.resources`` look-ups, never by a path relative
to the repository, so they are found from an installed wheel too.
"""
