"""The demo replaces an earlier demo folder only once the new one is complete."""

from __future__ import annotations

import hashlib
import importlib
from pathlib import Path

import pytest

from volmla.errors import VolmlaError
from volmla.pipeline import demo

demo_module = importlib.import_module("volmla.pipeline.demo")  # the module (the package re-exports the function)
SMALLEST = demo_module.MIN_SHAPE


def _tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_failed_rerun_keeps_the_previous_demo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "demo"
    summary = demo(out, shape=SMALLEST, unet=False)
    assert Path(summary["report"]).is_file()
    assert summary["report"].startswith(str(out))
    # the split is kept; the particles the report reads have their contacts refined
    from volmla.io import open_volume

    assert open_volume(out / "particles.zarr").attrs["provenance"][-1]["step"] == "contacts"
    assert (out / "particles_split.zarr").is_dir() and "contacts" in summary["timings_s"]
    before = _tree(out)

    with pytest.raises(VolmlaError, match="exists: pass overwrite=True"):
        demo(out, shape=SMALLEST, unet=False)

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(demo_module, "_write_tiff_slices", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        demo(out, shape=SMALLEST, unet=False, overwrite=True)
    assert _tree(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo"]  # no temporary left behind


def test_the_smallest_depth_leaves_held_out_planes() -> None:
    """MIN_SHAPE's depth is the least that leaves a plane 8 away from the labelled ones."""
    depth = SMALLEST[0]
    assert demo_module._held_out_planes(depth, demo_module._label_planes(depth))
    with pytest.raises(VolmlaError, match=f"a depth of {depth - 1} planes leaves no held-out plane"):
        demo_module._held_out_planes(depth - 1, demo_module._label_planes(depth - 1))


@pytest.mark.parametrize("shape", [(32, 32, 32), (32, 64, 64), (40, 32, 32), (64, 32, 32), (36, 63, 64),
                                   (36, 64, 63), (36, 64), (513, 512, 512)])
def test_shapes_the_demo_cannot_run_are_refused_before_anything(tmp_path: Path, shape: tuple[int, ...]) -> None:
    with pytest.raises(VolmlaError, match="shape") as info:
        demo(tmp_path / "d", shape=shape, unet=False)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "d").exists()


def test_a_file_is_no_demo_folder(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not a folder\n")
    for overwrite in (False, True):
        with pytest.raises(VolmlaError, match="notes.txt is a file, not a folder: refusing to replace it"):
            demo(tmp_path / "notes.txt", shape=SMALLEST, unet=False, overwrite=overwrite)
    assert (tmp_path / "notes.txt").read_text() == "not a folder\n"


def test_a_diverged_registration_is_one_line_and_leaves_no_folder(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """SimpleITK raises on the degenerate transform a diverged 2-D registration reaches
    (it did on planes of 32 voxels, depending on the phantom): one line, and a first demo
    that fails leaves no partial folder."""
    import volmla.synthetic

    def diverged(*args: object, **kwargs: object) -> None:
        raise RuntimeError("Exception thrown in SimpleITK ImageRegistrationMethod_Execute: /tmp/itkImageBase.hxx:77:\n"
                           "ITK ERROR: Image(0x563d9db80a80): Zero-valued spacing is not supported and may result "
                           "in undefined behavior.\nRefusing to change spacing from [1, 1] to [0, 3110.39]")

    monkeypatch.setattr(volmla.synthetic, "correlative_labels", diverged)
    with pytest.raises(VolmlaError, match="correlative registration of the element maps failed") as info:
        demo(tmp_path / "d", shape=SMALLEST, unet=False)
    message = str(info.value)
    assert "\n" not in message and "Zero-valued spacing" in message and "0x" not in message
    assert sorted(p.name for p in tmp_path.iterdir()) == []
