"""Numerical kernels of floodwarn: terrain, runoff, routing and inundation.

numpy in, numpy out: no I/O, configuration, clocks or alerts. Import the submodules
(``models.terrain``, ``models.runoff``, ``models.routing``, ``models.inundation``);
invalid input raises :class:`models.errors.ModelError`.
"""

from models.errors import ModelError

__all__ = ["ModelError"]
