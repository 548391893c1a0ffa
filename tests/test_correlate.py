"""Correlative labelling: maps -> k-means -> assignment -> registration -> sparse labels."""

from __future__ import annotations

import json

import dask.array as da
import numpy as np
import pytest
import tifffile
import xarray as xr

from volmla import correlate as co
from volmla.cli import main
from volmla.errors import VolmlaError
from volmla.segment import SPARSE_LABEL_OFFSET
from volmla.synthetic import correlative_labels, phantom, simulate_element_maps

MINERALS = ["quartz", "feldspar", "pyrite"]
NAMES = {1: "quartz", 2: "feldspar", 3: "pyrite"}


@pytest.fixture(scope="module")
def ph():
    """A small phantom with grains small enough that every face holds every phase."""
    p = phantom(shape=(48, 64, 64), seed=0, voxel_size=10.0, chunks=32, esd_range=(8, 20), solid_fraction=0.4)
    return p.intensity.persist(), p.phases.persist()


@pytest.fixture(scope="module")
def workflow(ph):
    ct, truth = ph
    return correlative_labels(ct, truth, planes=[0, 24], seed=0, factor=2, angle_deg=2.0, erode=1)


# --------------------------------------------------------------------------- end to end


def test_workflow_recovers_truth(workflow):
    report = workflow.report
    assert len(report["planes"]) == 2
    for rec in report["planes"]:
        # k-means vs the block-majority truth: mixed boundary pixels cost some ARI
        assert rec["ari"] >= 0.85, rec
        assert rec["ari_pure"] >= 0.95, rec
        assert rec["assignment_correct"], rec
        assert abs(rec["found_plane"] - rec["plane"]) <= 1, rec
        assert abs(rec["found_angle_deg"] - rec["true_angle_deg"]) <= 1.0, rec
        shift_err = np.subtract(rec["found_translation_um"], rec["true_translation_um"])
        assert np.all(np.abs(shift_err) <= 10.0), rec  # within one CT voxel
        assert rec["ok"] and rec["converged"] and not rec["warnings"], rec
        assert rec["kept_fraction"] >= 0.3, rec
        assert rec["label_accuracy"] >= 0.95, rec


def test_workflow_labels_volume(workflow, ph):
    ct, truth = ph
    labels = workflow.labels
    assert labels.shape == ct.shape and labels.dtype == np.uint8
    assert labels.attrs["kind"] == "labels" and labels.attrs["voxel_size_um"] == ct.attrs["voxel_size_um"]
    dense = labels.data.compute()
    planes = [rec["found_plane"] for rec in workflow.report["planes"]]
    others = np.setdiff1d(np.arange(ct.shape[0]), planes)
    assert not dense[others].any()
    t = truth.data.compute()
    for z in planes:
        kept = dense[z] > 0
        assert kept.mean() >= 0.3
        assert np.mean(dense[z][kept] == t[z][kept] + SPARSE_LABEL_OFFSET) >= 0.95


# --------------------------------------------------------------------------- k-means, assignment


@pytest.fixture(scope="module")
def face_maps(ph):
    _, truth = ph
    face = truth.data[24].compute()
    return simulate_element_maps(face, voxel_size_um=10.0, phase_names=NAMES, plane=24, factor=2, seed=3)


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


def test_denoise_reduces_noise():
    rng = np.random.default_rng(0)
    clean = np.zeros((40, 40), np.float32)
    clean[:, 20:] = 10.0
    noisy = clean + rng.normal(0, 1.0, clean.shape).astype(np.float32)
    maps = co.ElementMaps(np.stack([noisy, noisy]), ("Na", "Si"), 40.0)
    out = co.denoise_maps(maps, elements=("Na",))
    assert np.abs(out.data[0] - clean).mean() < 0.7 * np.abs(noisy - clean).mean()
    np.testing.assert_array_equal(out.data[1], noisy)  # Si untouched


# --------------------------------------------------------------------------- maps in


