"""Stereology: virtual 2-D sections against 3-D liberation."""

from __future__ import annotations

import numpy as np
import pytest

from volmla import liberation as lib
from volmla import measure


def test_section_table_and_2d_ld_hand_case() -> None:
    # a 3-D particle half quartz (z < 3) half feldspar: z-sections see free grains, x-sections intergrown
    lab = np.zeros((8, 8, 8), np.uint32)
    ph = np.zeros((8, 8, 8), np.uint8)
    lab[1:5, 2:6, 2:6] = 1
    ph[1:3, 2:6, 2:6] = 1
    ph[3:5, 2:6, 2:6] = 2
    t = measure.measure(lab, ph, voxel_size=1.0, phase_names=["q", "f"])
    sec = lib.sections(ph, lab, step=2, phase_names=t.phase_names)
    z_sec = sec[sec.axis == 0]
    assert set(z_sec.plane) == {1, 3}  # planes 1, 3, 5, 7; 5 and 7 hold nothing
    st = lib.stereology(sec, t.particles, phase_names=["q", "f"]).set_index("phase")
    assert st.loc["q", "ld_3d"] == 0.0
    # z = 1: 16 free quartz pixels; y = 3, 5 and x = 3, 5: 8 quartz pixels each in 50/50 sections
    assert st.loc["q", "ld_2d"] == pytest.approx(16 / (16 + 4 * 8))


def test_stereology_bias_sign_on_phantom() -> None:
    """Sections overestimate liberation of intergrown particles: 2-D LD > 3-D LD."""
    from volmla.synthetic import phantom

    ph = phantom(shape=(64, 64, 64), seed=1, esd_range=(10.0, 18.0), chunks=32, liberated_fraction=0.3)
    tables = measure.measure(ph.particles, ph.phases)
    names = list(tables.phase_names.values())
    sec = lib.sections(ph.phases, ph.particles, step=2, phase_names=tables.phase_names)
    st = lib.stereology(sec, tables.particles, phase_names=names)
    assert (st["n_3d"] > 0).all()
    assert (st["ld_2d"] > st["ld_3d"]).all()
