"""Patient-level results: a patient is classified by the mean of its images' probabilities.

When folds are grouped by patient, every image of a patient is validated in the same fold, so the
pooled out-of-fold predictions can be read per patient — the unit a clinician decides on.
"""
from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any, Mapping, Sequence

import numpy as np

from reporting.metric_table import HEADLINE_METRICS, metric
from reporting.metrics import classification_metrics
from reporting.phrases import ENGLISH, Phrases
from reporting.tables import Table, format_number


def per_group(labels: Sequence[int], probs: np.ndarray, groups: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Each group's label (its images' most frequent one) and mean probabilities, groups sorted by name."""
    rows: dict[str, list[int]] = defaultdict(list)
    for position, group in enumerate(groups):
        rows[group].append(position)
    names = sorted(rows)
    group_labels = np.array([Counter(labels[i] for i in rows[g]).most_common(1)[0][0] for g in names])
    group_probs = np.stack([np.asarray(probs)[rows[g]].mean(axis=0) for g in names])
    return group_labels, group_probs


def patient_metrics(labels: Sequence[int], probs: np.ndarray, groups: Sequence[str]) -> dict[str, Any]:
    """Every metric of the pooled predictions per patient, with ``n_groups``."""
    group_labels, group_probs = per_group(labels, probs, groups)
    return {"n_groups": len(group_labels), **classification_metrics(group_labels, group_probs)}


def patient_table(per_patient: Mapping[str, Any], t: Phrases = ENGLISH) -> Table:
    """metric | per patient, for report.md."""
    return Table.labelled([t("metric"), t("per_patient_column", n=per_patient["n_groups"])],
                          [[metric(name).label_in(t.lang), format_number(per_patient[name])]
                           for name in HEADLINE_METRICS])
