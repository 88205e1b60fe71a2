"""Teaching helpers of the notebooks and labs: settings, data, figures and exercise checks (``labcheck``)."""

from smallct.teaching import labcheck
from smallct.teaching.labcheck import check, choose, data_dir, montage, quick

__all__ = ["labcheck", "check", "choose", "data_dir", "montage", "quick"]
