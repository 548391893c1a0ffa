"""The fixed mineral palette: one colour per phase, the same in every label image and plot.

1. A mineral volmla knows by name (:data:`MINERAL_COLORS`: ``quartz``, ``albite``,
   ``pyrite``, ...; case, spaces, hyphens and underscores ignored) always gets its own
   colour, whatever its phase id, so quartz looks the same in every scan and report.
2. Every other phase gets the next colour of :data:`PALETTE` (colour-blind-safe
   Okabe-Ito first, then Tableau 20) that no phase of the same volume holds yet, in
   order of phase id, so two phases of one volume never share a colour (up to
   ``len(PALETTE)`` unnamed phases; past that the palette repeats).
3. Background (label 0) is transparent (:data:`BACKGROUND_RGBA`).

The NGFF label writer (:func:`volmla.io.labels.write_labels`) stores these colours as
``image-label`` ``colors``; plots take :func:`hex_colors`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

__all__ = [
    "BACKGROUND_RGBA",
    "MINERAL_COLORS",
    "PALETTE",
    "RGB",
    "hex_colors",
    "mineral_key",
    "phase_colors",
]

RGB = tuple[int, int, int]

BACKGROUND_RGBA: tuple[int, int, int, int] = (0, 0, 0, 0)
"""Label 0 (background, void): fully transparent."""

PALETTE: tuple[RGB, ...] = (
    # Okabe-Ito (colour-blind safe), without its black
    (0, 114, 178), (230, 159, 0), (0, 158, 115), (204, 121, 167), (86, 180, 233),
    (213, 94, 0), (240, 228, 66),
    # Tableau 20, without the colours Okabe-Ito already gives
    (148, 103, 189), (140, 86, 75), (127, 127, 127), (188, 189, 34), (23, 190, 207),
    (214, 39, 40), (227, 119, 194), (174, 199, 232), (255, 187, 120), (152, 223, 138),
    (255, 152, 150), (197, 176, 213), (196, 156, 148), (247, 182, 210), (199, 199, 199),
    (219, 219, 141), (158, 218, 229),
)
"""Colours of phases volmla does not know by name, in order of use."""

MINERAL_COLORS: dict[str, RGB] = {
    # silicates
    "quartz": (158, 154, 200),
    "albite": (102, 194, 165),
    "plagioclase": (27, 158, 119),
    "orthoclase": (252, 141, 98),
    "kfeldspar": (252, 141, 98),
    "feldspar": (253, 180, 98),
    "biotite": (102, 51, 0),
    "muscovite": (204, 204, 153),
    "chlorite": (51, 160, 44),
    "kaolinite": (240, 240, 230),
    "olivine": (166, 216, 84),
    "pyroxene": (77, 146, 33),
    "amphibole": (0, 104, 55),
    "garnet": (165, 0, 38),
    "spodumene": (158, 188, 218),
    "lepidolite": (188, 128, 189),
    "zircon": (255, 255, 179),
    # carbonates, phosphates, sulphates
    "calcite": (141, 211, 199),
    "dolomite": (128, 177, 211),
    "apatite": (190, 186, 218),
    "barite": (217, 217, 217),
    "gypsum": (255, 237, 160),
    # sulphides
    "pyrite": (204, 163, 0),
    "chalcopyrite": (230, 171, 2),
    "sphalerite": (166, 86, 40),
    "galena": (99, 99, 99),
    "pyrrhotite": (191, 129, 45),
    "bornite": (117, 112, 179),
    # oxides
    "magnetite": (37, 37, 37),
    "hematite": (227, 26, 28),
    "ilmenite": (106, 61, 154),
    "rutile": (253, 191, 111),
    "cassiterite": (140, 45, 4),
    "chromite": (49, 54, 149),
    # slags and other materials
    "glass": (171, 217, 233),
    "gehlenite": (244, 109, 67),
    "fayalite": (116, 173, 209),
    "metal": (186, 186, 186),
    "pore": (255, 255, 255),
}
"""Minerals volmla colours by name (keys as :func:`mineral_key` writes them)."""


def mineral_key(name: str) -> str:
    """A phase name as :data:`MINERAL_COLORS` keys it: lower case, no spaces, hyphens, underscores.

    Parameters
    ----------
    name
        A phase name (``"K-feldspar"``).

    Returns
    -------
    str

    Examples
    --------
    >>> mineral_key("K-Feldspar")
    'kfeldspar'
    """
    return re.sub(r"[\s_\-]+", "", str(name)).lower()


def phase_colors(phases: Mapping[int, str] | Sequence[str]) -> dict[int, RGB]:
    """The colour of every phase of a volume: fixed for known minerals, distinct within it.

    Parameters
    ----------
    phases
        Phase names by id (``{1: "quartz", 2: "albite"}``), or a list for ids 1..N.

    Returns
    -------
    dict
        ``{phase id: (r, g, b)}`` with 0..255 components, in order of phase id.

    Examples
    --------
    >>> phase_colors(["quartz", "unknown"])
    {1: (158, 154, 200), 2: (0, 114, 178)}
    """
    named = dict(phases) if isinstance(phases, Mapping) else {i + 1: n for i, n in enumerate(phases)}
    ids = sorted(int(k) for k in named)
    out: dict[int, RGB] = {}
    for pid in ids:
        color = MINERAL_COLORS.get(mineral_key(named[pid]))
        if color is not None and color not in out.values():
            out[pid] = color
    free = [c for c in PALETTE if c not in out.values()] or list(PALETTE)
    n_free = 0
    for pid in ids:
        if pid not in out:
            out[pid] = free[n_free % len(free)]
            n_free += 1
    return {pid: out[pid] for pid in ids}


def hex_colors(phases: Mapping[int, str] | Sequence[str]) -> dict[int, str]:
    """:func:`phase_colors` as ``"#rrggbb"`` strings, for matplotlib and HTML.

    Parameters
    ----------
    phases
        Phase names by id, or a list for ids 1..N.

    Returns
    -------
    dict
        ``{phase id: "#rrggbb"}``.

    Examples
    --------
    >>> hex_colors({3: "pyrite"})
    {3: '#cca300'}
    """
    return {pid: "#{:02x}{:02x}{:02x}".format(*rgb) for pid, rgb in phase_colors(phases).items()}
