"""volmla train / export / segment / evaluate on the command line."""

from __future__ import annotations

import json

import numpy as np
import pytest

from volmla.cli import main
from volmla.io import open_volume, write_volume

pytest.importorskip("torch")


def toy(shape=(24, 32, 32), seed=0):
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.indices(shape)
    truth = (np.sin(xx / 3.0) + np.cos(yy / 4.0) > 0).astype(np.uint8) + (np.sin(zz / 3.0 + xx / 5.0) > 0.6)
    image = (1000.0 + 100.0 * truth + rng.normal(0, 20, shape)).astype(np.uint16)
    return image, truth.astype(np.uint8)


@pytest.fixture(scope="module")
def scheduler():
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, protocol="tcp", host="127.0.0.1",
                      dashboard_address=None) as local:
        yield local.scheduler_address


@pytest.fixture
def volumes(tmp_path):
    image, truth = toy()
    labels = np.zeros_like(truth)
    for z in (4, 12, 20):
        labels[z] = truth[z] + 1
    phases = {1: "quartz", 2: "pyrite"}
    return {
        "image": write_volume(image, tmp_path / "image.zarr", voxel_size=2.0, chunks=16),
        "truth": write_volume(truth, tmp_path / "truth.zarr", voxel_size=2.0, chunks=16, kind="phases", phases=phases),
        "labels": write_volume(labels, tmp_path / "labels.zarr", voxel_size=2.0, chunks=16, kind="labels", phases=phases),
    }


