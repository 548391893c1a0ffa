"""U-Net architecture, receptive-field halo and particle targets."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from volmla.errors import VolmlaError  # noqa: E402
from volmla.segment import SPARSE_LABEL_OFFSET, encode_sparse_labels, particle_targets  # noqa: E402
from volmla.segment.model import UNet, receptive_halo, size_multiple  # noqa: E402


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("norm", ["batch", "instance", "group", "none"])
def test_unet_shapes(dim: int, norm: str) -> None:
    net = UNet(dim=dim, n_classes=3, depth=3, base=4, norm=norm).eval()
    x = torch.zeros((2, 1, *([8] * dim)))
    assert tuple(net(x).shape) == (2, 3, *([8] * dim))


def test_unet_depth_five_2d() -> None:
    net = UNet(dim=2, n_classes=2, depth=5, base=2).eval()
    assert tuple(net(torch.zeros(1, 1, 32, 32)).shape) == (1, 2, 32, 32)


@pytest.mark.parametrize("depth", [2, 3])
def test_receptive_halo_covers_the_gradient_support(depth: int) -> None:
    torch.manual_seed(0)
    net = UNet(dim=3, n_classes=2, depth=depth, base=4).eval()
    reach = 0
    for c in (20, 21):  # both parities of the pooling grid
        x = torch.randn(1, 1, 40, 40, 40, requires_grad=True)
        net(x)[0, :, c, c, c].sum().backward()
        support = (x.grad[0, 0].abs() > 0).nonzero()
        reach = max(reach, int((c - support.min(0).values).max()), int((support.max(0).values - c).max()))
    assert 0 < reach <= receptive_halo(depth)
    assert receptive_halo(depth) % size_multiple(depth) == 0


def test_unnormalised_unet_tile_with_halo_matches_whole_volume() -> None:
    torch.manual_seed(0)
    net = UNet(dim=3, n_classes=3, depth=2, base=4, norm="none").eval()
    x = torch.randn(1, 1, 32, 32, 32)
    halo = receptive_halo(2)
    with torch.no_grad():
        whole = net(x)
        tile = net(x[:, :, :, 4 : 4 + 12 + 2 * halo, 2 : 2 + 12 + 2 * halo])
    assert whole.abs().mean() > 0
    inner = tile[:, :, :, halo : halo + 12, halo : halo + 12]
    assert torch.allclose(inner, whole[:, :, :, 4 + halo : 4 + halo + 12, 2 + halo : 2 + halo + 12], atol=1e-5)


def test_unet_rejects_bad_options() -> None:
    with pytest.raises(VolmlaError, match="depth"):
        UNet(depth=6)
    with pytest.raises(VolmlaError, match="norm"):
        UNet(norm="layer")  # type: ignore[arg-type]


def test_particle_targets_background_interior_boundary() -> None:
    p = np.zeros((1, 5, 7), np.uint32)
    p[0, 1:4, 1:3] = 1
    p[0, 1:4, 3:6] = 2  # touching particle
    t = particle_targets(p)
    assert t[0, 0].tolist() == [0] * 7
    assert t[0, 2].tolist() == [0, 2, 2, 2, 1, 2, 0]
    assert set(np.unique(t)) == {0, 1, 2}


def test_sparse_label_offset() -> None:
    phases = np.array([0, 1, 3], np.uint8)
    assert (encode_sparse_labels(phases) == phases + SPARSE_LABEL_OFFSET).all()
