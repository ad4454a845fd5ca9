"""napari-xmag: cross-magnification distillation (XMAG) for whole-slide pathology in napari."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("napari-xmag")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

__all__ = ["__version__"]
