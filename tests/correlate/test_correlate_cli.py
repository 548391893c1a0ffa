"""``volmla correlate maps|register|labels|run`` (``volmla.correlate.steps``, ``volmla.correlate.run``)."""

from __future__ import annotations

import json

import numpy as np
import tifffile

from volmla.cli import main
from volmla.io.sparse import SPARSE_LABEL_OFFSET
from volmla.synthetic import simulate_element_maps

MINERALS = ["quartz", "feldspar", "pyrite"]
NAMES = {1: "quartz", 2: "feldspar", 3: "pyrite"}


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


def _tree(folder):
    """Every file under ``folder`` with its bytes (links and folders by name)."""
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None for p in sorted(folder.rglob("*"))}


def test_cli_run_failing_at_a_later_plane_writes_nothing(tmp_path, ph, capsys):
    """A run whose second plane fails (a denoise element its maps lack) leaves no output
    folder, and an existing output replaced with --overwrite byte for byte as it was."""
    import yaml

    from volmla.io import write_volume

    ct, truth = ph
    write_volume(ct, tmp_path / "ct.zarr", chunks=32)
    top, top_maps = _write_plane(tmp_path, truth, 0, "top", 0)
    mid, mid_maps = _write_plane(tmp_path, truth, 24, "mid", 1)
    good = {
        "ct": "ct.zarr", "out": "out", "minerals": MINERALS, "erode": 1,
        "planes": [{"name": "top", "maps": top_maps, "pixel_size_um": 20.0, "axis": "z", "search": [0, 6],
                    "origin_um": list(top.maps.origin_um)}],
    }
    bad = {**good, "planes": [*good["planes"], {"name": "mid", "maps": mid_maps, "pixel_size_um": 20.0,
                                                 "search": [16, 32], "origin_um": list(mid.maps.origin_um),
                                                 "denoise": ["Xx"]}]}
    (tmp_path / "good.yaml").write_text(yaml.safe_dump(good))
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    g = ["--quiet", "--workers", "1", "correlate", "run"]

    def siblings():
        return sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("out"))

    capsys.readouterr()
    assert main([*g, str(tmp_path / "bad.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "plane 'mid'" in err and "Xx not among the maps' elements" in err, err
    assert siblings() == []  # neither the top plane's files nor a temporary folder

    assert main([*g, str(tmp_path / "good.yaml")]) == 0
    out = tmp_path / "out"
    (out / "mine.txt").write_text("someone's notes")  # not the run's: left alone
    before = _tree(out)
    assert {"report.json", "report.md", "labels.zarr", "planes/top/registration.json"} <= set(before)
    capsys.readouterr()
    assert main([*g, "--overwrite", str(tmp_path / "bad.yaml")]) == 2
    assert "Xx not among" in capsys.readouterr().err
    assert _tree(out) == before and siblings() == ["out"]

    # a good run with --overwrite replaces the run's outputs and keeps the rest
    assert main([*g, "--overwrite", str(tmp_path / "good.yaml")]) == 0
    assert (out / "mine.txt").read_text() == "someone's notes" and siblings() == ["out"]
    assert json.loads((out / "report.json").read_text())["ok"]
