"""Pipeline config validation: every key checked once, one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from volmla.errors import VolmlaError
from volmla.pipeline.config import InputConfig, load_config, validate_config


def test_relative_paths_are_taken_from_the_config_folder(tmp_path: Path) -> None:
    (tmp_path / "run.yaml").write_text(
        "out: results\ninput: scan.zarr\npreprocess: [gaussian:sigma=1]\n"
        "segment: {method: threshold, classes: 3}\nparticles: {min_size: 5}\n"
    )
    cfg = load_config(tmp_path / "run.yaml")
    assert cfg.out == tmp_path / "results"
    assert cfg.input == InputConfig(zarr=tmp_path / "scan.zarr")
    assert cfg.segment is not None and cfg.segment.method == "threshold"
    assert cfg.particles.options() == {"min_size": 5}
    assert cfg.particles.refines_contacts
    assert cfg.grains is True


def test_a_builtin_model_is_found_wherever_the_config_is(tmp_path: Path) -> None:
    from volmla.segment.sessions import resolve_model

    (tmp_path / "run.yaml").write_text("out: results\ninput: scan.zarr\nparticles: {model: 'builtin:particles'}\n")
    cfg = load_config(tmp_path / "run.yaml")
    assert cfg.particles.model == resolve_model("builtin:particles") and cfg.particles.model.is_file()


def test_ingest_input_paths_become_a_list(tmp_path: Path) -> None:
    cfg = validate_config({"out": "o", "input": {"paths": "scan", "voxel_size": 2.0}}, base=tmp_path)
    assert cfg.input.paths == [tmp_path / "scan"]
    assert cfg.segment is None


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ([1, 2], "must be a YAML mapping"),
        ({"out": "o"}, "needs at least 'out'"),
        ({"out": "o", "input": "x.zarr", "segmnt": {}}, "config has an unknown section 'segmnt'"),
        ({"out": "o", "input": {"path": "x"}}, "config section 'input' has an unknown key 'path'"),
        ({"out": "o", "input": {"paths": []}}, "must list at least one"),
        ({"out": "o", "input": "x.zarr", "segment": {"method": "svm"}}, "segment.method must be one of"),
        ({"out": "o", "input": "x.zarr", "segment": {"method": "model"}}, "needs segment.model"),
        ({"out": "o", "input": "x.zarr", "segment": {"method": "rf"}}, "needs segment.labels"),
        ({"out": "o", "input": "x.zarr", "segment": {"method": "kmeans"}}, "needs segment.classes"),
        ({"out": "o", "input": "x.zarr", "preprocess": "gaussian"}, "must be a list"),
        ({"out": "o", "input": "x.zarr", "grains": "yes"}, "'grains' must be true or false"),
        ({"out": "o", "input": "x.zarr", "particles": {"contacts": "no"}},
         "particles.contacts must be true or false"),
        ({"out": "o", "input": "x.zarr", "liberation": {"densities": [1]}}, "needs a 'segment' section"),
        ({"out": "o", "input": "x.zarr", "segment": {"method": "kmeans", "classes": 3, "phase_names": ["a", "b"]},
          "liberation": {"densities": [2.6]}}, r"liberation.*one value per phase name \(2\), got 1"),
        ({"out": "o", "input": "x.zarr", "particles": {"size": 3}}, "unknown key 'size'"),
        ({"out": "o", "input": "x.zarr", "particles": {"model": "p.onnx"}}, "particles.model .*p.onnx is not a file"),
        ({"out": "o", "input": "x.zarr", "particles": {"model": "p.onnx", "threshold": "auto"}},
         "leave out particles.threshold"),
        ({"out": "o", "input": {"paths": ["a"], "overlap": 20}},
         "config input.overlap 20 is for stitching several stacks: set input.stitch: true"),
        ({"out": "o", "input": {"paths": ["a", "b"], "overlap": 20, "stitch": False}}, "input.overlap 20"),
        ({"out": "o", "input": "x.zarr", "segment": {"method": "kmeans", "classes": 3, "psf_sigma": 0.7}},
         "segment.psf_sigma is for method regions"),
        ({"out": "o", "input": "x.zarr", "segment": {"labels": "l.zarr", "psf_sigma": -1}}, "from 0 to 10"),
        ({"out": "o", "input": "x.zarr", "segment": {"labels": "l.zarr", "psf_sigma": 40}}, "from 0 to 10"),
        ({"out": "o", "input": "x.zarr", "segment": {"labels": "l.zarr", "psf_sigma": "0.7"}}, "must be a number"),
    ],
)
def test_bad_configs_name_the_problem(raw: object, message: str, tmp_path: Path) -> None:
    with pytest.raises(VolmlaError, match=message):
        validate_config(raw, base=tmp_path)


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(VolmlaError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("out: [unclosed\n")
    with pytest.raises(VolmlaError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")


def test_overlap_with_stitch_or_none_is_taken(tmp_path: Path) -> None:
    cfg = validate_config({"out": "o", "input": {"paths": ["a", "b"], "stitch": True, "overlap": 20}}, base=tmp_path)
    assert cfg.input.options() == {"stitch": True, "overlap": 20}
    cfg = validate_config({"out": "o", "input": {"paths": ["a"], "overlap": None}}, base=tmp_path)
    assert cfg.input.options() == {"overlap": None}


def test_a_known_psf_reaches_the_region_path_and_names_the_job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``segment.psf_sigma`` (method regions) replaces the PSF estimate of the partial-volume
    correction; the phases' job names it, so a run with another sigma redoes the phases."""
    import numpy as np
    import xarray as xr

    import volmla.segment
    from volmla.io import write_volume
    from volmla.pipeline.run import _segment

    write_volume(np.ones((4, 4, 4), np.uint8), tmp_path / "l.zarr", voxel_size=1.0, kind="labels")
    seg = validate_config({"out": "o", "input": "x.zarr", "segment": {"labels": "l.zarr", "psf_sigma": 0.6}},
                          base=tmp_path).segment
    assert seg is not None and seg.method == "regions" and seg.psf_sigma == 0.6 and seg.job()["psf_sigma"] == "0.6"
    seen: dict = {}

    class _Seg:
        phases = "phases"

    def fake(volume: object, **kwargs: object) -> _Seg:
        seen.update(kwargs)
        return _Seg()

    monkeypatch.setattr(volmla.segment, "segment_phases", fake)
    assert _segment(xr.DataArray(np.zeros((4, 4, 4))), seg, device="cpu", out=tmp_path) == "phases"
    assert seen["region_options"] == {"psf_sigma": 0.6}
    plain = validate_config({"out": "o", "input": "x.zarr", "segment": {"labels": "l.zarr"}}, base=tmp_path).segment
    assert plain is not None and plain.psf_sigma is None and "psf_sigma" not in plain.job()
    _segment(xr.DataArray(np.zeros((4, 4, 4))), plain, device="cpu", out=tmp_path)
    assert seen["region_options"] is None
