"""Particles and grains: solid mask -> connected components -> watershed split -> labels.

The stage in modules of one concern each:

- :mod:`volmla.particles.api`: :func:`label_particles`, the whole chain (its docstring
  narrates the steps);
- :mod:`volmla.particles.mask`: the solid mask (threshold, Otsu's threshold from the
  out-of-core histogram), pore filling, dust removal;
- :mod:`volmla.particles.learned`: the solid and the split's relief from a particle
  U-Net's background / interior / boundary map (``threshold="interior"``);
- :mod:`volmla.particles.split`: the watershed split of touching particles, per block
  with a halo;
- :mod:`volmla.particles.label`: chunked connected-component labelling (exact for any
  chunking);
- :mod:`volmla.particles.contacts`: :func:`refine_contacts`, contact voxels of a mineral a
  particle lacks handed to the touching particle that has it, once the phases are known;
- :mod:`volmla.particles.grains`: :func:`label_grains`, the components of each phase
  inside each particle;
- :mod:`volmla.particles.files`: the same on OME-Zarr files (plan, then write), behind
  the ``label``, ``particles`` and ``grains`` commands.
"""

from __future__ import annotations

from volmla.particles.api import label_particles
from volmla.particles.contacts import refine_contacts
from volmla.particles.files import (
    LabelsPlan,
    plan_contacts,
    plan_grains,
    plan_label,
    plan_particles,
    write_labels,
)
from volmla.particles.grains import label_grains
from volmla.particles.label import Labels, label
from volmla.particles.learned import interior_fill, learned_solid
from volmla.particles.mask import (
    HIST_BINS,
    component_sizes,
    fill_holes,
    otsu_threshold,
    remove_small,
    solid_mask,
)
from volmla.particles.split import (
    UNMARKED,
    distance_map,
    h_maxima_caps,
    split_block,
    split_halo,
    split_touching,
)

__all__ = [
    "HIST_BINS",
    "UNMARKED",
    "Labels",
    "LabelsPlan",
    "component_sizes",
    "distance_map",
    "fill_holes",
    "h_maxima_caps",
    "interior_fill",
    "label",
    "label_grains",
    "label_particles",
    "learned_solid",
    "otsu_threshold",
    "plan_contacts",
    "plan_grains",
    "plan_label",
    "plan_particles",
    "refine_contacts",
    "remove_small",
    "solid_mask",
    "split_block",
    "split_halo",
    "split_touching",
    "write_labels",
]