def test_train_export_segment_evaluate(tmp_path, volumes, scheduler, capsys) -> None:
    g = ["-q", "--scheduler", scheduler]
    pt, onnx_path = tmp_path / "m.pt", tmp_path / "m.onnx"
    assert main([*g, "train", "--image", str(volumes["image"]), "--labels", str(volumes["labels"]), "-o", str(pt),
                 "--depth", "2", "--base", "4", "--patch", "16", "--batch", "2", "--iterations", "10", "--lr", "0.01",
                 "--threads", "1"]) == 0
    assert main([*g, "export", str(pt), "-o", str(onnx_path)]) == 0
    out, unc = tmp_path / "phases.zarr", tmp_path / "conf.zarr"
    assert main([*g, "segment", str(volumes["image"]), "-o", str(out), "--model", str(onnx_path),
                 "--tile", "16", "16", "16", "--uncertainty", str(unc)]) == 0
    phases = open_volume(out)
    assert phases.dtype == np.uint8 and phases.attrs["kind"] == "phases"
    assert phases.attrs["phases"] == {1: "quartz", 2: "pyrite"}
    assert open_volume(unc).dtype == np.uint8
    capsys.readouterr()
    assert main([*g, "evaluate", "--pred", str(out), "--truth", str(volumes["truth"]), "--out", str(tmp_path / "ev")]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert 0 <= printed["accuracy_excluding_void"] <= 1
    assert (tmp_path / "ev" / "confusion.png").exists() and (tmp_path / "ev" / "confusion.csv").exists()
    assert main([*g, "evaluate", "--pred", str(out), "--truth", str(volumes["labels"]), "--mask", "labelled-only"]) == 0
    # an existing output is refused and kept
    before = open_volume(out).data.compute()
    assert main([*g, "segment", str(volumes["image"]), "-o", str(out), "--model", str(onnx_path)]) == 2
    assert "exists" in capsys.readouterr().err
    assert (open_volume(out).data.compute() == before).all()


def test_classical_methods(tmp_path, volumes, scheduler, capsys) -> None:
    g = ["-q", "--scheduler", scheduler]
    assert main([*g, "segment", str(volumes["image"]), "-o", str(tmp_path / "t.zarr"), "--method", "threshold", "--classes", "3"]) == 0
    assert main([*g, "segment", str(volumes["image"]), "-o", str(tmp_path / "k.zarr"), "--method", "kmeans", "--classes", "3"]) == 0
    truth = open_volume(volumes["truth"]).data.compute()
    assert (open_volume(tmp_path / "k.zarr").data.compute() == truth).mean() > 0.9
    rf = tmp_path / "rf.onnx"
    assert main([*g, "segment", str(volumes["image"]), "-o", str(tmp_path / "rf.zarr"), "--method", "rf",
                 "--labels", str(volumes["labels"]), "--save-model", str(rf), "--sigmas", "0.7,1.6"]) == 0
    assert main([*g, "segment", str(volumes["image"]), "-o", str(tmp_path / "rf2.zarr"), "--model", str(rf)]) == 0
    a, b = (open_volume(tmp_path / n).data.compute() for n in ("rf.zarr", "rf2.zarr"))
    assert (a == b).all()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--method", "threshold"], "--classes"),
        (["--method", "magic"], "--method must be one of"),
        (["--method", "rf"], "--labels"),
        ([], "--model"),
    ],
)
def test_segment_user_errors(tmp_path, volumes, capsys, args, message) -> None:
    assert main(["segment", str(volumes["image"]), "-o", str(tmp_path / "x.zarr"), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "x.zarr").exists()


def test_labels_alone_segment_by_region_and_particles_can_be_given(tmp_path, capsys) -> None:
    """``volmla segment IN -o OUT --labels L``: the default path, phases by region inside the
    particles it labels from the CT; ``--particles`` uses given ones (issue 17)."""
    from volmla.particles import label_particles
    from volmla.synthetic import crushed_ore

    ore = crushed_ore(shape=(48, 48, 48), seed=2, level="easy")
    truth = np.asarray(ore.phases)
    labels = np.zeros_like(truth)
    for z in (12, 24, 36):
        labels[z] = truth[z] + 1
    scan = write_volume(np.asarray(ore.intensity), tmp_path / "scan.zarr", voxel_size=1.0, chunks=24)
    lab = write_volume(labels, tmp_path / "labels.zarr", voxel_size=1.0, chunks=24)
    assert main(["-q", "segment", str(scan), "-o", str(tmp_path / "ph.zarr"), "--labels", str(lab)]) == 0
    phases = open_volume(tmp_path / "ph.zarr")
    assert phases.attrs["provenance"][-1]["method"] == "regions"
    before = open_volume(scan).attrs["provenance"]  # the scan's steps once, then the job's full step
    assert phases.attrs["provenance"][:-1] == before and "labels" in phases.attrs["provenance"][-1]
    solid = truth > 0
    assert (phases.values[solid] == truth[solid]).mean() > 0.85
    parts = write_volume(label_particles(open_volume(scan)).labels, tmp_path / "parts.zarr", voxel_size=1.0,
                         kind="labels")
    assert main(["-q", "segment", str(scan), "-o", str(tmp_path / "ph2.zarr"), "--labels", str(lab),
                 "--particles", str(parts)]) == 0
    np.testing.assert_array_equal(open_volume(tmp_path / "ph2.zarr").values, phases.values)
    assert main(["segment", str(scan), "-o", str(tmp_path / "x.zarr"), "--method", "threshold", "--classes", "4",
                 "--particles", str(parts)]) == 2
    assert "--particles is for --method regions" in capsys.readouterr().err
    # the written step keeps what the segmentation measured: its levels and the PSF it estimated
    grey = phases.attrs["provenance"][-1]["grey_levels"]
    assert grey["psf_estimated"] is True and 0 < grey["psf_sigma"] <= 2 and grey["noise_sigma"] > 0
    capsys.readouterr()


def test_a_known_psf_is_given_to_the_region_path(tmp_path, capsys) -> None:
    """``--psf-sigma`` replaces the estimate of the partial-volume correction (issue 17: the PSF
    estimate moves the volumes of phases told apart over grains); it is recorded, a rerun with
    another sigma is another job, and bad values or another method are one line, exit 2."""
    from volmla.segment.pooled import region_phases
    from volmla.synthetic import crushed_ore

    ore = crushed_ore(shape=(40, 40, 40), seed=1, level="easy")
    labels = np.zeros(ore.phases.shape, np.uint8)
    for z in (10, 20, 30):
        labels[z] = ore.phases[z] + 1
    scan = write_volume(np.asarray(ore.intensity), tmp_path / "scan.zarr", voxel_size=1.0, chunks=20)
    lab = write_volume(labels, tmp_path / "labels.zarr", voxel_size=1.0, chunks=20)
    parts = write_volume(ore.particles, tmp_path / "parts.zarr", voxel_size=1.0, kind="labels")
    base = ["-q", "segment", str(scan), "--labels", str(lab), "--particles", str(parts)]
    assert main([*base, "-o", str(tmp_path / "a.zarr"), "--psf-sigma", "0.5"]) == 0
    got = open_volume(tmp_path / "a.zarr")
    assert got.attrs["provenance"][-1]["grey_levels"]["psf_sigma"] == 0.5
    assert got.attrs["provenance"][-1]["grey_levels"]["psf_estimated"] is False
    want = region_phases(ore.intensity, ore.particles, labels, psf_sigma=0.5).compute()
    np.testing.assert_array_equal(got.values, want)
    assert main([*base, "-o", str(tmp_path / "a.zarr"), "--psf-sigma", "0.9"]) == 2  # another job
    assert "--overwrite" in capsys.readouterr().err
    for bad, message in ((["--psf-sigma", "-1"], "--psf-sigma must be"), (["--psf-sigma", "50"], "from 0 to 10"),
                         (["--psf-sigma", "nan"], "--psf-sigma must be")):
        assert main([*base, "-o", str(tmp_path / "x.zarr"), *bad]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1
    assert main(["segment", str(scan), "-o", str(tmp_path / "x.zarr"), "--method", "kmeans", "--classes", "3",
                 "--psf-sigma", "0.7"]) == 2
    err = capsys.readouterr().err
    assert "--psf-sigma is for --method regions" in err and err.count("\n") == 1
    assert not (tmp_path / "x.zarr").exists()


def test_particle_unet_chain_is_read_as_an_interior_map(tmp_path, scheduler) -> None:
    """train --target particles -> export -> segment -> particles: the class map is recognised."""
    from volmla.segment import particle_targets

    ids = np.zeros((24, 32, 32), np.uint32)
    ids[4:20, 6:26, 2:16] = 1
    ids[4:20, 6:26, 16:30] = 2
    rng = np.random.default_rng(1)
    image = (1000.0 + 200.0 * (ids > 0) + rng.normal(0, 10, ids.shape)).astype(np.uint16)
    write_volume(image, tmp_path / "scan.zarr", kind="intensity", voxel_size=1.0)
    write_volume(ids, tmp_path / "ids.zarr", kind="labels", voxel_size=1.0)
    g = ["-q", "--scheduler", scheduler]
    assert main(["train", "--image", str(tmp_path / "scan.zarr"), "--labels", str(tmp_path / "ids.zarr"),
                 "--target", "particles", "-o", str(tmp_path / "p.pt"), "--depth", "2", "--base", "4",
                 "--patch", "16", "--batch", "2", "--iterations", "60", "--lr", "0.01", "--threads", "1"]) == 0
    assert main(["export", str(tmp_path / "p.pt"), "-o", str(tmp_path / "p.onnx")]) == 0
    assert main([*g, "segment", str(tmp_path / "scan.zarr"), "--model", str(tmp_path / "p.onnx"),
                 "-o", str(tmp_path / "classes.zarr")]) == 0
    classes = open_volume(tmp_path / "classes.zarr")
    assert {int(k): v for k, v in classes.attrs["phases"].items()} == {1: "interior", 2: "boundary"}
    assert (classes.data == 1).any().compute()
    assert main([*g, "particles", str(tmp_path / "classes.zarr"), "-o", str(tmp_path / "p.zarr")]) == 0
    step = open_volume(tmp_path / "p.zarr").attrs["provenance"][-1]
    assert step["threshold"] == "interior"  # read as a map, not as nonzero-is-solid
    assert particle_targets(ids).max() == 2  # the classes the network was taught
