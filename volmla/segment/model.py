"""The U-Net (2-D slice-wise or 3-D) that volmla trains, exports and runs (needs torch).

1. An encoder of ``depth`` resolution levels, each two 3x3(x3) convolutions with
   normalisation (``batch`` | ``instance`` | ``group`` | ``none``: biased convolutions,
   He-initialised) and ReLU, ``base * 2**level``
   channels, levels joined by 2x max pooling;
2. a decoder that upsamples by a stride-2 transposed convolution, concatenates the
   encoder's features of the same level and applies two convolutions again;
3. a 1x1(x1) convolution to ``n_classes`` logits.

Spatial input sizes must be multiples of ``2 ** (depth - 1)`` (:func:`size_multiple`);
:func:`receptive_halo` gives the context one output voxel sees, rounded up to that
multiple, which is the halo inference reads around every block. With batch
normalisation (per-channel affine at inference) a tile whose halo covers the receptive
field gives exactly the output of the whole volume; instance and group normalisation
use statistics of the tile, so their output depends (slightly) on the tiling.
"""

from __future__ import annotations

import logging
import math
from typing import Literal

import torch
from torch import nn

from volmla.errors import VolmlaError

logger = logging.getLogger(__name__)

Norm = Literal["batch", "instance", "group", "none"]
NORMS = ("batch", "instance", "group", "none")

__all__ = ["NORMS", "UNet", "receptive_halo", "size_multiple"]


def size_multiple(depth: int) -> int:
    """Spatial sizes the U-Net accepts are multiples of this (``2 ** (depth - 1)``).

    Parameters
    ----------
    depth
        U-Net levels.

    Returns
    -------
    int
    """
    return 2 ** (depth - 1)


def receptive_halo(depth: int) -> int:
    """Voxels of context on each side that one output voxel depends on (for ``depth`` levels).

    The receptive field of the deepest path: two 3-wide convolutions per encoder and
    decoder level (``4 * 2**level`` wide together), 2-wide pooling between levels; the
    pooling grid can shift the field by up to ``2**(depth-1) - 1`` to one side. The result
    is rounded up to a multiple of :func:`size_multiple` so tiles stay on the pooling grid.

    Parameters
    ----------
    depth
        U-Net levels.

    Returns
    -------
    int
        Halo in voxels.

    Examples
    --------
    >>> receptive_halo(3)
    28
    """
    width = 1 + sum(4 * 2**level for level in range(depth))  # encoder and bottleneck
    width += sum(2**level for level in range(depth - 1))  # pooling
    width += sum(4 * 2**level for level in range(depth - 1))  # decoder
    m = size_multiple(depth)
    radius = math.ceil((width - 1) / 2) + m - 1
    return -(-radius // m) * m


def _norm(kind: str, dim: int, channels: int) -> nn.Module:
    if kind == "none":
        return nn.Identity()
    if kind == "batch":
        return nn.BatchNorm3d(channels, momentum=0.3) if dim == 3 else nn.BatchNorm2d(channels, momentum=0.3)
    if kind == "instance":
        return nn.InstanceNorm3d(channels, affine=True) if dim == 3 else nn.InstanceNorm2d(channels, affine=True)
    groups = math.gcd(channels, 8)
    return nn.GroupNorm(groups, channels)


class _DoubleConv(nn.Sequential):
    def __init__(self, dim: int, cin: int, cout: int, norm: str) -> None:
        conv = nn.Conv3d if dim == 3 else nn.Conv2d
        bias = norm == "none"
        super().__init__(
            conv(cin, cout, 3, padding=1, bias=bias),
            _norm(norm, dim, cout),
            nn.ReLU(inplace=True),
            conv(cout, cout, 3, padding=1, bias=bias),
            _norm(norm, dim, cout),
            nn.ReLU(inplace=True),
        )
        if bias:  # no normalisation: He initialisation keeps the activations' scale through depth
            for layer in self:
                if isinstance(layer, nn.Conv2d | nn.Conv3d):
                    nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
                    if layer.bias is not None:
                        nn.init.zeros_(layer.bias)


class UNet(nn.Module):
    """A 2-D or 3-D U-Net returning ``(N, n_classes, *spatial)`` logits.

    Parameters
    ----------
    dim
        2 (input ``(N, 1, Y, X)``, applied slice by slice) or 3 (``(N, 1, Z, Y, X)``).
    n_classes
        Output channels (phases including void, or background/interior/boundary).
    depth
        Resolution levels, 1..5.
    base
        Channels of the first level (doubled per level).
    norm
        ``batch``, ``instance``, ``group`` or ``none`` (no normalisation: the output of a
        tile is exactly the whole volume's, and no batch statistic can differ between
        training and inference).
    in_channels
        Input channels (1 for a CT volume).

    Examples
    --------
    >>> net = UNet(dim=3, n_classes=4, depth=2, base=4)
    >>> tuple(net(torch.zeros(1, 1, 8, 8, 8)).shape)
    (1, 4, 8, 8, 8)
    """

    def __init__(
        self,
        *,
        dim: Literal[2, 3] = 3,
        n_classes: int = 2,
        depth: int = 3,
        base: int = 8,
        norm: Norm = "batch",
        in_channels: int = 1,
    ) -> None:
        super().__init__()
        if dim not in (2, 3):
            raise VolmlaError(f"dim must be 2 or 3, got {dim!r}")
        if not 1 <= depth <= 5:
            raise VolmlaError(f"depth must lie in 1..5, got {depth!r}")
        if base < 1:
            raise VolmlaError(f"base channels must be at least 1, got {base!r}")
        if norm not in NORMS:
            raise VolmlaError(f"norm must be one of {NORMS}, got {norm!r}")
        if n_classes < 2:
            raise VolmlaError(f"n_classes must be at least 2, got {n_classes!r}")
        self.dim, self.depth, self.base, self.norm, self.n_classes = dim, depth, base, norm, n_classes
        channels = [base * 2**level for level in range(depth)]
        self.down = nn.ModuleList()
        cin = in_channels
        for c in channels:
            self.down.append(_DoubleConv(dim, cin, c, norm))
            cin = c
        self.pool = nn.MaxPool3d(2) if dim == 3 else nn.MaxPool2d(2)
        up_conv = nn.ConvTranspose3d if dim == 3 else nn.ConvTranspose2d
        self.up = nn.ModuleList()
        self.up_blocks = nn.ModuleList()
        for level in reversed(range(depth - 1)):
            self.up.append(up_conv(channels[level + 1], channels[level], 2, stride=2))
            self.up_blocks.append(_DoubleConv(dim, 2 * channels[level], channels[level], norm))
        conv = nn.Conv3d if dim == 3 else nn.Conv2d
        self.head = conv(channels[0], n_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for level, block in enumerate(self.down):
            if level:
                x = self.pool(x)
            x = block(x)
            skips.append(x)
        skips.pop()
        for up, block in zip(self.up, self.up_blocks, strict=True):
            x = up(x)
            x = block(torch.cat([skips.pop(), x], dim=1))
        return self.head(x)
