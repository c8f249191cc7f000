"""Conversion of results (numpy values, nested containers) to plain JSON types."""

from __future__ import annotations

import math

import numpy as np


def jsonable(obj, nonfinite: str = "null"):
    """Return ``obj`` with numpy arrays and scalars turned into plain Python types.

    Parameters
    ----------
    obj
        Nested dicts, lists, tuples, numpy arrays / scalars and plain values.
    nonfinite : {"null", "string"}
        How NaN and infinities (not valid JSON) are written: as ``None``, or as
        the strings ``"nan"``, ``"inf"``, ``"-inf"`` (which ``float()`` reads back).
    """
    if isinstance(obj, dict):
        return {str(k): jsonable(v, nonfinite) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v, nonfinite) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist(), nonfinite)
    if isinstance(obj, np.generic):
        return jsonable(obj.item(), nonfinite)
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj) if nonfinite == "string" else None
    return obj
