"""Grades and the free test are over the solid phases: void inside a particle is not a phase."""

from __future__ import annotations

import numpy as np
import pandas as pd

from volmla.liberation import (
    liberation_degree,
    liberation_spectrum,
    liberation_summary,
    locking,
    modal_mineralogy,
)
from volmla.measure import particle_table


def _volumes() -> tuple[np.ndarray, np.ndarray]:
    lab = np.zeros((16, 16, 16), np.uint32)
    lab[2:8, 2:8, 2:8] = 1  # quartz with 5 % void-classified voxels inside
    lab[9:15, 9:15, 9:15] = 2  # quartz + feldspar
    ph = (lab > 0).astype(np.uint8)
    rng = np.random.default_rng(0)
    inner = np.argwhere(lab == 1)
    pick = inner[rng.choice(len(inner), 11, replace=False)]
    ph[tuple(pick.T)] = 0
    ph[9:15, 9:15, 9:11] = 2
    return lab, ph


def test_particle_with_interior_void_is_free() -> None:
    lab, ph = _volumes()
    t = particle_table(lab, ph, voxel_size=1.0, phase_names=["quartz", "feldspar"])
    one = t.set_index("particle_id").loc[1]
    assert one["vox_quartz"] == 216 - 11 and one["volume_voxels"] == 216
    assert one["vox_solid"] == 205 and one["grade_quartz"] == 1.0
    ld = liberation_degree(t, phase_names=["quartz", "feldspar"], include_border=True)
    assert ld["quartz"] == 205 / (205 + 144)
    spec = liberation_spectrum(t, phase_names=["quartz"], include_border=True)["quartz"]
    assert spec[-1]["fraction"] == 205 / (205 + 144)  # in the exactly-100 % class
    assert locking(t, phase_names=["quartz", "feldspar"], include_border=True)["quartz"]["liberated"]["number"] == 0.5
    summary = liberation_summary(t, phase_names=["quartz", "feldspar"], include_border=True)
    assert summary["liberation_degree"]["feldspar"] == 0.0


def test_fractional_columns_take_precedence() -> None:
    df = pd.DataFrame({"vox_a": [10, 5], "vox_b": [0, 5], "vox_solid": [10, 10], "volume_voxels": [12, 12],
                       "vfrac_a": [9.5, 5.0], "vfrac_b": [0.05, 4.0], "vfrac_solid": [9.55, 9.0],
                       "touches_border": [False, False]})
    ld = liberation_degree(df, phase_names=["a", "b"])
    assert ld["a"] == 9.5 / 14.5  # 9.5 / 9.55 > 0.99: free on the fractional volumes
    assert modal_mineralogy(df, phase_names=["a", "b"])["volume"]["b"] == 4.05 / 18.55
    no_frac = df.drop(columns=["vfrac_a", "vfrac_b", "vfrac_solid"])
    assert liberation_degree(no_frac, phase_names=["a", "b"])["a"] == 10 / 15  # vox over vox_solid
    legacy = no_frac.drop(columns=["vox_solid"])
    assert liberation_degree(legacy, phase_names=["a", "b"])["a"] == 0.0  # old tables: over volume_voxels
