"""Label counts before and after a policy: what ``overread labels stats`` prints.

Counts are over the table's rows as read (one per image; per study for label
files without images), so they can be checked against the source CSV directly.
After a policy, every cell is exactly one of: ``positive`` (target 1),
``negative`` (target 0), ``soft`` (a U-LSR target strictly between 0 and 1) or
``ignored`` (mask 0). Soft targets are counted on their own rather than rounded
into positive or negative, so the four always add up to the row count.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from overread.data.policy import LabelPolicy, apply_policy
from overread.data.table import LabelTable


def label_stats(table: LabelTable, policy: LabelPolicy | str = "u-ignore") -> dict[str, Any]:
    """Per-label counts before and after ``policy``, and patient/study/image counts.

    Returns
    -------
    dict
        ``{"dataset", "policy", "labels": {NAME: {"positive", "negative",
        "uncertain", "blank", "after": {"positive", "negative", "soft",
        "ignored"}}}, "patients", "studies", "images", "rows", "skipped"}``.
    """
    if isinstance(policy, str):
        policy = LabelPolicy.parse(policy)
    raw = table.raw
    targets, mask = apply_policy(raw, policy, table.labels)
    kept = mask > 0
    labels: dict[str, dict[str, Any]] = {}
    for col, name in enumerate(table.labels):
        values = raw[:, col]
        target = targets[:, col]
        used = kept[:, col]
        labels[name] = {
            "positive": int(np.sum(values == 1.0)),
            "negative": int(np.sum(values == 0.0)),
            "uncertain": int(np.sum(values == -1.0)),
            "blank": int(np.sum(np.isnan(values))),
            "after": {
                "positive": int(np.sum(used & (target == 1.0))),
                "negative": int(np.sum(used & (target == 0.0))),
                "soft": int(np.sum(used & (target > 0.0) & (target < 1.0))),
                "ignored": int(np.sum(~used)),
            },
        }
    return {
        "dataset": table.dataset,
        "source": str(table.source) if table.source else None,
        "policy": policy.spec(),
        "labels": labels,
        "patients": table.n_patients,
        "studies": table.n_studies,
        "images": table.n_images,
        "rows": len(table),
        "skipped": [
            {"line": row.line, "path": row.path, "reason": row.reason} for row in table.skipped
        ],
    }


__all__ = ["label_stats"]
