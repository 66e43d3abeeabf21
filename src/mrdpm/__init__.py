"""mrdpm: diffusion probabilistic models for MRI.

Layers (imports only go downward): ``physics`` -> ``io`` -> ``data`` -> ``models`` / ``diffusion`` ->
``train`` -> ``tasks`` -> ``eval`` -> ``cli``.
"""

from mrdpm.errors import MrdpmError

__version__ = "0.1.0"
__all__ = ["MrdpmError", "__version__"]
