"""The demo replaces an earlier demo folder only once the new one is complete."""

from __future__ import annotations

import hashlib
import importlib
from pathlib import Path

import pytest

from volmla.errors import VolmlaError
from volmla.pipeline import demo

demo_module = importlib.import_module("volmla.pipeline.demo")  # the module (the package re-exports the function)


def _tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_failed_rerun_keeps_the_previous_demo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "demo"
    summary = demo(out, shape=(48, 48, 48), unet=False)
    assert Path(summary["report"]).is_file()
    assert summary["report"].startswith(str(out))
    # the split is kept; the particles the report reads have their contacts refined
    from volmla.io import open_volume

    assert open_volume(out / "particles.zarr").attrs["provenance"][-1]["step"] == "contacts"
    assert (out / "particles_split.zarr").is_dir() and "contacts" in summary["timings_s"]
    before = _tree(out)

    with pytest.raises(VolmlaError, match="exists: pass overwrite=True"):
        demo(out, shape=(48, 48, 48), unet=False)

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(demo_module, "_write_tiff_slices", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        demo(out, shape=(48, 48, 48), unet=False, overwrite=True)
    assert _tree(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo"]  # no temporary left behind
