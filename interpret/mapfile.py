"""Maps written batch by batch into one NetCDF file, so no job holds all its maps.

A map job over hundreds of images at 434 px makes gigabytes of maps (the
decoder's attention alone is queries x heads x 124 x 124 cells per image):
:class:`MapWriter` appends each batch's dataset along ``image`` (an
unlimited dimension) to a file written under a temporary name and renamed
into place when the last batch is in, so an interrupted job leaves nothing
that looks complete. The file reads back as the dataset the whole job
would have made at once (:func:`xarray.open_dataset`, read lazily).
"""
from __future__ import annotations

from pathlib import Path

import netCDF4
import numpy as np
import xarray as xr

from model.errors import InputError
from model.files import atomic_path

#: The dimension batches are appended along
APPENDED = "image"


def check_maps_path(out: str | Path) -> Path:
    """``out`` as a Path, refused (one line) unless it names a NetCDF file."""
    out = Path(out)
    if out.suffix != ".nc":
        raise InputError(out, "maps are written as NetCDF: use a .nc file name")
    return out


class MapWriter:
    """Append datasets along ``image`` to one NetCDF file, atomically; use as a context manager.

    The first dataset fixes the variables, their dimensions and every
    coordinate other than ``image``; a later batch that differs is a bug,
    refused with :class:`ValueError`. Nothing is at ``out`` until the
    ``with`` block ends without an error.
    """

    def __init__(self, out: str | Path):
        self.out = check_maps_path(out)
        self.n_images = 0
        self._layout: dict[str, tuple[str, ...]] | None = None
        self._coords: dict[str, np.ndarray] = {}
        self._atomic = atomic_path(self.out)
        self._tmp: Path | None = None

    def __enter__(self) -> "MapWriter":
        self._tmp = self._atomic.__enter__()
        return self

    def __exit__(self, kind, value, traceback) -> bool | None:
        if kind is None and self._layout is None:  # an empty file must not be renamed into place
            value = ValueError("no maps were written")
            self._atomic.__exit__(ValueError, value, None)
            raise value
        return self._atomic.__exit__(kind, value, traceback)

    def append(self, ds: xr.Dataset) -> None:
        """Add one batch of images (``ds`` has an ``image`` dimension)."""
        if APPENDED not in ds.dims:
            raise ValueError(f"a batch of maps needs an {APPENDED!r} dimension")
        if self._layout is None:
            ds.to_netcdf(self._tmp, unlimited_dims=[APPENDED])
            self._layout = {name: v.dims for name, v in ds.variables.items()}
            self._coords = {name: c.values for name, c in ds.coords.items() if APPENDED not in c.dims}
            self.n_images = ds.sizes[APPENDED]
            return
        self._check_same_layout(ds)
        start, stop = self.n_images, self.n_images + ds.sizes[APPENDED]
        with netCDF4.Dataset(self._tmp, "a") as nc:
            for name, dims in self._layout.items():
                if APPENDED not in dims:
                    continue
                values = ds[name].transpose(*dims).values
                if values.dtype.kind in "US":
                    values = values.astype(object)  # variable-length strings, as xarray wrote them
                nc.variables[name][start:stop] = values
        self.n_images = stop

    def _check_same_layout(self, ds: xr.Dataset) -> None:
        layout = {name: v.dims for name, v in ds.variables.items()}
        if set(layout) != set(self._layout) or any(set(layout[k]) != set(self._layout[k]) for k in layout):
            raise ValueError("a batch of maps has other variables or dimensions than the first")
        for name, values in self._coords.items():
            if not np.array_equal(ds[name].values, values):
                raise ValueError(f"a batch of maps has other {name!r} coordinates than the first")
