"""k-means mineral maps and cluster -> mineral assignment (``volmla.correlate.minerals``)."""

from __future__ import annotations

import numpy as np
import pytest

from volmla import correlate as co
from volmla.errors import VolmlaError
from volmla.synthetic import simulate_element_maps

MINERALS = ["quartz", "feldspar", "pyrite"]
NAMES = {1: "quartz", 2: "feldspar", 3: "pyrite"}


def test_kmeans_and_automatic_assignment(face_maps):
    from sklearn.metrics import adjusted_rand_score

    maps = co.denoise_maps(face_maps.maps)
    mm = co.kmeans_minerals(maps, k=4, seed=0)
    pure = face_maps.pure
    assert adjusted_rand_score(face_maps.truth[pure], mm.clusters[pure]) >= 0.95
    assert set(mm.centroids.columns) == set(maps.elements)
    assert abs(sum(mm.abundances.values()) - 1.0) < 1e-9
    a = co.assign_minerals(mm, minerals=MINERALS)
    phases = a.phase_map(mm.clusters)
    assert np.mean(phases[pure] == face_maps.truth[pure]) >= 0.98
    assert sorted(a.mineral.values()) == sorted(["void", *MINERALS])
    assert all(c > 0.1 for c in a.confidence.values()) and not a.warnings
    # centroids are in the original units: the Si of quartz beats that of pyrite
    by = {m: c for c, m in a.mineral.items()}
    assert mm.centroids.loc[by["quartz"], "Si"] > 5 * mm.centroids.loc[by["pyrite"], "Si"]
    diff = co.compare_abundances(mm, a, {"quartz": 0.3, "feldspar": 0.3, "pyrite": 0.4})
    assert set(diff) == set(MINERALS)
    assert all(abs(d["map"] - d["reference"] - d["difference"]) < 1e-5 for d in diff.values())


def test_assignment_from_table_and_errors(face_maps):
    mm = co.kmeans_minerals(face_maps.maps, k=4, seed=0)
    table = {0: "void", 1: "quartz", 2: "feldspar", 3: "pyrite"}
    a = co.assign_minerals(mm, minerals=MINERALS, table=table)
    assert a.method == "table" and a.phase == {0: 0, 1: 1, 2: 2, 3: 3}
    with pytest.raises(VolmlaError, match="fewer than the 5 phases"):
        co.assign_minerals(mm, minerals=[*MINERALS, "albite"])
    with pytest.raises(VolmlaError, match="must name every cluster"):
        co.assign_minerals(mm, minerals=MINERALS, table={0: "void", 1: "quartz"})
    with pytest.raises(VolmlaError, match="no element signature"):
        co.assign_minerals(mm, minerals=["unobtainium"])


@pytest.mark.parametrize("z", [0, 24, 40])
def test_absent_mineral_is_not_labelled(ph, z):
    """A face without pyrite: no cluster is called pyrite, pyrite is reported not found,
    and the labels kept (after the usual 1-pixel erosion) are right."""
    _, truth = ph
    face = truth.data[z].compute().copy()
    face[face == 3] = 0
    sm = simulate_element_maps(face, voxel_size_um=10.0, phase_names=NAMES, plane=z, factor=2, seed=z)
    mm = co.kmeans_minerals(co.denoise_maps(sm.maps), k=4, seed=0)
    a = co.assign_minerals(mm, minerals=MINERALS)
    assert "pyrite" not in a.mineral.values() and a.not_found == ("pyrite",)
    phases = a.phase_map(mm.clusters)
    assert not np.any(phases == 3)
    kept = co.erode_labels(np.where(phases == co.UNLABELLED, 0, phases + 1).astype(np.uint8), 1) > 0
    assert kept.mean() > 0.3
    assert np.mean(phases[kept] == sm.truth[kept]) >= 0.95


def test_unmatched_cluster_is_left_unlabelled():
    """A cluster whose profile matches no signature (here: Fe without S) stays unlabelled."""
    import pandas as pd

    cols = ["Fe", "S", "Si"]
    cen = pd.DataFrame([[1.0, 1.0, 3.0], [1.0, 1.0, 60.0], [45.0, 50.0, 3.0], [45.0, 1.0, 3.0]], columns=cols)
    mm = co.MineralMap(np.zeros((4, 4), np.int16), cen, dict.fromkeys(range(4), 0.25), 0.0,
                       pd.Series([1.0, 1.0, 3.0], index=cols))
    a = co.assign_minerals(mm, minerals=["quartz", "pyrite"])
    assert a.mineral[0] == "void" and a.mineral[1] == "quartz" and a.mineral[2] == "pyrite"
    assert a.unlabelled == (3,) and a.phase[3] == co.UNLABELLED and a.warnings
    plane = a.phase_map(np.array([[0, 1], [2, 3]]))
    assert plane[1, 1] == co.UNLABELLED
    reg_img = co.registration_image(plane)
    assert reg_img[1, 1] == 3 and reg_img.max() == 3
