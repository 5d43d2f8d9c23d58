"""Read and write daf datasets: axes, 0D items, 1D and 2D data, in two stores.

* :mod:`opchain.daf.files`: a directory of plain files (the reference daf files format).
* :mod:`opchain.daf.h5`: one HDF5 file (the reference daf h5fs layout).

Both share the :class:`Reader` / :class:`Writer` interface of :mod:`opchain.daf.interface`;
:func:`open_reader` picks the store from what is on disk.
"""

from opchain.daf.files import FilesReader, FilesWriter
from opchain.daf.interface import (
    DTYPES,
    RESERVED_ITEMS,
    Reader,
    Writer,
    open_reader,
    split_data1d_name,
    split_data2d_name,
)

__all__ = [
    "DTYPES",
    "RESERVED_ITEMS",
    "FilesReader",
    "FilesWriter",
    "H5Reader",
    "H5Writer",
    "Reader",
    "Writer",
    "open_reader",
    "split_data1d_name",
    "split_data2d_name",
]


def __getattr__(name: str) -> object:
    """The HDF5 store on first use: importing h5py costs every job start-up, most never need it."""
    if name in ("H5Reader", "H5Writer"):
        from opchain.daf import h5

        return getattr(h5, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
