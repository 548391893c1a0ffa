"""Stage-tilt perspective of the synthetic SEM images."""

from __future__ import annotations

import numpy as np
import pytest

from volmla.errors import VolmlaError
from volmla.synthetic.sem import sem_image

OPTS = {"shape": (256, 320), "n_crystals": 14, "median_diameter": 4.0, "seed": 8}


def test_perspective_warps_image_and_labels_together() -> None:
    flat = sem_image(perspective=0.0, **OPTS)  # type: ignore[arg-type]
    tilted = sem_image(perspective=0.15, **OPTS)  # type: ignore[arg-type]
    again = sem_image(perspective=0.15, **OPTS)  # type: ignore[arg-type]
    assert np.array_equal(tilted.image, again.image) and np.array_equal(tilted.labels, again.labels)  # seeded
    assert not np.array_equal(flat.labels, tilted.labels)
    n = len(tilted.classes)
    assert int(tilted.labels.max()) == n and len(tilted.diameter_um) == len(tilted.aspect) == n
    assert np.array_equal(np.unique(tilted.labels[tilted.labels > 0]), np.arange(1, n + 1))  # renumbered
    # labels are nearest (no new values) and the image follows them: crystals brighter than substrate
    rows = tilted.image.shape[0] - tilted.bar_rows
    img, lab = tilted.image[:rows].astype(float), tilted.labels[:rows]
    assert img[lab > 0].mean() > img[lab == 0].mean() + 40
    # truth recomputed on the warped crystals: visible part never larger than the crystal
    visible = 2 * np.sqrt(np.bincount(tilted.labels.ravel(), minlength=n + 1)[1:] / np.pi) * tilted.pixel_size
    assert np.all(visible <= tilted.diameter_um + 1e-9)
    # and the magnification grows across the field: the warped sizes differ from the flat ones
    assert not np.allclose(np.sort(flat.diameter_um)[: n], np.sort(tilted.diameter_um)[: n])
    with pytest.raises(VolmlaError, match="perspective"):
        sem_image(perspective=0.9, **OPTS)  # type: ignore[arg-type]


def test_zero_perspective_keeps_the_scene() -> None:
    a = sem_image(perspective=0.0, **OPTS)  # type: ignore[arg-type]
    b = sem_image(perspective=0.05, **OPTS)  # type: ignore[arg-type]
    # the warp has its own random stream: the same crystals in the same order
    assert len(b.classes) <= len(a.classes)
    assert set(np.round(b.orientation, 9)) <= set(np.round(a.orientation, 9))
