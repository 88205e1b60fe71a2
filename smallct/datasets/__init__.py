"""Labelled image sets from disk: any folder layout, the Kaggle Head CT set, RSNA 2019 labels, the generated
phantom and synthetic DICOM sets, and prepared folders.

``folder``: :class:`Dataset`, :func:`load_dataset` (labels.csv, any CSV, class folders, prepared folders),
:func:`load_data` (``--data``, or the phantom), :func:`image_ids`; ``classes``: :func:`name_classes` (which
class is positive); ``explore``: :func:`describe`, :func:`size_note`;
``head_ct``: the manifest and :func:`verify`; ``known``: the sets recognised by content (their class names);
``rsna``: :func:`read_rsna_labels` and the label order;
``phantom``, ``synthetic_dicom``: generated sets; ``prepare``: :func:`prepare_rsna`, :func:`prepare_png`;
``shards``: :func:`prepare_rsna_shard` (``--shard K/N``), :func:`merge_shards`.
"""

from smallct._lazy import exports

__all__, __getattr__, __dir__ = exports(__name__, {
    "smallct.datasets.classes": ["class_note", "name_classes"],
    "smallct.datasets.explore": ["describe", "size_note"],
    "smallct.datasets.folder": ["Dataset", "image_ids", "load_data", "load_dataset", "phantom_dataset",
                                "read_labelled_folder", "read_manifest"],
    "smallct.datasets.known": ["KNOWN_SETS", "known_classes"],
    "smallct.datasets.head_ct": ["HEAD_CT_CLASSES", "VerifyReport", "build_manifest", "is_head_ct",
                                 "packaged_manifest", "verify"],
    "smallct.datasets.phantom": ["head_phantom_hu", "phantom_folder", "write_phantom_png_set"],
    "smallct.datasets.prepare": ["prepare_png", "prepare_rsna"],
    "smallct.datasets.rsna": ["LABEL_WEIGHTS", "LABELS", "SUBTYPES", "read_rsna_labels"],
    "smallct.datasets.shards": ["merge_shards", "prepare_rsna_shard"],
    "smallct.datasets.synthetic_dicom": ["write_ct_slice", "write_synthetic_rsna"],
})
