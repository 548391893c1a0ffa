"""Reading SEM images: vendor pixel sizes, the info bar, bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from volmla.errors import VolmlaError
from volmla.sem import info_bar_rows, read_sem, sem_files, tiff_pixel_size


def _tif(path: Path, tag: int, text: str, image: np.ndarray | None = None) -> Path:
    data = np.zeros((16, 16), np.uint8) if image is None else image
    tifffile.imwrite(str(path), data, extratags=[(tag, "s", 0, text, True)])
    return path


def test_fei_zeiss_tescan_pixel_sizes(tmp_path: Path) -> None:
    fei = _tif(tmp_path / "fei.tif", 34682, "[User]\nUser=a\n[Scan]\nPixelWidth=2.5e-08\nPixelHeight=2.5e-08\n")
    sfeg = _tif(tmp_path / "sfeg.tif", 34680, "[Scan]\nPixelWidth=1e-07\n")
    zeiss = _tif(tmp_path / "zeiss.tif", 34118,
                 "\r\nAP_IMAGE_PIXEL_SIZE\r\nImage Pixel Size = 12.5 nm\r\nAP_WD\r\nWD = 5 mm\r\n")
    tescan = _tif(tmp_path / "tescan.tif", 50431, "[MAIN]\r\nDevice=MIRA\r\nPixelSizeX=4.2e-08\r\nPixelSizeY=4.2e-08\r\n")
    plain = tmp_path / "plain.tif"
    tifffile.imwrite(str(plain), np.zeros((8, 8), np.uint8))
    assert tiff_pixel_size(fei) == pytest.approx(0.025)
    assert tiff_pixel_size(sfeg) == pytest.approx(0.1)
    assert tiff_pixel_size(zeiss) == pytest.approx(0.0125)
    assert tiff_pixel_size(tescan) == pytest.approx(0.042)
    assert tiff_pixel_size(plain) is None
    assert read_sem(fei).pixel_size == pytest.approx(0.025)
    assert read_sem(fei, pixel_size=0.5).pixel_size == 0.5  # the caller wins


def test_missing_pixel_size_and_non_images_are_one_line(tmp_path: Path) -> None:
    from skimage.io import imsave

    png = tmp_path / "a.png"
    imsave(png, np.random.default_rng(0).integers(0, 255, (32, 32)).astype(np.uint8), check_contrast=False)
    with pytest.raises(VolmlaError, match="pixel_size="):
        read_sem(png)
    assert read_sem(png, pixel_size=0.2).image.shape == (32, 32)
    fake = tmp_path / "b.png"
    fake.write_text("not an image")
    with pytest.raises(VolmlaError, match="cannot read"):
        read_sem(fake, pixel_size=0.2)
    text = tmp_path / "c.txt"
    text.write_text("x")
    with pytest.raises(VolmlaError, match="TIFF, PNG"):
        sem_files([text])
    with pytest.raises(VolmlaError, match="no images"):
        sem_files([tmp_path / "empty"] if (tmp_path / "empty").mkdir() is None else [])


def test_folder_skips_truth_labels(tmp_path: Path) -> None:
    for name in ("a.tif", "a.labels.tif", "b.png"):
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in sem_files([tmp_path])] == ["a.tif", "b.png"]


@pytest.mark.parametrize("bar_value", [0, 255])
def test_info_bar_found_and_cropped(tmp_path: Path, bar_value: int) -> None:
    rng = np.random.default_rng(3)
    img = rng.integers(40, 200, (120, 90)).astype(np.uint8)
    img[-14:] = bar_value
    img[-10:-6, 5:9] = 255 - bar_value  # text marks
    img[-9:-7, 30:60] = 255 - bar_value
    assert info_bar_rows(img) == 14
    path = _tif(tmp_path / "x.tif", 34682, "[Scan]\nPixelWidth=1e-08\n", img)
    sem = read_sem(path)
    assert sem.bar_rows == 14 and sem.image.shape == (106, 90)
    assert info_bar_rows(img[:-14]) == 0  # no bar: nothing cropped
