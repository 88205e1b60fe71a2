"""smallct: deep learning on small medical imaging data sets (head CT first).

Public API of the first steps of the pipeline; the rest lives in its modules
(``smallct.cv``, ``smallct.dicom``, ...).
"""

from smallct.ingest import describe, to_rgb_uint8

__version__ = "0.1.0"
__all__ = ["describe", "to_rgb_uint8", "__version__"]
