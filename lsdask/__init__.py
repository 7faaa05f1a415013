"""lsdask: run a Legacy Surveys imaging data release on Dask."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("lsdask")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
