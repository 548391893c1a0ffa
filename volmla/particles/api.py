"""Particles: solid mask -> connected components -> watershed split -> labels.

:func:`label_particles` runs these steps on a chunked volume, never holding it whole:

1. **solid mask** (:func:`volmla.particles.mask.solid_mask`): a phase volume's nonzero
   voxels, or an intensity volume above a threshold: by default (``"auto"``) denoised,
   its cupping (measured on the void) flattened, and each voxel cut half-way between the
   void level and its local solid level (the partial-volume edge; bright-phase rims
   removed), the levels from the *out-of-core* histogram; or Otsu's threshold; or a
   given value; or, for a U-Net's background / interior / boundary map
   (``threshold="interior"``, :mod:`volmla.particles.learned`), interior or boundary;
2. **interior pores filled** (:func:`volmla.particles.mask.fill_holes`; by default for
   an ``"auto"`` or ``"interior"`` mask): exact for any chunking;
3. **dust removal** (:func:`volmla.particles.mask.remove_small`): solid components
   smaller than ``min_size`` voxels are dropped (by default :data:`SPECKLE` voxels for
   an ``"auto"`` or ``"interior"`` mask, none otherwise);
4. **split touching particles** (optional, default,
   :func:`volmla.particles.split.split_touching`): a watershed of the distance map (in
   physical units) from all its maxima, maxima behind a wide neck merged
   (saddle-depth criterion, no fixed ``h``), per block with a halo derived from the
   largest distance value present; each particle keyed by its peak's global position.
   For an ``"auto"`` mask the distance map is weighted by how full of solid the scan
   looks around each voxel (:func:`volmla.particles.mask.local_fill`): the blur fills
   the creases where particles touch, widening the mask's necks, but leaves them
   greyer than the particles' insides, so the weighted saddles stay low; for an
   ``"interior"`` map it is weighted by the smoothed interior class
   (:func:`volmla.particles.learned.interior_fill`), low on the boundary layer the
   network draws between touching particles;
5. **global relabelling**: :func:`volmla.particles.label.label` in multilabel mode on the
   keys stitches the pieces of a basin across blocks (equal keys join, different keys
   stay apart) and numbers the particles ``1..n`` by their first voxel.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import dask.array as da
import xarray as xr

from volmla.engine.blocks import as_dataarray, as_volume
from volmla.engine.scratch import session_scratch, store, store_together
from volmla.errors import VolmlaError
from volmla.particles.label import Labels, check_connectivity, label
from volmla.particles.learned import check_particle_map, learned_solid
from volmla.particles.mask import auto_solid, remove_small, solid_mask
from volmla.particles.mask import fill_holes as _fill_holes
from volmla.particles.split import H_MIN, NECK, resplit_cut, split_touching
from volmla.preprocess.fov import RECORD_KEY as FOV_RECORD
from volmla.preprocess.fov import FieldOfView, fill_outside, find_field_of_view, parse_field_of_view
from volmla.types import VolumeLike

logger = logging.getLogger(__name__)

SPECKLE = 27
"""Default ``min_size`` (voxels) for a mask thresholded with ``"auto"``: a 3-voxel cube."""

__all__ = ["SPECKLE", "MinSizeError", "label_particles"]


def label_particles(
    volume: VolumeLike,
    *,
    threshold: Literal["auto", "otsu", "interior"] | float | None = "auto",
    min_size: int | None = None,
    fill_holes: bool | None = None,
    split: bool = True,
    neck: float = NECK,
    h: float = H_MIN,
    max_radius: float | None = None,
    voxel_size: float | Sequence[float] | None = None,
    connectivity: Literal[6, 18, 26] = 26,
    scratch: str | Path | None = None,
    field_of_view: FieldOfView | Literal["auto"] | str | None = "auto",
) -> Labels:
    """Label the particles of a volume: threshold, fill pores, drop dust, split, relabel.

    Parameters
    ----------
    volume
        Intensity volume (thresholded), or a phase volume whose nonzero voxels are
        solid (give ``threshold=None``). Dask, xarray or NumPy, 3-D (z, y, x).
    threshold
        ``"auto"`` (denoised, half-way between the void and solid modes of the
        out-of-core histogram), ``"otsu"``, a value (solid is ``> value``), None
        (solid is nonzero), or ``"interior"``: the volume is a U-Net's background (0) /
        interior (1) / boundary (2) map (:mod:`volmla.particles.learned`), solid is
        nonzero and the split's distance map is weighted by the smoothed interior (a
        DataArray whose ``phases`` attribute names other phases is refused). A value at
        or above every voxel (no solid) or below every voxel (no void) is refused (one
        pass).
    min_size
        Drop solid components smaller than this many voxels (0: keep all). None: 27
        (:data:`SPECKLE`) with ``threshold="auto"`` or ``"interior"``, else 0. A
        ``min_size`` that drops every component of the mask is refused (the message
        names the largest component's voxels).
    fill_holes
        Fill interior pores (background not connected to the volume border). None:
        with ``threshold="auto"`` or ``"interior"``.
    split
        Separate touching particles (a watershed of the distance map; for an ``"auto"``
        mask, of the distance times how full of solid the scan looks, step 4).
    neck
        Two distance maxima stay separate particles when the saddle between them is
        below ``neck`` times the lower one (0 to 1; larger splits more).
    h
        ... and the lower one rises at least ``h`` voxels above the saddle.
    max_radius
        Largest distance value (voxels) the split's halo is made for; None (default)
        measures it exactly in one pass, so the result is the same for every chunking.
    voxel_size
        Voxel edges (z, y, x) for the distance map; None: the volume's
        ``voxel_size_um`` when it has one, else isotropic.
    connectivity
        6, 18 or 26, for components and the watershed.
    scratch
        A folder (on storage every worker reaches) where the solid mask and the watershed
        keys are stored once, so the split's passes, the labelling passes and every
        later use of the labels read them instead of recomputing the mask and the split. The caller removes it once the labels are
        written. None: a temporary folder on this machine, removed when Python exits,
        when the work runs here (no cluster, or workers on this machine); with workers
        elsewhere the split is recomputed at each use (a warning says so).
    field_of_view
        The scan's cylindrical field of view (:mod:`volmla.preprocess.fov`): outside it
        the reconstruction holds a fill value, not void. ``"auto"`` (default) finds it in
        an intensity volume (thresholds ``"auto"``, ``"otsu"``, a value; one small read of
        the slices' corners and a few whole slices) and assumes none in a phase volume or
        a class map; a :class:`~volmla.preprocess.fov.FieldOfView` (or its circle as
        ``"Y,X,R"``, e.g. a container wall's inner circle) is used as given; None: every
        voxel is data. With one, the levels are read off its inside, the mask is
        void outside it, and it is recorded in the labels' provenance, from which the
        particle table flags the particles that reach its edge as touching the border
        (they are cut, as those at a face of the volume are).

    Returns
    -------
    Labels
        ``labels``: particle ids ``1..count`` (uint32), numbered by first voxel in C order,
        as a lazy DataArray chunked as the input, with its coordinates and voxel size
        (from the stored split keys: computing it again reads them, it does not redo the
        split); ``count``: the number of particles.

    Examples
    --------
    >>> import numpy as np
    >>> vol = np.zeros((8, 8, 8), np.uint8); vol[2:6, 2:6, 2:6] = 200
    >>> label_particles(vol, threshold=100).count
    1
    """
    connectivity = check_connectivity(connectivity)  # type: ignore[assignment]
    auto = isinstance(threshold, str) and threshold == "auto"
    learned = isinstance(threshold, str) and threshold == "interior"
    derived = auto or learned  # a mask derived with a relief weight of its own
    default_size = min_size is None
    if min_size is None:
        min_size = SPECKLE if derived else 0
    if fill_holes is None:
        fill_holes = derived
    if isinstance(min_size, bool) or not isinstance(min_size, int) or min_size < 0:
        raise VolmlaError(f"min_size must be a non-negative integer (voxels), got {min_size!r}")
    vol = as_volume(volume, chunks=getattr(volume, "shape", None))  # in-memory input: one block
    if voxel_size is None:
        voxel_size = vol.attrs.get("voxel_size_um")
    fov = _field_of_view(field_of_view, vol.data, intensity=threshold is not None and not learned)
    record: dict[str, Any] = {"step": "particles", "threshold": threshold, "min_size": min_size,
                              "fill_holes": fill_holes, "split": split, "neck": neck, "h": h,
                              "max_radius": max_radius, "connectivity": connectivity}
    if fov is not None:
        record[FOV_RECORD] = fov.as_record()
    weight = None
    if auto:
        # the scan's own evidence for the split: how full of solid it looks around each
        # voxel weights the distance map, so blurred creases between particles stay saddles
        found_solid = auto_solid(vol.data, field_of_view=fov)
        solid, weight = found_solid.mask, found_solid.fill
        if split:
            record["relief"] = "distance x local_fill"
    elif learned:
        # a segmentation's phases named as minerals are no map: phase 2 would read as boundary
        check_particle_map(vol.attrs.get("phases"), vol.attrs.get("path") or "the volume")
        # the network's boundary layer between touching particles lowers the relief there
        found_learned = learned_solid(vol.data)
        solid, weight = found_learned.mask, found_learned.fill
        if fov is not None:
            solid = fill_outside(solid, fov, False)
        if split:
            record["relief"] = "distance x interior_fill"
    else:
        solid = solid_mask(vol.data, threshold=threshold, field_of_view=fov)  # type: ignore[arg-type]  # not "interior"
    where = Path(scratch) if scratch is not None else session_scratch("volmla-split-", what="the particle split") if split else None
    if where is not None and derived and (fill_holes or min_size or weight is not None):
        # the "auto" cut (denoising, cupping, local levels) or the class map's read runs
        # once: pore filling and dust removal make four passes over the mask, and the split
        # reads the fill, from scratch (the split's wide halos would otherwise hold the
        # fill's chain in memory)
        items = [(solid, where / "auto-mask.zarr", "labels")]
        if split and weight is not None:
            items.append((weight, where / "fill.zarr", "intensity"))
        kept = store_together(items, desc="storing the solid mask")
        solid = kept[0]
        weight = kept[1] if len(kept) > 1 else weight
    if fill_holes:
        solid = _fill_holes(solid)
    undusted = solid
    if min_size:
        solid = remove_small(solid, min_size=min_size, connectivity=connectivity)
    if not split:
        found = label(solid, connectivity=connectivity)
        _check_survivors(found.count, undusted, min_size=min_size, default=default_size, threshold=threshold,
                         connectivity=connectivity)
        return Labels(_on_grid(found.labels.data, volume, record | {"count": found.count}), found.count)
    stored: list[Path] | None = None
    if where is not None:
        # the mask chain (reductions, pore filling and dust removal each label the volume)
        # runs once: the split's passes read the stored mask instead of recomputing it, and
        # each split block reads its own window of it (and of the stored fill)
        solid = store(solid, where / "solid.zarr", desc="storing the solid mask")
        stored = [where / "solid.zarr"] + ([where / "fill.zarr"] if weight is not None else [])
    report = None
    if where is not None:
        report = where / "cut"
        shutil.rmtree(report, ignore_errors=True)
        report.mkdir()
    keys = split_touching(solid, neck=neck, h=h, max_radius=max_radius, voxel_size=voxel_size,
                          connectivity=connectivity, weight=weight, stored=stored, report=report)
    if where is not None:
        assert stored is not None and report is not None
        keys = store(keys, where / "split-keys.zarr", desc="storing split keys")
        # particles longer than the halo: split again in windows that hold them, so the
        # labels do not depend on the chunking
        resplit_cut(where / "split-keys.zarr", stored, report, neck=neck, h=h,
                    voxel_size=voxel_size, connectivity=connectivity)
    found = label(keys, connectivity=connectivity, multilabel=True)
    _check_survivors(found.count, undusted, min_size=min_size, default=default_size, threshold=threshold,
                     connectivity=connectivity)
    # the split works on blocks sized to its halo; hand the labels back on the input's grid,
    # so they combine block by block with the volume they came from
    chunks = vol.data.chunks
    data = found.labels.data
    data = data if data.chunks == chunks else data.rechunk(chunks)
    return Labels(_on_grid(data, volume, record | {"count": found.count}), found.count)


def _field_of_view(given: Any, data: da.Array, *, intensity: bool) -> FieldOfView | None:
    """``label_particles``'s ``field_of_view``: found in an intensity volume for ``"auto"``."""
    fov = parse_field_of_view(given)
    if isinstance(fov, str):  # "auto"
        return find_field_of_view(data) if intensity else None
    return fov


class MinSizeError(VolmlaError):
    """A ``min_size`` that removes every particle the mask holds.

    Carries the numbers, so a caller that names the option otherwise (a run config's
    ``particles.min_size``) words the same refusal in its own terms (:meth:`message`).
    """

    def __init__(self, min_size: int, largest: int, note: str = "") -> None:
        self.min_size, self.largest, self.note = min_size, largest, note
        super().__init__(self.message("min_size="))

    def message(self, key: str) -> str:
        """The refusal with the option named ``key`` (``"min_size="``, ``"particles.min_size "``)."""
        name = key.rstrip("= ")
        return (f"{key}{self.min_size}{self.note} removes every particle: the largest the mask holds has "
                f"{self.largest} voxels; give a {name} of {self.largest} or less")


def _check_survivors(count: int, undusted: da.Array, *, min_size: int, default: bool, threshold: Any,
                     connectivity: Literal[6, 18, 26]) -> None:
    """Refuse a ``min_size`` that removed every particle the mask held, naming the largest.

    Called with the particle count the labelling found anyway; only when it is 0 are the
    mask's components before the dust removal labelled and sized (two more passes, on
    the way to the error), so a result with particles costs nothing more. A mask that
    was empty before the dust removal is left to give no particles.
    """
    if count or min_size <= 1:
        return
    from volmla.particles.mask import component_sizes

    sizes = component_sizes(label(undusted, connectivity=connectivity))
    largest = int(sizes[1:].max(initial=0))
    if largest:
        raise MinSizeError(min_size, largest, f" (the default for threshold={threshold!r})" if default else "")


def _on_grid(data: da.Array, volume: VolumeLike, record: dict[str, Any]) -> xr.DataArray:
    """Particle ids as a DataArray with the input's coordinates, voxel size and provenance."""
    return as_dataarray(data, like=volume, name="particles", kind="labels", record=record)
