"""The checkpoint format's lookup tables (training.checkpoint_format): a trainable tower's untrained
table is stored once per run in the frozen-towers file and each checkpoint holds only the rows that
trained; an optimizer's state of a table is saved as its nonzero rows and resumes exactly."""
from __future__ import annotations

import torch

import training.checkpoint_format
from tests.training.test_checkpoints import fold_checkpoints
from training.checkpoint_format import CHECKPOINT_FORMAT, full_model_state
from utils.io import file_sha256, load_checkpoint, save_checkpoint
from utils.run_dir import RunDir


class TwoTowers(torch.nn.Module):
    """A frozen image tower and a trainable text tower with a lookup table."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.image_encoder = torch.nn.Linear(3, 2).requires_grad_(False)
        self.text_encoder = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Linear(4, 2))


def test_changed_rows_put_back_into_the_untrained_table(tmp_path):
    model = TwoTowers()
    run_dir = RunDir(tmp_path / "run")
    run_dir.path.mkdir()
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    shared = training.checkpoint_format.store_frozen_towers(run_dir, model, initial)
    assert shared.keys == {"image_encoder.weight", "image_encoder.bias"}
    assert list(shared.tables) == ["text_encoder.0.weight"]
    with torch.no_grad():
        model.text_encoder[0].weight[[2, 7]] += 1.0
    own = shared.split(model.state_dict())
    assert own["text_encoder.0.weight#rows"].tolist() == [2, 7] and "image_encoder.weight" not in own
    path = run_dir.best_checkpoint(1)
    whole = full_model_state({"format": CHECKPOINT_FORMAT, "model": own, "shared_weights": shared.reference()}, path)
    assert all(torch.equal(whole[k], v) for k, v in model.state_dict().items())


def test_a_run_started_with_frozen_towers_only_in_its_file_keeps_whole_tables(tmp_path):
    """A run resumed across this change: its file holds the frozen towers only, and stays as it is."""
    model = TwoTowers()
    run_dir = RunDir(tmp_path / "run")
    run_dir.path.mkdir()
    state = model.state_dict()
    save_checkpoint(run_dir.frozen_towers, {"format": CHECKPOINT_FORMAT,
                                            "model": {k: v for k, v in state.items() if k.startswith("image_")}})
    before = file_sha256(run_dir.frozen_towers)
    shared = training.checkpoint_format.store_frozen_towers(run_dir, model, state)
    assert shared.tables == {} and file_sha256(run_dir.frozen_towers) == before
    assert "text_encoder.0.weight" in shared.split(state)


def test_the_optimizer_state_of_a_lookup_table_is_saved_as_its_nonzero_rows_and_resumes_exactly(tmp_path):
    model = TwoTowers()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.0)

    def step(opt: torch.optim.Optimizer, net: TwoTowers) -> None:
        opt.zero_grad()
        net.text_encoder(torch.tensor([2, 7, 7])).sum().backward()  # rows 2 and 7 only
        opt.step()

    step(optimizer, model)
    checkpoints = fold_checkpoints(tmp_path)
    checkpoints.save_latest(model, 1, {"accuracy": 0.5}, {"optimizer": optimizer.state_dict(), "scheduler": {},
                                                          "scaler": {}}, {"epoch": 1, "best_epoch": 1},
                            torch.Generator())
    on_disk = load_checkpoint(checkpoints.run_dir.latest_checkpoint(1))["optimizer"]["state"]
    packed = [entry["exp_avg"] for entry in on_disk.values() if isinstance(entry["exp_avg"], dict)]
    assert len(packed) == 1 and packed[0]["nonzero_rows"].tolist() == [2, 7]  # the table's; the Linear's stay dense

    resumed_model = TwoTowers()
    resumed_model.load_state_dict(model.state_dict())
    resumed = torch.optim.AdamW(resumed_model.parameters(), lr=0.1, weight_decay=0.0)
    resumed.load_state_dict(checkpoints.load_latest()["optimizer"])
    for opt, net in ((optimizer, model), (resumed, resumed_model)):
        step(opt, net)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), resumed_model.state_dict().values()))
