"""Context calibration (volmla.segment.context) on "networks" whose reach is known."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from volmla.errors import VolmlaError
from volmla.segment.context import (
    block_voxels,
    choose_context,
    context_agreement,
    context_crops,
    enough_voxels,
)


def box_net(reach: int):
    """A two-class "network" whose logit is the mean over a (2 reach + 1)^3 box with zero
    padding at the tile's faces (as a U-Net's convolutions pad): labels depend on the
    input ``reach`` voxels away, no further."""

    def predict(x: np.ndarray) -> np.ndarray:
        size = (1, 1) + (2 * reach + 1,) * (x.ndim - 2)
        s = ndi.uniform_filter(x, size=size, mode="constant", cval=0.0)
        return np.concatenate([s, 0.5 - s], axis=1)

    return predict


def scan(shape=(40, 40, 40), seed=0) -> np.ndarray:
    """Smooth noise about the two classes' boundary (0.25), so any missing context flips labels."""
    rng = np.random.default_rng(seed)
    g = ndi.gaussian_filter(rng.random(shape), 2)
    return (0.25 + 4.0 * (g - g.mean())).astype(np.float32)


@pytest.mark.parametrize("reach", [1, 3, 5])
def test_the_reach_is_found_on_the_pooling_grid(reach: int) -> None:
    image = scan()
    crops = context_crops(image, image.shape, halo=8, multiple=2, dim=3, rng=np.random.default_rng(1), block=16)
    assert [c.shape for c in crops] == [(32, 32, 32)] * 2
    agreement = context_agreement(box_net(reach), crops, halo=8, multiple=2, dim=3)
    assert sorted(agreement) == [0, 2, 4, 6, 8] and agreement[8] == 1.0
    # exact from the reach on (rounded up to the grid), not below it
    need = reach + reach % 2
    assert all(agreement[c] == 1.0 for c in agreement if c >= need)
    assert all(agreement[c] < 1.0 for c in agreement if c < need)
    assert choose_context(agreement, voxels=block_voxels(crops, halo=8, dim=3), bar=0.99) == need


def test_the_bar_trades_context_for_agreement() -> None:
    agreement = {0: 0.95, 4: 0.9985, 8: 0.9992, 12: 0.99999, 28: 1.0}
    assert choose_context(agreement, voxels=10**6) == 8
    assert choose_context(agreement, voxels=10**6, bar=0.9999) == 12
    # fewer voxels, a wider margin: 0.9992 is no longer sure to be above 0.999
    assert choose_context(agreement, voxels=5_000) == 12
    assert choose_context({0: 0.5, 4: 0.6}, voxels=10**6) == 4  # none reaches the bar: the largest measured
    assert not enough_voxels(2_999) and enough_voxels(3_000)
    with pytest.raises(VolmlaError, match="at least one"):
        choose_context({}, voxels=10)
    with pytest.raises(VolmlaError, match="voxels counted"):
        choose_context(agreement, voxels=0)


def test_2d_crops_are_slices_with_the_halo_in_y_and_x() -> None:
    image = scan((6, 30, 30))
    crops = context_crops(image, image.shape, halo=4, multiple=2, dim=2, rng=np.random.default_rng(0))
    assert [c.shape for c in crops] == [(4, 30, 30)] * 2  # block shrunk to 22 to fit
    agreement = context_agreement(box_net(2), crops, halo=4, multiple=2, dim=2)
    assert agreement[2] == 1.0 and agreement[0] < 1.0


def test_crops_read_through_a_function_and_refuse_a_small_scan() -> None:
    image = scan((20, 20, 20))
    seen: list[tuple[slice, ...]] = []

    def read(box: tuple[slice, ...]) -> np.ndarray:
        seen.append(box)
        return image[box]

    crops = context_crops(read, image.shape, halo=6, multiple=4, dim=3, rng=np.random.default_rng(0), crops=2)
    assert len(seen) == 2 and all(c.shape == (20, 20, 20) for c in crops)  # block 8 = 20 - 2 x 6
    assert context_crops(image, image.shape, halo=9, multiple=4, dim=3, rng=np.random.default_rng(0)) == []
    with pytest.raises(VolmlaError, match="holds no block"):
        context_agreement(box_net(1), [image[:12, :12, :12]], halo=6, multiple=2, dim=3)
    with pytest.raises(VolmlaError, match="at least one crop"):
        context_agreement(box_net(1), [], halo=6, multiple=2, dim=3)


def test_stop_spares_the_larger_contexts() -> None:
    image = scan()
    crops = context_crops(image, image.shape, halo=8, multiple=2, dim=3, rng=np.random.default_rng(1), block=16)
    calls: list[tuple[int, ...]] = []
    net = box_net(3)

    def predict(x: np.ndarray) -> np.ndarray:
        calls.append(x.shape[2:])
        return net(x)

    full = context_agreement(net, crops, halo=8, multiple=2, dim=3)
    early = context_agreement(predict, crops, halo=8, multiple=2, dim=3, stop=1.0)
    assert early == {0: full[0], 2: full[2], 4: 1.0, 8: 1.0}  # 6 is never run
    assert max(s[0] for s in calls if s[0] < 32) == 16 + 2 * 4
