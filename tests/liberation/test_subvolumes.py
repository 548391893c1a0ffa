"""Representativeness: size frequencies over equal sub-volumes."""

from __future__ import annotations

import pandas as pd
import pytest

from volmla import liberation as lib
from volmla.errors import VolmlaError


def test_representativeness_pieces_by_centroid() -> None:
    # 8 pieces of a 20^3 volume (grid 2x2x2): 2 small particles in the low corner piece, 1 large elsewhere
    df = pd.DataFrame({
        "esd_um": [1.0, 1.0, 5.0, 5.0, 1.0],
        "centroid_z": [1.0, 2.0, 15.0, 15.0, 15.0], "centroid_y": [1.0, 2.0, 3.0, 3.0, 15.0],
        "centroid_x": [1.0, 2.0, 3.0, 3.0, 15.0], "touches_border": [False] * 5,
    })
    table, meta = lib.representativeness(df, shape=(20, 20, 20), voxel_size=(1.0, 1.0, 1.0), pieces=8, size_edges=[0.5, 2.0, 10.0])
    assert meta["grid"] == [2, 2, 2] and meta["n_pieces_used"] == 3
    # per-piece frequencies of the small class: 1, 0, 1 -> mean 2/3
    assert table["mean"].tolist() == pytest.approx([2 / 3, 1 / 3])
    assert (table.ci_lo <= table["mean"]).all() and (table["mean"] <= table.ci_hi).all()
    assert table.whole.tolist() == pytest.approx([3 / 5, 2 / 5])
    with pytest.raises(VolmlaError, match="pieces"):
        lib.representativeness(df, shape=(20, 20, 20), voxel_size=(1.0, 1.0, 1.0), pieces=1)
