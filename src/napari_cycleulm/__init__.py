"""napari-cycleulm: ultrasound localisation microscopy with the CycleULM framework.

The package is a headless library (no Qt, no napari) plus thin napari widgets
in :mod:`napari_cycleulm._napari.widgets`.  Coordinates are ``(frame, y, x)`` in
pixels everywhere inside the library; physical units are applied only at the
edges (command line, exports, displays).
"""

__version__ = "0.1.0"

from .errors import CycleULMError
from .io.tables import Localisations, Tracks

__all__ = ["CycleULMError", "Localisations", "Tracks", "__version__"]