def test_read_maps_tiff_npz_and_shapes(tmp_path):
    a = np.arange(20 * 30, dtype=np.float32).reshape(20, 30)
    tifffile.imwrite(tmp_path / "Fe.tif", a)
    tifffile.imwrite(tmp_path / "Si.tif", a * 2)
    maps = co.read_maps([tmp_path / "Fe.tif", tmp_path / "Si.tif"], pixel_size_um=40)
    assert maps.elements == ("Fe", "Si") and maps.pixel_size_um == 40.0
    np.testing.assert_array_equal(maps.channel("Si"), a * 2)
    np.savez(tmp_path / "stack.npz", Al=a, K=a + 1, pixel_size_um=np.float64(20.0))
    maps = co.read_maps([tmp_path / "stack.npz"])
    assert maps.elements == ("Al", "K") and maps.pixel_size_um == 20.0
    tifffile.imwrite(tmp_path / "Mg.tif", a[:10, :15])
    with pytest.raises(VolmlaError, match="different shapes"):
        co.read_maps([tmp_path / "Fe.tif", tmp_path / "Mg.tif"], pixel_size_um=40)
    maps = co.read_maps([tmp_path / "Fe.tif", tmp_path / "Mg.tif"], pixel_size_um=40, resample=True)
    assert maps.data.shape == (2, 20, 30)
    with pytest.raises(VolmlaError, match="pixel size"):
        co.read_maps([tmp_path / "Fe.tif"])


# --------------------------------------------------------------------------- registration


def test_registration_of_noise_is_reported(ph):
    ct, _ = ph
    noise = np.random.default_rng(1).normal(size=(32, 32)).astype(np.float32)
    with pytest.raises(VolmlaError, match="poor"):
        co.register_map(ct, noise, pixel_size_um=20.0)
    reg = co.register_map(ct, noise, pixel_size_um=20.0, accept_poor=True)
    assert not reg.ok and reg.warnings and reg.quality < 0.05
    record = reg.to_dict()
    assert record["ok"] is False and record["warnings"] and "metric" in record


def test_registration_bad_input(ph):
    ct, _ = ph
    img = np.zeros((32, 32), np.uint8)
    with pytest.raises(VolmlaError, match="search range"):
        co.register_map(ct, img, pixel_size_um=20.0, search=(40, 60))
    with pytest.raises(VolmlaError, match="axis"):
        co.register_map(ct, img, pixel_size_um=20.0, axis="w")  # type: ignore[arg-type]
    with pytest.raises(VolmlaError, match="planes must lie"):
        correlative_labels(*ph, planes=[48])


def test_mutual_information():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 4, (50, 50))
    assert co.mutual_information(a, a) == pytest.approx(np.log(4), rel=0.02)
    assert co.mutual_information(a, rng.integers(0, 4, (50, 50))) < 0.02


# --------------------------------------------------------------------------- labels


def _erode_reference(lab: np.ndarray, m: int) -> np.ndarray:
    out = lab.copy()
    h, w = lab.shape
    for i in range(h):
        for j in range(w):
            win = lab[max(0, i - m):i + m + 1, max(0, j - m):j + m + 1]
            if (win != lab[i, j]).any():
                out[i, j] = 0
    return out


@pytest.mark.parametrize("margin", [0, 1, 2])
def test_erode_labels_matches_reference(margin):
    lab = np.random.default_rng(margin).integers(1, 4, (6, 7)).repeat(3, 0).repeat(3, 1).astype(np.uint8)
    np.testing.assert_array_equal(co.erode_labels(lab, margin), _erode_reference(lab, margin))


@pytest.mark.parametrize("chunks", [(1, 5, 7), (3, 4, 5), (7, 9, 11), (32, 32, 32)])
def test_sparse_labels_any_chunking(chunks):
    shape = (7, 9, 11)
    rng = np.random.default_rng(0)
    pz = rng.integers(0, 4, (9, 11)).astype(np.uint8)
    py = rng.integers(0, 4, (7, 11)).astype(np.uint8)
    planes = [co.LabelPlane("z", 3, pz), co.LabelPlane("y", 8, py)]
    ref = np.zeros(shape, np.uint8)
    ref[3] = np.where(pz > 0, pz, ref[3])
    ref[:, 8] = np.where(py > 0, py, ref[:, 8])
    out = co.sparse_labels(shape, planes, chunks=chunks)
    assert out.chunks == da.zeros(shape, chunks=chunks).chunks
    np.testing.assert_array_equal(out.compute(), ref)
    with pytest.raises(VolmlaError, match="outside the volume"):
        co.sparse_labels(shape, [co.LabelPlane("z", 7, pz)], chunks=chunks)


