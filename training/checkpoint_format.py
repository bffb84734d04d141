"""A checkpoint's on-disk format: what keeps a study's checkpoints affordable, and reading it back whole.

- A frozen tower never changes (nor does the frozen base of a tower with LoRA adapters), so its
  weights are written once per run, to ``frozen_towers.pth``
  in the run folder; each checkpoint's ``model`` omits them and names that file (relative to the run
  folder, so a copied folder still works) and its SHA-256. Loading puts the two back together and
  refuses a missing or edited file.
- A trainable tower's lookup tables (``nn.Embedding``: CLIP's 49,408-token table is 40 % of its text
  tower) change only in the rows the class descriptions use: they get no weight decay (see
  ``training.engine.parameter_groups``), so a row without a gradient keeps its value exactly. The
  untrained tables go into the same file, once; a checkpoint keeps only the rows that differ from
  them (``<key>#rows`` and ``<key>#values`` in its ``model``). In a training fold's
  ``checkpoint_latest.pth`` AdamW's moments of such a table are stored as their non-zero rows.
- ``--checkpoint-dtype`` casts the saved models' floating-point weights; the weights of a training
  fold's ``checkpoint_latest.pth`` and the frozen towers stay as trained, so ``--resume`` is exact.

Which file holds what, and when, is :mod:`training.checkpoints`'; every fold checkpoint's own SHA-256
is :mod:`utils.checksums`' (docs/design.md §6, §14).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from training.lora import has_adapters
from utils.io import CheckpointError, file_sha256, load_checkpoint, save_checkpoint
from utils.run_dir import FROZEN_TOWERS_FILE, RunDir

# The model may omit frozen towers and unchanged embedding rows kept in the run's frozen_towers.pth
# ("shared_weights" names it and its hash; docs/design.md §6).
CHECKPOINT_FORMAT = "train_clip/2"
CHECKPOINT_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# Suffixes of a table's changed rows in a checkpoint's model: row indices, and those rows' values.
ROWS, VALUES = "#rows", "#values"


@dataclass(frozen=True)
class SharedWeights:
    """What the run stores once in ``frozen_towers.pth``: the frozen towers (``keys``: whole tensors
    taken from the file), the untrained lookup tables of trainable towers (``tables``: checkpoints
    hold their changed rows), and the file's hash."""

    keys: frozenset[str]
    sha256: str
    tables: dict[str, torch.Tensor] = field(default_factory=dict)

    def split(self, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``weights`` (a full state dict) without what the file holds: frozen towers left out,
        each table reduced to the rows that differ from the untrained one."""
        kept = {key: value for key, value in weights.items() if key not in self.keys and key not in self.tables}
        for key, initial in self.tables.items():
            current = weights[key].detach().cpu()
            rows = (current != initial).any(dim=1).nonzero().squeeze(1)
            kept[key + ROWS], kept[key + VALUES] = rows, current[rows].clone()
        return kept

    def reference(self) -> dict[str, str]:
        return {"file": FROZEN_TOWERS_FILE, "sha256": self.sha256}


def frozen_tower_keys(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> frozenset[str]:
    """Keys of ``state`` (the model's state dict) that belong to a tower without trainable parameters,
    or to the frozen base of a tower with LoRA adapters (training.lora: all but its trainable parameters).

    Their buffers are included: a frozen tower stays in eval mode, and so does a BatchNorm whose weights
    are all frozen inside an adapted one (``CLIPClassifier.train``), so their statistics do not move.
    """
    keys: set[str] = set()
    for name in ("image_encoder", "text_encoder"):
        tower = getattr(model, name)
        trainable = {f"{name}.{key}" for key, p in tower.named_parameters() if p.requires_grad}
        if not trainable or has_adapters(tower):
            keys.update(key for key in state if key.startswith(f"{name}.") and key not in trainable)
    return frozenset(keys)


def trainable_table_keys(model: torch.nn.Module) -> frozenset[str]:
    """State-dict keys of the trainable ``nn.Embedding`` weights (token, position, type tables)."""
    return frozenset(f"{name}.weight" for name, module in model.named_modules()
                     if isinstance(module, torch.nn.Embedding) and module.weight.requires_grad)


def store_frozen_towers(run_dir: RunDir, model: torch.nn.Module,
                        initial_state: dict[str, torch.Tensor]) -> SharedWeights | None:
    """Write the frozen towers' weights and the trainable towers' untrained lookup tables (both from
    the untrained ``initial_state``) once per run.

    A resumed run finds the file already there and keeps it when it holds exactly these weights (or
    only the frozen towers: a run started before tables were stored goes on saving whole tables).
    """
    keys = frozen_tower_keys(model, initial_state)
    tables = trainable_table_keys(model) - keys
    path = run_dir.frozen_towers
    saved = load_checkpoint(path, ("model",))["model"] if path.is_file() else None
    if saved is not None and keys and saved.keys() == keys:
        tables = frozenset()
    if not keys and not tables:
        return None
    weights = {key: initial_state[key] for key in sorted(keys | tables)}
    if saved is not None:
        if saved.keys() != weights.keys() or not all(torch.equal(saved[k], weights[k]) for k in weights):
            raise CheckpointError(f"{path} does not hold the untrained weights this run starts from (the "
                                  "file was edited, or the towers' weights changed since the run started); "
                                  "restore the file, or start the run again with --overwrite")
    else:
        save_checkpoint(path, {"format": CHECKPOINT_FORMAT, "model": weights})
    return SharedWeights(keys, file_sha256(path), {key: weights[key] for key in sorted(tables)})


@dataclass
class SharedFiles:
    """Run files that checkpoints name (``frozen_towers.pth``), each hashed and read once however
    many checkpoints name it: predict.py and the test-set ensemble load one checkpoint per fold."""

    _read: dict[tuple[Path, int, int], tuple[str, dict[str, torch.Tensor]]] = field(default_factory=dict)

    def read(self, path: Path) -> tuple[str, dict[str, torch.Tensor]]:
        """The file's SHA-256 and its weights. Keyed by size and modification time too: a file
        replaced in between is read again."""
        stat = path.stat()
        key = (path.resolve(), stat.st_size, stat.st_mtime_ns)
        if key not in self._read:
            self._read[key] = (file_sha256(path), load_checkpoint(path, ("model",))["model"])
        return self._read[key]


def full_model_state(saved: dict[str, Any], path: Path, files: SharedFiles | None = None) -> dict[str, torch.Tensor]:
    """The whole model state of the checkpoint ``saved`` (read from ``path``, in a run's ``fold_K/``):
    its own weights plus the frozen towers and untrained table rows of the file it names, once that
    file's hash is checked. Pass one ``files`` to several calls to read that file once."""
    if saved.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"checkpoint {path} is not in train_clip's format {CHECKPOINT_FORMAT} "
                              f"(it says {saved.get('format')!r}): not a checkpoint this version wrote")
    reference = saved.get("shared_weights")
    if reference is None:  # every weight is in the checkpoint: the run had nothing to share
        return saved["model"]
    name = reference.get("file") if isinstance(reference, dict) else None
    if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
        raise CheckpointError(f"checkpoint {path} names its frozen towers' file wrongly ({name!r}): not a "
                              "train_clip checkpoint")
    shared = RunDir.of_checkpoint(path).path / name
    if not shared.is_file():
        raise CheckpointError(f"checkpoint {path} needs {shared}, the run's frozen towers' weights, which is "
                              f"missing: copy the whole run folder, {name} included")
    digest, weights = (files or SharedFiles()).read(shared)
    if digest != reference.get("sha256"):
        raise CheckpointError(f"{shared} is not the file checkpoint {path} was saved with (its SHA-256 "
                              f"differs: edited or replaced); restore the run's original {name}")
    return merge_shared(weights, saved["model"], path)


def merge_shared(shared: dict[str, torch.Tensor], own: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    """The run file's weights updated with a checkpoint's own: whole tensors replace, changed rows
    are written into a copy of their untrained table."""
    merged = dict(shared)
    for key, value in own.items():
        if key.endswith(VALUES):
            continue
        if not key.endswith(ROWS):
            merged[key] = value
            continue
        name = key[:-len(ROWS)]
        if name not in shared or name + VALUES not in own:
            raise CheckpointError(f"checkpoint {path} holds changed rows of {name} without the table they belong "
                                  "to: not a train_clip checkpoint of this run")
        table = shared[name].clone()
        table[value] = own[name + VALUES].to(table.dtype)
        merged[name] = table
    return merged


def cast_weights(state: dict[str, torch.Tensor], dtype: str) -> dict[str, torch.Tensor]:
    """Floating-point tensors as ``dtype``; integer buffers unchanged. Loading casts them back
    (``load_state_dict`` copies into the model's own tensors)."""
    target = CHECKPOINT_DTYPES[dtype]
    return {key: value.to(target) if value.is_floating_point() else value for key, value in state.items()}


def pack_zero_rows(optimizer_state: dict[str, Any]) -> dict[str, Any]:
    """The optimizer's state dict with each mostly-zero matrix (AdamW's moments of a lookup table:
    zero in every row no gradient ever reached) stored as its non-zero rows; exact, and 200 MB less
    in every training checkpoint of a trainable CLIP text tower."""
    return map_state_values(optimizer_state, sparse_rows)


def unpack_zero_rows(optimizer_state: dict[str, Any]) -> dict[str, Any]:
    """The inverse of :func:`pack_zero_rows` (a state dict without packed rows comes back as it is)."""
    return map_state_values(optimizer_state, dense_rows)


def map_state_values(optimizer_state: dict[str, Any], convert: Callable[[Any], Any]) -> dict[str, Any]:
    """A copy of an optimizer's state dict with ``convert`` applied to every per-parameter value."""
    return {**optimizer_state, "state": {index: {name: convert(value) for name, value in entry.items()}
                                         for index, entry in optimizer_state["state"].items()}}


def sparse_rows(value: Any) -> Any:
    if not (isinstance(value, torch.Tensor) and value.ndim == 2 and value.is_floating_point()):
        return value
    rows = value.detach().ne(0).any(dim=1).nonzero().squeeze(1)
    if 2 * len(rows) > value.shape[0]:
        return value
    return {"nonzero_rows": rows.cpu(), "values": value[rows].cpu(), "n_rows": value.shape[0]}


def dense_rows(value: Any) -> Any:
    if not (isinstance(value, dict) and "nonzero_rows" in value):
        return value
    values = value["values"]
    dense = torch.zeros((value["n_rows"], values.shape[1]), dtype=values.dtype)
    dense[value["nonzero_rows"]] = values
    return dense
