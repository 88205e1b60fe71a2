"""From files to arrays: pictures (PNG and the rest) to RGB uint8, DICOM slices to Hounsfield units,
CT windows to RGB, and writing files atomically.

``images``: :func:`to_rgb_uint8`, :func:`preprocess` (a picture to a model input) and helpers;
``dicom``: :func:`read_hu`, :func:`to_rgb`, :func:`read_header`, :func:`read_headers`;
``series``: :func:`order_slices` (slices along their series' normal, with neighbours), :func:`order_dicom_files`;
``windows``: the :data:`WINDOWS` registry, :func:`window`, :func:`hu_to_rgb`;
``files``: :func:`atomic_write` and friends, :func:`cache_dir`.
"""

from smallct._lazy import exports

__all__, __getattr__, __dir__ = exports(__name__, {
    "smallct.io.dicom": ["AIR_HU", "BODY_HU", "DECODER_PACKAGES", "HEADER_COLUMNS", "allow_rsna_uids",
        "crop_to_body", "has_bad_intercept", "read_header", "read_headers", "read_hu", "read_window", "to_rgb"],
    "smallct.io.files": ["atomic_csv", "atomic_json", "atomic_npy", "atomic_text", "atomic_write", "cache_dir"],
    "smallct.io.images": ["IMAGE_SUFFIXES", "MAX_SIDE", "crop_to_content", "describe_image", "list_images",
        "open_image", "preprocess", "resize_rgb", "to_rgb_uint8"],
    "smallct.io.series": ["GAP_FACTOR", "SliceOrder", "order_dicom_files", "order_slices", "slice_position"],
    "smallct.io.windows": ["DEFAULT_WINDOWS", "HEADER_WINDOW", "WINDOWS", "Window", "get_window", "hu_to_rgb",
                           "window"],
})