# --------------------------------------------------------------------------- command line


def test_cli_maps_register_labels(tmp_path, ph, face_maps, capsys):
    from volmla.io import open_volume, write_volume

    ct, truth = ph
    ct_path = write_volume(ct, tmp_path / "ct.zarr", chunks=32)
    for i, e in enumerate(face_maps.maps.elements):
        tifffile.imwrite(tmp_path / f"{e}.tif", face_maps.maps.data[i])
    tifs = [str(tmp_path / f"{e}.tif") for e in face_maps.maps.elements]
    px = str(face_maps.maps.pixel_size_um)
    g = ["--quiet", "--workers", "1", "correlate"]

    assert main([*g, "maps", *tifs, "-o", str(tmp_path / "mm"), "--pixel-size", px,
                 "--minerals", "quartz,feldspar,pyrite"]) == 0
    report = json.loads((tmp_path / "mm" / "report.json").read_text())
    assert sorted(c["mineral"] for c in report["clusters"].values()) == ["feldspar", "pyrite", "quartz", "void"]
    npz = tmp_path / "mm" / "mineral_map.npz"

    reg_json = tmp_path / "r24.json"
    assert main([*g, "register", "--ct", str(ct_path), "--map", str(npz), "-o", str(reg_json)]) == 0
    record = json.loads(reg_json.read_text())
    assert abs(record["index"] - 24) <= 1 and record["ok"]
    assert (tmp_path / "r24.tfm").is_file() and (tmp_path / "r24.labels.tif").is_file()

    out = tmp_path / "labels.zarr"
    assert main([*g, "labels", "--ct", str(ct_path), "--registration", str(reg_json), "-o", str(out),
                 "--erode", "1"]) == 0
    labels = open_volume(out)
    assert labels.shape == ct.shape and labels.dtype == np.uint8 and labels.attrs["kind"] == "labels"
    dense = labels.data.compute()
    z = record["index"]
    kept = dense[z] > 0
    assert kept.mean() > 0.3
    assert np.mean(dense[z][kept] == truth.data[z].compute()[kept] + SPARSE_LABEL_OFFSET) >= 0.95
    capsys.readouterr()

    # bad input: one line on stderr, exit 2, existing outputs untouched
    before = (out / "zarr.json").read_bytes()
    assert main([*g, "labels", "--ct", str(ct_path), "--registration", str(reg_json), "-o", str(out)]) == 2
    assert "exists" in capsys.readouterr().err
    assert (out / "zarr.json").read_bytes() == before
    tifffile.imwrite(tmp_path / "Ca.tif", face_maps.maps.data[0][:10, :10])
    assert main([*g, "maps", *tifs, str(tmp_path / "Ca.tif"), "-o", str(tmp_path / "bad"), "--pixel-size", px,
                 "--minerals", "quartz,feldspar,pyrite"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "different shapes" in err
    assert main([*g, "maps", *tifs, "-o", str(tmp_path / "bad"), "--pixel-size", px,
                 "--minerals", "quartz,feldspar,pyrite", "--k", "3"]) == 2
    assert "fewer than the 4 phases" in capsys.readouterr().err
    noise = np.random.default_rng(0).integers(0, 4, (32, 32)).astype(np.uint8)
    tifffile.imwrite(tmp_path / "noise.tif", noise)
    assert main([*g, "register", "--ct", str(ct_path), "--map", str(tmp_path / "noise.tif"), "--pixel-size", "20",
                 "-o", str(tmp_path / "noise.json")]) == 2
    assert "poor" in capsys.readouterr().err
    assert not (tmp_path / "noise.json").exists()
    assert main([*g, "register", "--ct", str(ct_path), "--map", str(npz), "--search", "50", "60",
                 "-o", str(tmp_path / "x.json")]) == 2
    assert "search range" in capsys.readouterr().err


def test_labels_volume_is_lazy_xarray(ph):
    ct, _ = ph
    plane = np.ones(ct.shape[1:], np.uint8)
    lv = co.labels_volume(ct, [co.LabelPlane("z", 5, plane)], erode=0)
    assert isinstance(lv, xr.DataArray) and isinstance(lv.data, da.Array)
    assert lv.data.chunks == ct.data.chunks


# --------------------------------------------------------------------------- absent minerals


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


# --------------------------------------------------------------------------- tilt


def test_plane_heights():
    h = co.plane_heights((5, 7), index=3, tilt_deg=(0.0, 0.0))
    np.testing.assert_array_equal(h, 3.0)
    h = co.plane_heights((5, 7), index=3, tilt_deg=(45.0, 0.0), voxel_size_um=(2.0, 1.0, 1.0))
    np.testing.assert_allclose(h[:, 0], 3.0 + (np.arange(5) - 2) / 2.0)
    assert h[2, 3] == 3.0


@pytest.mark.parametrize("chunks", [(1, 5, 7), (3, 4, 5), (16, 16, 16)])
def test_sparse_labels_tilted_plane(chunks):
    shape = (9, 10, 11)
    lab = np.random.default_rng(1).integers(0, 4, shape[1:]).astype(np.uint8)
    plane = co.LabelPlane("z", 4, lab, (8.0, -5.0), (1.0, 1.0, 1.0))
    h = np.rint(co.plane_heights(lab.shape, index=4, tilt_deg=(8.0, -5.0))).astype(int)
    ref = np.zeros(shape, np.uint8)
    rows, cols = np.indices(lab.shape)
    inside = (h >= 0) & (h < shape[0])
    ref[h[inside], rows[inside], cols[inside]] = lab[inside]
    assert len(np.unique(h)) > 1
    np.testing.assert_array_equal(co.sparse_labels(shape, [plane], chunks=chunks).compute(), ref)


@pytest.fixture(scope="module")
def wide():
    """A thin, wide phantom: a tilt of a few degrees moves its faces by a few voxels."""
    p = phantom(shape=(32, 96, 96), seed=1, voxel_size=10.0, chunks=32, esd_range=(8, 20), solid_fraction=0.4)
    return p.intensity.persist(), p.phases.persist()


def test_tilted_face_is_found(wide):
    ct, truth = wide
    out = correlative_labels(ct, truth, planes=[16], seed=0, factor=2, tilt_deg=(2.0, -1.5), max_tilt_deg=3.0,
                             erode=1)
    rec = out.report["planes"][0]
    assert np.all(np.abs(np.subtract(rec["found_tilt_deg"], rec["true_tilt_deg"])) <= 1.0), rec
    assert abs(rec["found_plane"] - 16) <= 1 and rec["assignment_correct"] and rec["ok"], rec
    assert rec["kept_fraction"] >= 0.3 and rec["label_accuracy"] >= 0.95, rec
    # the label volume holds the tilted plane: several z planes, each voxel right
    dense = out.labels.data.compute()
    zs = np.flatnonzero(dense.any(axis=(1, 2)))
    assert len(zs) >= 3
    kept = dense > 0
    assert np.mean(dense[kept] == truth.data.compute()[kept] + SPARSE_LABEL_OFFSET) >= 0.95
    with pytest.raises(VolmlaError, match="3-D phase volume"):
        simulate_element_maps(truth.data[16].compute(), voxel_size_um=10.0, phase_names=NAMES, tilt_deg=(1.0, 0.0))


# --------------------------------------------------------------------------- correlate run


def _write_plane(tmp_path, truth, z, name, seed, drop=None):
    face = truth.data[z].compute().copy()
    if drop is not None:
        face[face == drop] = 0
    sm = simulate_element_maps(face, voxel_size_um=10.0, phase_names=NAMES, plane=z, factor=2, seed=seed)
    folder = tmp_path / name
    folder.mkdir()
    for i, e in enumerate(sm.maps.elements):
        tifffile.imwrite(folder / f"{e}.tif", sm.maps.data[i])
    np.savez(tmp_path / f"{name}_truth.npz", truth=sm.truth)
    return sm, [f"{name}/{e}.tif" for e in sm.maps.elements]


def test_cli_run_end_to_end(tmp_path, ph, capsys):
    import yaml

    from volmla.io import open_volume, write_volume

    ct, truth = ph
    write_volume(ct, tmp_path / "ct.zarr", chunks=32)
    top, top_maps = _write_plane(tmp_path, truth, 0, "top", 0)
    mid, mid_maps = _write_plane(tmp_path, truth, 24, "mid", 1, drop=3)
    config = {
        "ct": "ct.zarr", "out": "out", "minerals": MINERALS, "erode": 1,
        "xrd": {"quartz": 0.3, "feldspar": 0.5, "pyrite": 0.2},
        "planes": [
            {"name": "top", "maps": top_maps, "pixel_size_um": 20.0, "axis": "z", "search": [0, 6],
             "origin_um": list(top.maps.origin_um), "truth": "top_truth.npz"},
            {"name": "mid", "maps": mid_maps, "pixel_size_um": 20.0, "search": [16, 32],
             "origin_um": list(mid.maps.origin_um), "truth": "mid_truth.npz", "max_tilt_deg": 1.0},
        ],
    }
    cfg_path = tmp_path / "correlate.yaml"
    cfg_path.write_text(yaml.safe_dump(config))
    assert main(["--quiet", "--workers", "1", "correlate", "run", str(cfg_path)]) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["ok"] and "| top |" in (tmp_path / "out" / "report.md").read_text()
    by = {r["name"]: r for r in report["planes"]}
    assert abs(by["top"]["plane"] - 0) <= 1 and abs(by["mid"]["plane"] - 24) <= 1
    assert by["top"]["ari"] >= 0.8 and by["mid"]["ari"] >= 0.8
    assert by["mid"]["minerals_not_found"] == ["pyrite"] and "pyrite" not in by["mid"]["assignment"].values()
    assert set(by["top"]["xrd"]) == set(MINERALS)
    for r in by.values():
        assert r["converged"] and r["quality"] > 0.3 and len(r["tilt_deg"]) == 2 and "angle_deg" in r
    assert (tmp_path / "out" / "planes" / "mid" / "registration.json").is_file()
    labels = open_volume(tmp_path / "out" / "labels.zarr")
    dense = labels.data.compute()
    kept = dense > 0
    assert kept.sum() > 0.3 * 2 * dense[0].size
    assert np.mean(dense[kept] == truth.data.compute()[kept] + SPARSE_LABEL_OFFSET) >= 0.95
    assert not np.any(dense[by["mid"]["plane"]] == 3 + SPARSE_LABEL_OFFSET)
    capsys.readouterr()

    # existing output: refused, untouched
    before = (tmp_path / "out" / "report.json").read_bytes()
    assert main(["--quiet", "correlate", "run", str(cfg_path)]) == 2
    assert "exists" in capsys.readouterr().err
    assert (tmp_path / "out" / "report.json").read_bytes() == before
    # bad configs: one line each
    bad = [
        ({**config, "colour": 1}, "unknown key"),
        ({k: v for k, v in config.items() if k != "planes"}, "missing required key 'planes'"),
        ({**config, "planes": [{"maps": ["nope.tif"], "pixel_size_um": 20}]}, "does not exist"),
        ({**config, "planes": [{**config["planes"][0], "axis": "w"}]}, "axis must be one of"),
        ({**config, "planes": [{**config["planes"][0], "k": 2}]}, "k must be an integer"),
        ({**config, "erode": -1}, "erode must be"),
    ]
    for i, (cfg, message) in enumerate(bad):
        path = tmp_path / f"bad{i}.yaml"
        path.write_text(yaml.safe_dump({**cfg, "out": f"bad_out{i}"}))
        assert main(["--quiet", "correlate", "run", str(path)]) == 2, message
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, (message, err)
    (tmp_path / "notyaml.yaml").write_text("planes: [unclosed")
    assert main(["--quiet", "correlate", "run", str(tmp_path / "notyaml.yaml")]) == 2
    assert "not valid YAML" in capsys.readouterr().err
