"""NGFF in and out: any valid NGFF 0.4/0.5 image read in micrometres; label images written
as ``image-label`` groups that ome-zarr-models validates and ome-zarr-py's Reader finds."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

from volmla.errors import VolmlaError
from volmla.io import open_volume, write_volume
from volmla.io.labels import label_metadata, write_labels
from volmla.io.ngff import UM_PER_UNIT, read_image, unit_to_um
from volmla.io.palette import MINERAL_COLORS, PALETTE, hex_colors, mineral_key, phase_colors


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(19)


def _foreign(path: Path, data: np.ndarray, *, axes: list[dict[str, Any]], scale: list[float],
             translation: list[float] | None = None, version: str = "0.5", levels: int = 1) -> Path:
    """An NGFF image written by ome-zarr-py (another tool's data), not by volmla."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from ome_zarr.format import FormatV04, FormatV05
        from ome_zarr.writer import write_multiscale

    fmt = FormatV05() if version == "0.5" else FormatV04()
    group = zarr.open_group(str(path), mode="w", zarr_format=3 if version == "0.5" else 2)
    pyramid, transforms = [], []
    spatial = [i for i, a in enumerate(axes) if a.get("type") == "space"]
    for level in range(levels):
        step = tuple(slice(None, None, 2**level) if i in spatial else slice(None) for i in range(data.ndim))
        pyramid.append(data[step])
        level_scale = [s * 2**level if i in spatial else s for i, s in enumerate(scale)]
        transform: list[dict[str, Any]] = [{"type": "scale", "scale": level_scale}]
        if translation is not None:
            transform.append({"type": "translation", "translation": translation})
        transforms.append(transform)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ome-zarr-py's own deprecation notices
        write_multiscale(pyramid, group, fmt=fmt, axes=axes, coordinate_transformations=transforms)
    return path


ZYX = [{"name": "z", "type": "space", "unit": "nanometer"}, {"name": "y", "type": "space", "unit": "nanometer"},
       {"name": "x", "type": "space", "unit": "nanometer"}]
TCZYX = [{"name": "t", "type": "time", "unit": "second"}, {"name": "c", "type": "channel"}, *ZYX]


# ----------------------------------------------------------------------------- units


def test_unit_table_converts_to_micrometres() -> None:
    assert unit_to_um("nanometer") == pytest.approx(1e-3)
    assert unit_to_um("millimeter") == pytest.approx(1e3)
    assert unit_to_um("angstrom") == pytest.approx(1e-4)
    assert unit_to_um("meter") == pytest.approx(1e6)
    assert unit_to_um("µm") == unit_to_um("micrometer") == 1.0
    assert unit_to_um(None) is None
    with pytest.raises(VolmlaError, match="'furlong' of axis 'z'"):
        unit_to_um("furlong", axis="z")
    assert len(UM_PER_UNIT) > 26  # every NGFF space unit, and abbreviations


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_nanometre_volume_opens_in_micrometres(tmp_path: Path, rng: np.random.Generator, version: str) -> None:
    data = rng.integers(0, 60000, (6, 8, 10), dtype=np.uint16)
    path = _foreign(tmp_path / "nm.zarr", data, axes=ZYX, scale=[500.0, 250.0, 250.0],
                    translation=[1000.0, 0.0, -500.0], version=version, levels=2)
    assert read_image(path).multiscales.version == version
    vol = open_volume(path)
    assert vol.attrs["voxel_size_um"] == pytest.approx((0.5, 0.25, 0.25))
    assert vol.attrs["translation_um"] == pytest.approx((1.0, 0.0, -0.5))
    np.testing.assert_allclose(vol.coords["z"].values, 1.0 + 0.5 * np.arange(6))
    np.testing.assert_allclose(vol.coords["x"].values, -0.5 + 0.25 * np.arange(10))
    np.testing.assert_array_equal(vol.values, data)
    assert open_volume(path, level=1).attrs["voxel_size_um"] == pytest.approx((1.0, 0.5, 0.5))


def test_millimetre_and_angstrom_units(tmp_path: Path) -> None:
    data = np.ones((2, 3, 4), np.uint8)
    mm = [{**a, "unit": "millimeter"} for a in ZYX]
    assert open_volume(_foreign(tmp_path / "mm.zarr", data, axes=mm, scale=[0.002] * 3)
                       ).attrs["voxel_size_um"] == pytest.approx((2.0, 2.0, 2.0))
    ang = [{**a, "unit": "angstrom"} for a in ZYX]
    assert open_volume(_foreign(tmp_path / "a.zarr", data, axes=ang, scale=[640.0] * 3)
                       ).attrs["voxel_size_um"] == pytest.approx((0.064, 0.064, 0.064))


def test_unitless_axes_are_micrometres_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    axes = [{"name": a, "type": "space"} for a in "zyx"]
    path = _foreign(tmp_path / "plain.zarr", np.ones((2, 3, 4), np.uint8), axes=axes, scale=[3.0, 2.0, 2.0])
    with caplog.at_level(logging.WARNING, logger="volmla"):
        vol = open_volume(path)
    assert vol.attrs["voxel_size_um"] == (3.0, 2.0, 2.0)
    assert "no unit" in caplog.text and "z, y, x" in caplog.text


def test_singleton_time_and_channel_axes_are_dropped(tmp_path: Path, rng: np.random.Generator) -> None:
    data = rng.integers(0, 255, (1, 1, 4, 5, 6), dtype=np.uint8)
    path = _foreign(tmp_path / "t.zarr", data, axes=TCZYX, scale=[1.0, 1.0, 100.0, 100.0, 100.0])
    vol = open_volume(path)
    assert vol.dims == ("z", "y", "x") and vol.shape == (4, 5, 6)
    assert vol.attrs["voxel_size_um"] == pytest.approx((0.1, 0.1, 0.1))
    np.testing.assert_array_equal(vol.values, data[0, 0])
    czyx = _foreign(tmp_path / "c.zarr", data[0], axes=TCZYX[1:], scale=[1.0, 100.0, 100.0, 100.0], version="0.4")
    np.testing.assert_array_equal(open_volume(czyx).values, data[0, 0])


def test_several_channels_or_other_axes_are_refused_in_one_line(tmp_path: Path) -> None:
    data = np.zeros((1, 3, 2, 3, 4), np.uint8)
    path = _foreign(tmp_path / "c3.zarr", data, axes=TCZYX, scale=[1.0, 1.0, 1.0, 1.0, 1.0])
    with pytest.raises(VolmlaError, match=r"3 elements along axis 'c'") as info:
        open_volume(path)
    assert "\n" not in str(info.value)
    yx = _foreign(tmp_path / "yx.zarr", np.zeros((3, 4), np.uint8), axes=ZYX[1:], scale=[1.0, 1.0])
    with pytest.raises(VolmlaError, match="volume axes must be"):
        open_volume(yx)
    bad = [{**a, "unit": "furlong"} for a in ZYX]
    with pytest.raises(VolmlaError, match="furlong"):
        open_volume(_foreign(tmp_path / "f.zarr", np.zeros((2, 2, 2), np.uint8), axes=bad, scale=[1.0] * 3))


def test_volmla_volumes_read_as_before(tmp_path: Path, rng: np.random.Generator) -> None:
    vol = rng.integers(0, 4, (5, 6, 7), dtype=np.uint8)
    got = open_volume(write_volume(vol, tmp_path / "v.zarr", voxel_size=(2.0, 1.0, 1.0), kind="phases",
                                   phases=["a", "b"]))
    assert got.attrs["voxel_size_um"] == (2.0, 1.0, 1.0) and got.attrs["translation_um"] == (0.0, 0.0, 0.0)
    assert got.attrs["phases"] == {1: "a", 2: "b"} and got.name == "v"
    np.testing.assert_array_equal(got.coords["z"].values, 2.0 * np.arange(5))


# ----------------------------------------------------------------------------- URLs


def test_fsspec_memory_url_opens(tmp_path: Path, rng: np.random.Generator) -> None:
    fsspec = pytest.importorskip("fsspec")
    data = rng.integers(0, 1000, (6, 7, 8), dtype=np.uint16)
    local = write_volume(data, tmp_path / "m.zarr", voxel_size=0.5, chunks=4, levels=2)
    fs = fsspec.filesystem("memory")
    fs.put(str(local), "/volmla-test/m.zarr", recursive=True)
    try:
        vol = open_volume("memory://volmla-test/m.zarr")
        assert vol.attrs["voxel_size_um"] == (0.5, 0.5, 0.5) and vol.name == "m"
        assert vol.attrs["path"] == "memory://volmla-test/m.zarr"
        np.testing.assert_array_equal(vol.values, data)
        assert open_volume("memory://volmla-test/m.zarr", level=1).shape == (3, 4, 4)
        with pytest.raises(VolmlaError, match="not a readable Zarr group"):
            open_volume("memory://volmla-test/missing.zarr")
    finally:
        fs.rm("/volmla-test", recursive=True)


def test_http_url_opens(tmp_path: Path, rng: np.random.Generator) -> None:
    pytest.importorskip("aiohttp")
    import functools
    import http.server
    import threading

    data = rng.integers(0, 255, (4, 5, 6), dtype=np.uint8)
    write_volume(data, tmp_path / "h.zarr", voxel_size=1.5)

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(tmp_path)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        vol = open_volume(f"http://127.0.0.1:{server.server_address[1]}/h.zarr")
        assert vol.attrs["voxel_size_um"] == (1.5, 1.5, 1.5)
        np.testing.assert_array_equal(vol.values, data)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_missing_protocol_package_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    registry = importlib.import_module("fsspec.registry")  # the module; fsspec.registry is its mapping
    # whatever is installed here, pretend the package for gs:// is not
    monkeypatch.setitem(registry.known_implementations, "gs",
                        {"class": "volmla_no_such_module.GCSFileSystem", "err": "Please install gcsfs"})
    monkeypatch.delitem(registry._registry, "gs", raising=False)
    with pytest.raises(VolmlaError, match=r"needs the optional dependency gcsfs") as info:
        open_volume("gs://bucket/scan.zarr")
    assert "\n" not in str(info.value)


# ----------------------------------------------------------------------------- palette


def test_palette_is_fixed_and_distinct_within_a_volume() -> None:
    colors = phase_colors({1: "Quartz", 2: "mystery", 3: "K-feldspar", 4: "orthoclase", 5: "other"})
    assert colors[1] == MINERAL_COLORS["quartz"] and colors[3] == MINERAL_COLORS["kfeldspar"]
    assert len(set(colors.values())) == 5  # orthoclase shares K-feldspar's colour: it gets another
    assert (colors[2], colors[4], colors[5]) == PALETTE[:3]  # unnamed ones in order of id
    assert phase_colors({7: "quartz"}) == {7: MINERAL_COLORS["quartz"]}  # by name, whatever the id
    many = phase_colors([f"p{i}" for i in range(len(PALETTE))])
    assert len(set(many.values())) == len(PALETTE)
    assert hex_colors(["quartz"]) == {1: "#9e9ac8"}
    assert mineral_key(" Chalco_pyrite ") == "chalcopyrite"


# ----------------------------------------------------------------------------- labels out


def _scan_with_labels(tmp_path: Path, rng: np.random.Generator) -> tuple[Path, np.ndarray, np.ndarray]:
    scan = write_volume(rng.integers(0, 4000, (12, 10, 9), dtype=np.uint16), tmp_path / "scan.zarr",
                        voxel_size=(2.0, 1.0, 1.0), levels=3, chunks=5)
    phases = rng.integers(0, 3, (12, 10, 9), dtype=np.uint8)
    particles = rng.integers(0, 70000, (12, 10, 9), dtype=np.uint32)
    write_labels(scan, "phases", phases, phases={1: "quartz", 2: "albite"})
    write_labels(scan, "particles", particles, chunks=4)
    return scan, phases, particles


def test_write_labels_layout_and_metadata(tmp_path: Path, rng: np.random.Generator) -> None:
    scan, phases, particles = _scan_with_labels(tmp_path, rng)
    assert zarr.open_group(str(scan / "labels"), mode="r").attrs["ome"] == {"version": "0.5",
                                                                          "labels": ["phases", "particles"]}
    meta = zarr.open_group(str(scan / "labels" / "phases"), mode="r").attrs["ome"]["image-label"]
    assert meta["colors"][0] == {"label-value": 0, "rgba": [0, 0, 0, 0]}
    assert meta["colors"][1]["rgba"] == [*MINERAL_COLORS["quartz"], 255]
    assert [p["name"] for p in meta["properties"]] == ["background", "quartz", "albite"]
    assert meta["source"] == {"image": "../../"}
    assert label_metadata(None)["properties"] == [{"label-value": 0, "name": "background"}]
    got = open_volume(scan / "labels" / "phases")
    assert got.attrs["kind"] == "phases" and got.attrs["phases"] == {1: "quartz", 2: "albite"}
    assert got.attrs["voxel_size_um"] == (2.0, 1.0, 1.0) and got.dtype == np.uint8
    np.testing.assert_array_equal(got.values, phases)
    ids = open_volume(scan / "labels" / "particles")
    assert ids.attrs["kind"] == "labels" and ids.dtype == np.uint32
    np.testing.assert_array_equal(ids.values, particles)
    # the pyramid follows the scan's (3 levels) and holds only existing ids (nearest)
    for level in (1, 2):
        lab = open_volume(scan / "labels" / "particles", level=level)
        img = open_volume(scan, level=level)
        assert lab.shape == img.shape and lab.attrs["voxel_size_um"] == img.attrs["voxel_size_um"]
        assert set(np.unique(lab.values)) <= set(np.unique(particles))
    np.testing.assert_array_equal(open_volume(scan / "labels" / "phases", level=1).values, phases[::2, ::2, ::2])
    # the scan itself still opens and reads as before
    assert open_volume(scan).shape == (12, 10, 9)


def test_write_labels_refusals_and_overwrite(tmp_path: Path, rng: np.random.Generator) -> None:
    scan, phases, _ = _scan_with_labels(tmp_path, rng)
    with pytest.raises(VolmlaError, match="overwrite=True"):
        write_labels(scan, "phases", phases, phases={1: "quartz", 2: "albite"})
    write_labels(scan, "phases", phases, phases=["pyrite", "galena"], overwrite=True)
    meta = zarr.open_group(str(scan / "labels" / "phases"), mode="r").attrs["ome"]["image-label"]
    assert [p["name"] for p in meta["properties"]] == ["background", "pyrite", "galena"]
    assert zarr.open_group(str(scan / "labels"), mode="r").attrs["ome"]["labels"] == ["particles", "phases"]
    with pytest.raises(VolmlaError, match="shape"):
        write_labels(scan, "grains", phases[:-1])
    with pytest.raises(VolmlaError, match="name must be"):
        write_labels(scan, "../escape", phases)
    with pytest.raises(VolmlaError, match="voxel size"):
        write_labels(scan, "grains", open_volume(write_volume(phases, tmp_path / "p.zarr", voxel_size=3.0)))
    with pytest.raises(VolmlaError, match="does not exist"):
        write_labels(tmp_path / "none.zarr", "phases", phases)


def test_interrupted_label_write_gets_its_metadata_on_rerun(tmp_path: Path, rng: np.random.Generator) -> None:
    scan, phases, _ = _scan_with_labels(tmp_path, rng)
    group = zarr.open_group(str(scan / "labels" / "phases"), mode="r+")
    ome = dict(group.attrs["ome"])
    del ome["image-label"]  # as if killed between the chunks and the metadata
    group.attrs["ome"] = ome
    write_labels(scan, "phases", phases, phases={1: "quartz", 2: "albite"})
    assert "image-label" in zarr.open_group(str(scan / "labels" / "phases"), mode="r").attrs["ome"]


def test_labels_validate_with_ome_zarr_models(tmp_path: Path, rng: np.random.Generator) -> None:
    pytest.importorskip("ome_zarr_models")
    from ome_zarr_models.v05.image import Image
    from ome_zarr_models.v05.image_label import ImageLabel
    from ome_zarr_models.v05.labels import Labels

    scan, _, _ = _scan_with_labels(tmp_path, rng)
    image = Image.from_zarr(zarr.open_group(str(scan), mode="r"))
    assert image.labels is not None and image.labels.label_paths == ["phases", "particles"]
    Labels.from_zarr(zarr.open_group(str(scan / "labels"), mode="r"))
    label = ImageLabel.from_zarr(zarr.open_group(str(scan / "labels" / "phases"), mode="r"))
    assert label.attributes.ome.image_label is not None
    assert {c.label_value for c in label.attributes.ome.image_label.colors or ()} == {0, 1, 2}


def test_label_volumes_of_their_own_are_ngff_label_images(tmp_path: Path, rng: np.random.Generator) -> None:
    """The data contract: phases, particles and grains volumes are ``image-label`` images
    (colours and names), not only their copies under a scan's ``labels/``; intensity is not."""
    pytest.importorskip("ome_zarr_models")
    from ome_zarr_models.v05.image_label import ImageLabel

    phases = rng.integers(0, 3, (8, 8, 8)).astype(np.uint8)
    ph = write_volume(phases, tmp_path / "ph.zarr", voxel_size=1.0, kind="phases", phases=["quartz", "albite"])
    label = ImageLabel.from_zarr(zarr.open_group(str(ph), mode="r"))
    meta = label.attributes.ome.image_label
    assert meta is not None and meta.source is None
    assert {(p.label_value, p.name) for p in meta.properties or ()} == {(0, "background"), (1, "quartz"), (2, "albite")}
    ids = write_volume(phases.astype(np.uint32), tmp_path / "ids.zarr", voxel_size=1.0, kind="labels")
    assert [c.label_value for c in ImageLabel.from_zarr(zarr.open_group(str(ids), mode="r")).attributes.ome
            .image_label.colors or ()] == [0]
    grey = write_volume(phases, tmp_path / "grey.zarr", voxel_size=1.0, kind="intensity")
    assert "image-label" not in zarr.open_group(str(grey), mode="r").attrs["ome"]


def test_ome_zarr_reader_finds_label_nodes(tmp_path: Path, rng: np.random.Generator) -> None:
    pytest.importorskip("ome_zarr")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from ome_zarr.io import parse_url
        from ome_zarr.reader import Label, Multiscales, Reader

    scan, _, _ = _scan_with_labels(tmp_path, rng)
    location = parse_url(str(scan))
    assert location is not None
    nodes = list(Reader(location)())
    labels = [n for n in nodes if any(isinstance(s, Label) for s in n.specs)]
    assert {Path(str(n.zarr.path)).name for n in labels} == {"phases", "particles"}
    assert any(isinstance(s, Multiscales) for s in nodes[0].specs)
    phases = next(n for n in labels if Path(str(n.zarr.path)).name == "phases")
    assert phases.metadata["color"][1] == [v / 255 for v in (*MINERAL_COLORS["quartz"], 255)]
    assert phases.metadata["properties"][2]["name"] == "albite"
