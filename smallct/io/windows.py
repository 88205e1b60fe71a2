"""CT display windows: a registry of presets, and Hounsfield units through windows to RGB uint8.

Windows are (centre, width) in HU, the order of DICOM's WindowCenter (0028,1050) and WindowWidth
(0028,1051). fastai's ``dicom_windows`` lists (width, level) pairs instead, and its subdural window is
254/100 where smallct uses 80/200. A pixel is ``clip((HU - (c - w/2)) / w, 0, 1) * 255``, rounded: the
plain linear ramp, not DICOM's C.11.2.1.2 variant with ``c - 0.5`` and ``w - 1``. ``"header"`` names
the file's own window (the first value when the tag is multi-valued; read by :mod:`smallct.io.dicom`).
Pure functions on arrays.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Window:
    """A CT display window: ``center`` and ``width`` in HU, and where the values come from."""

    center: float
    width: float
    source: str = ""

    @property
    def low(self) -> float:
        """HU shown black (0)."""
        return self.center - self.width / 2

    @property
    def high(self) -> float:
        """HU shown white (255)."""
        return self.center + self.width / 2


# (centre, width) in HU. fastai's dicom_windows holds the same presets as (width, level).
WINDOWS: dict[str, Window] = {
    "brain": Window(40.0, 80.0, "brain parenchyma; RSNA 2019 2nd place, fastai dicom_windows brain=(80, 40)"),
    "subdural": Window(80.0, 200.0, "subdural blood against the skull; RSNA 2019 2nd place "
                                    "(fastai uses 254/100)"),
    "bone": Window(600.0, 2800.0, "skull and fractures; fastai dicom_windows brain_bone=(2800, 600)"),
    "soft": Window(40.0, 380.0, "soft tissue; RSNA 2019 2nd place (fastai brain_soft=(375, 40))"),
    "stroke": Window(32.0, 8.0, "early ischaemia, grey/white contrast; fastai dicom_windows stroke=(8, 32)"),
}
# R, G, B of a slice unless told otherwise (as the RSNA 2019 2nd place)
DEFAULT_WINDOWS = ("brain", "subdural", "bone")
HEADER_WINDOW = "header"  # a window name meaning the file's own WindowCenter / WindowWidth

WindowSpec = str | Window | tuple[float, float]


def window(hu: np.ndarray, center: float, width: float) -> np.ndarray:
    """Display HU through a window: ``clip((HU - (c - w/2)) / w, 0, 1) * 255``, rounded, as uint8.

    Parameters
    ----------
    hu
        Hounsfield units, any shape (usually (H, W)).
    center, width
        The window in HU; ``width`` > 0.

    Returns
    -------
    numpy.ndarray
        uint8 of the shape of ``hu``: 0 at ``c - w/2`` and below, 255 at ``c + w/2`` and above.
    """
    if not width > 0:
        raise ValueError(f"window width {width!r} HU: must be positive")
    hu = np.asarray(hu)
    return np.round(np.clip((hu - (center - width / 2)) / width, 0.0, 1.0) * 255).astype(np.uint8)


def get_window(spec: WindowSpec, header: Window | None = None) -> Window:
    """Resolve a window given by name (a key of :data:`WINDOWS`, or ``"header"``), a Window, or a
    (centre, width) pair in HU. ``header`` is the file's own window, used for ``"header"``."""
    if isinstance(spec, Window):
        return spec
    if isinstance(spec, str):
        if spec == HEADER_WINDOW:
            if header is None:
                raise ValueError("window 'header': the file has no WindowCenter / WindowWidth")
            return header
        if spec not in WINDOWS:
            raise ValueError(f"window {spec!r}: unknown; expected one of "
                             f"{', '.join([*WINDOWS, HEADER_WINDOW])} or a (center, width) pair in HU")
        return WINDOWS[spec]
    if isinstance(spec, Sequence) and len(spec) == 2:
        return Window(float(spec[0]), float(spec[1]), "given as (center, width)")
    raise ValueError(f"window {spec!r}: expected a name, a Window or a (center, width) pair in HU")


def hu_to_rgb(hu: np.ndarray, windows: Sequence[WindowSpec] = DEFAULT_WINDOWS,
              header: Window | None = None) -> np.ndarray:
    """Three windows of one HU slice (H, W) as the channels of an RGB uint8 image (H, W, 3)."""
    if len(windows) != 3:
        raise ValueError(f"windows {tuple(windows)!r}: expected three, one per RGB channel")
    return np.dstack([window(hu, w.center, w.width) for w in (get_window(s, header) for s in windows)])
