"""distillmark: watermark language-model output and prove where text came from.

The library lives in three subpackages, imported one way only::

    distillmark.cli  ->  distillmark.verify  ->  distillmark.watermark

``import distillmark`` loads nothing heavy; import the subpackages you need.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
