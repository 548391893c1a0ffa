"""Counter-based gaussian noise: the same deviate at a voxel whatever the chunking.

1. the seed is hashed once into a 64-bit key (the splitmix64 finaliser, in Python
   integers);
2. each global voxel index ``i`` gives the 64-bit word
   ``splitmix64(key + (i + 1) * golden)`` (wrapping uint64 arithmetic);
3. its two 32-bit halves are uniforms in (0, 1), turned into one standard normal
   deviate by Box-Muller.
"""

from __future__ import annotations

import numpy as np

__all__ = ["normal_noise"]

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_MASK64 = 2**64 - 1


def _splitmix64(z: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser on a uint64 array (wrapping arithmetic)."""
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def _seed_key(seed: int) -> np.uint64:
    z = (int(seed) * 0x9E3779B97F4A7C15 + 0x632BE59BD9B4E019) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return np.uint64(z ^ (z >> 31))


def normal_noise(seed: int, index: np.ndarray) -> np.ndarray:
    """Standard normal deviates as a pure function of ``(seed, index)``.

    A counter-based generator: the splitmix64 hash of ``seed`` and each global voxel
    index gives two 32-bit uniforms in (0, 1), turned into one normal deviate by
    Box-Muller. The value at an index never depends on which other indices are drawn,
    so noise is the same whatever the chunking.

    Parameters
    ----------
    seed
        Non-negative integer.
    index
        Integer array of global (flat, C-order) voxel indices.

    Returns
    -------
    numpy.ndarray
        float64, same shape as ``index``.

    Examples
    --------
    >>> import numpy as np
    >>> a = normal_noise(3, np.arange(10))
    >>> bool((normal_noise(3, np.arange(4, 6)) == a[4:6]).all())
    True
    """
    idx = np.ascontiguousarray(index, dtype=np.uint64)
    h = _splitmix64(_seed_key(seed) + (idx + np.uint64(1)) * _GOLDEN)
    u1 = ((h >> np.uint64(32)).astype(np.float64) + 0.5) * 2.0**-32
    u2 = ((h & np.uint64(0xFFFFFFFF)).astype(np.float64) + 0.5) * 2.0**-32
    return np.sqrt(-2.0 * np.log(u1)) * np.cos((2.0 * np.pi) * u2)
