"""Class descriptions: from a JSON file and/or templates with ``{class_name}`` (prompt ensembling)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from utils.io import read_json
from utils.logging_setup import get_logger

from data.folder import DataError

log = get_logger(__name__)


def _as_text_list(value: object, class_name: str, path: Path) -> list[str]:
    texts = [value] if isinstance(value, str) else value
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise DataError(f"--class-texts-file {path}: the value of '{class_name}' must be a string or a "
                        "list of strings")
    texts = [t.strip() for t in texts]
    if not texts or not all(texts):
        raise DataError(f"--class-texts-file {path}: '{class_name}' has an empty description")
    return texts


def load_class_texts(class_names: Sequence[str], texts_file: str | Path | None,
                     templates: Sequence[str] | None) -> list[list[str]]:
    """One or more descriptions per class, in class order.

    A class's texts are its descriptions in ``texts_file`` followed by every template filled in with
    its name: the class embedding averages them all (prompt ensembling). Without templates every
    class must be in the file (the error names the missing ones). Without either, the class name
    itself is the description.
    """
    templates = list(templates or ())
    from_file: dict[str, list[str]] = {}
    if texts_file is not None:
        path = Path(texts_file)
        try:
            data = read_json(path, "--class-texts-file")
        except ValueError as exc:  # not found, not UTF-8, not JSON: the message names the file
            raise DataError(str(exc)) from exc
        if not isinstance(data, dict):
            raise DataError(f"--class-texts-file {path} must hold a JSON object mapping class names to texts")
        blank = [name for name in data if not name.strip()]
        if blank:
            raise DataError(f"--class-texts-file {path}: a class name is empty or only spaces ({blank[0]!r}); "
                            "every key must name a class folder")
        from_file = {name: _as_text_list(value, name, path) for name, value in data.items()}
        extra = sorted(set(from_file) - set(class_names))
        if extra:
            log.warning("--class-texts-file %s describes classes that are not in the data: %s",
                        path, ", ".join(extra))
        missing = [name for name in class_names if name not in from_file]
        if missing and not templates:
            raise DataError(f"--class-texts-file {path} lacks class(es) {', '.join(missing)}; add them or "
                            "give --text-template")
    result = []
    for name in class_names:
        texts = from_file.get(name, []) + [template.replace("{class_name}", name) for template in templates]
        result.append(texts or [name])
    return result
