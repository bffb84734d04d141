"""Configuration: defaults < JSON entry < CLI, the user's guide keys and flags, and every error."""
import dataclasses
import json
import re

import pytest

from training.arguments import build_parser, config_from_args
from training.config import ConfigError, TrainConfig
from utils.io import write_json

# The example entry of train_clip_config.json in the user's guide (user-guide-zh.md, 方法二), verbatim.
GUIDE_CONFIG = """\
[
  {
    "image_encoder_name": "resnet18",
    "text_encoder_name": "clip:ViT-B/32",
    "embed_dim": 512,
    "batch_size": 32,
    "epochs": 100,
    "learning_rate": 1e-4,
    "weight_decay": 0.01,
    "temperature": 0.07,
    "img_size": 224,
    "augmentation": "standard",
    "num_workers": 4,
    "use_amp": true,
    "gpu_id": 0,
    "save_best": true,
    "use_cv": true,
    "n_splits": 5,
    "random_state": 42,
    "class_texts_file": "class_texts_hip_prosthesis.json",
    "use_weighted_sampling": true,
    "weight_method": "inverse_freq",
    "weight_smooth_factor": 1.0
  }
]
"""

# The direct command of the user's guide (方法三), as an argument list.
GUIDE_COMMAND = """
    --data-dir single_label_data
    --output-dir checkpoints/clip_models/resnet18_clip_ViT-B_32
    --image-encoder resnet18 --text-encoder clip:ViT-B/32 --embed-dim 512 --batch-size 16
    --epochs 200 --learning-rate 1e-4 --weight-decay 0.01 --temperature 0.07 --img-size 224
    --augmentation standard --num-workers 4 --gpu-id 6 --use-cv --n-splits 5 --random-state 42
    --class-texts-file class_texts_hip_prosthesis.json --use-weighted-sampling --weight-method inverse_freq
""".split()

GUIDE_FLAGS = ["--data-dir", "--output-dir", "--image-encoder", "--text-encoder", "--embed-dim",
               "--batch-size", "--epochs", "--learning-rate", "--weight-decay", "--temperature",
               "--img-size", "--augmentation", "--num-workers", "--gpu-id", "--no-amp", "--use-cv",
               "--n-splits", "--random-state", "--class-texts-file", "--text-template",
               "--use-weighted-sampling", "--weight-method", "--weight-smooth-factor"]
OUR_FLAGS = ["--val-fraction", "--warmup-epochs", "--seed", "--log-file", "--config", "--config-index"]


def write(tmp_path, name, content):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    else:
        write_json(path, content)
    return str(path)


# -- precedence ---------------------------------------------------------------------------------
def test_defaults_then_json_then_cli(tmp_path):
    config = write(tmp_path, "c.json", {"data_dir": "from_json", "epochs": 7, "batch_size": 3,
                                        "use_cv": True, "use_amp": True, "weight_method": "balanced"})
    cfg = config_from_args(["--config", config, "--epochs", "9", "--no-amp", "--data-dir", "from_cli"])
    assert cfg.epochs == 9  # CLI beats JSON
    assert cfg.data_dir == "from_cli"
    assert cfg.amp is False  # --no-amp beats "use_amp": true
    assert cfg.batch_size == 3 and cfg.use_cv is True and cfg.weight_method == "balanced"  # JSON beats defaults
    assert cfg.learning_rate == TrainConfig.learning_rate == 1e-4  # untouched default
    assert cfg.n_splits == 5


def test_cli_flags_that_are_not_given_do_not_reset_json_values(tmp_path):
    # argparse must not put its own defaults (False for store_true, 32 for --batch-size) over the JSON.
    config = write(tmp_path, "c.json", {"data_dir": "d", "use_cv": True, "use_amp": False,
                                        "batch_size": 5, "save_best": False})
    cfg = config_from_args(["--config", config])
    assert (cfg.use_cv, cfg.amp, cfg.batch_size, cfg.save_best) == (True, False, 5, False)


def test_defaults_without_config():
    cfg = config_from_args(["--data-dir", "d"])
    assert cfg == TrainConfig(data_dir="d")
    assert (cfg.batch_size, cfg.epochs, cfg.use_cv, cfg.amp, cfg.val_fraction) == (32, 100, False, True, 0.2)


# -- the user's guide ---------------------------------------------------------------------------
def test_user_guide_config_entry_maps_to_the_fields(tmp_path):
    config = write(tmp_path, "train_clip_config.json", GUIDE_CONFIG)
    cfg = config_from_args(["--config", config, "--data-dir", "single_label_data"])
    expected = dict(image_encoder="resnet18", text_encoder="clip:ViT-B/32", embed_dim=512, batch_size=32,
                    epochs=100, learning_rate=1e-4, weight_decay=0.01, temperature=0.07, img_size=224,
                    augmentation="standard", num_workers=4, amp=True, gpu_id=0, save_best=True,
                    use_cv=True, n_splits=5, random_state=42,
                    class_texts_file="class_texts_hip_prosthesis.json", use_weighted_sampling=True,
                    weight_method="inverse_freq", weight_smooth_factor=1.0)
    assert {key: getattr(cfg, key) for key in expected} == expected


def test_user_guide_aliases_carry_non_default_values(tmp_path):
    entry = json.loads(GUIDE_CONFIG)[0]
    entry.update(image_encoder_name="resnet50", text_encoder_name="bert-base-chinese", use_amp=False,
                 save_best=False, data_dir="d")
    cfg = config_from_args(["--config", write(tmp_path, "c.json", [entry])])
    assert (cfg.image_encoder, cfg.text_encoder, cfg.amp, cfg.save_best) == (
        "resnet50", "bert-base-chinese", False, False)


def test_user_guide_command_parses():
    cfg = config_from_args(GUIDE_COMMAND)
    assert cfg.data_dir == "single_label_data"
    assert cfg.output_dir == "checkpoints/clip_models/resnet18_clip_ViT-B_32"
    assert (cfg.batch_size, cfg.epochs, cfg.gpu_id, cfg.learning_rate) == (16, 200, 6, 1e-4)
    assert cfg.use_cv and cfg.use_weighted_sampling and cfg.amp


@pytest.mark.parametrize("flag", GUIDE_FLAGS + OUR_FLAGS)
def test_every_flag_of_the_users_guide_exists(flag):
    assert flag in build_parser()._option_string_actions


def test_chinese_text_template_from_the_guide():
    cfg = config_from_args(["--data-dir", "d", "--text-template", "这是一张{class_name}的图片",
                            "--weight-smooth-factor", "0.5"])
    assert cfg.text_template == ["这是一张{class_name}的图片"] and cfg.weight_smooth_factor == 0.5


# -- --help -------------------------------------------------------------------------------------
def help_sections(monkeypatch):
    """{section title: {flag: its help text on one line}} of ``--help``."""
    monkeypatch.setenv("COLUMNS", "200")
    sections, section, flag = {}, None, None
    for line in build_parser().format_help().splitlines():
        if line and not line.startswith(" ") and line.endswith(":"):
            section, flag = line[:-1], None
            sections[section] = {}
        elif section and re.match(r"^  --?\w", line):
            flag = line.split()[0].rstrip(",")
            sections[section][flag] = " ".join(line.split()[1:])
        elif section and flag and line.strip():
            sections[section][flag] += " " + line.strip()
    return sections


def test_help_groups_the_flags(monkeypatch):
    sections = help_sections(monkeypatch)
    for title in ("data", "model", "training", "cross-validation", "class imbalance", "system"):
        assert title in sections, sections.keys()
    where = {flag: title for title, flags in sections.items() for flag in flags}
    assert where["--data-dir"] == where["--class-texts-file"] == where["--augmentation"] == "data"
    assert where["--image-encoder"] == where["--text-encoder"] == where["--embed-dim"] == "model"
    assert where["--epochs"] == where["--learning-rate"] == where["--warmup-epochs"] == "training"
    assert where["--use-cv"] == where["--n-splits"] == where["--val-fraction"] == "cross-validation"
    assert where["--use-weighted-sampling"] == where["--weight-smooth-factor"] == "class imbalance"
    assert where["--gpu-id"] == where["--no-amp"] == where["--output-dir"] == "system"


def test_help_shows_the_defaults(monkeypatch):
    sections = help_sections(monkeypatch)
    text = {flag: help for flags in sections.values() for flag, help in flags.items()}
    for f in dataclasses.fields(TrainConfig):
        if f.default is None or isinstance(f.default, bool):
            continue
        flag = "--" + f.name.replace("_", "-")
        assert f"(default: {f.default})" in text[flag], (flag, text[flag])
    assert "inverse_freq" in text["--weight-method"] and "standard" in text["--augmentation"]


# -- errors -------------------------------------------------------------------------------------
def test_unknown_key_suggests_the_closest(tmp_path):
    config = write(tmp_path, "c.json", {"data_dir": "d", "learning_rat": 0.1})
    with pytest.raises(ConfigError, match=r"unknown key 'learning_rat' \(did you mean 'learning_rate'\?\)") as info:
        config_from_args(["--config", config])
    assert config in str(info.value)


@pytest.mark.parametrize("key, value, expected", [
    ("epochs", "10", "an integer"),
    ("epochs", 2.5, "an integer"),
    ("use_cv", 1, "true or false"),
    ("use_amp", "yes", "true or false"),
    ("learning_rate", "1e-4", "a number"),
    ("image_encoder_name", 18, "a string"),
    ("no_amp", "yes", "true or false"),
    ("batch_size", True, "an integer"),
])
def test_wrong_type_names_the_key(tmp_path, key, value, expected):
    config = write(tmp_path, "c.json", {"data_dir": "d", key: value})
    # The message names the key as the user wrote it (an alias, not our field name).
    with pytest.raises(ConfigError, match=f"'{key}' must be {expected}"):
        config_from_args(["--config", config])


def test_an_integer_is_accepted_for_a_float(tmp_path):
    cfg = config_from_args(["--config", write(tmp_path, "c.json", {"data_dir": "d", "learning_rate": 1})])
    assert cfg.learning_rate == 1.0 and isinstance(cfg.learning_rate, float)


def test_list_config_needs_an_index_when_it_has_several_entries(tmp_path):
    config = write(tmp_path, "c.json", [{"data_dir": "a", "epochs": 1}, {"data_dir": "b", "epochs": 2}])
    with pytest.raises(ConfigError, match=r"holds 2 configs: choose one with --config-index 0\.\.1"):
        config_from_args(["--config", config])
    assert config_from_args(["--config", config, "--config-index", "1"]).epochs == 2
    assert config_from_args(["--config", config, "--config-index", "0"]).data_dir == "a"


@pytest.mark.parametrize("index", ["2", "-1"])
def test_config_index_out_of_range(tmp_path, index):
    config = write(tmp_path, "c.json", [{"data_dir": "a"}, {"data_dir": "b"}])
    with pytest.raises(ConfigError, match=f"--config-index {index} is out of range"):
        config_from_args(["--config", config, "--config-index", index])


def test_a_one_entry_list_needs_no_index(tmp_path):
    assert config_from_args(["--config", write(tmp_path, "c.json", [{"data_dir": "a"}])]).data_dir == "a"


def test_config_index_without_config_is_an_error():
    with pytest.raises(ConfigError, match="--config-index needs --config"):
        config_from_args(["--data-dir", "d", "--config-index", "0"])


@pytest.mark.parametrize("content", [[], 3, [1, 2]])
def test_config_must_hold_objects(tmp_path, content):
    with pytest.raises(ConfigError, match="must hold an object or a non-empty list"):
        config_from_args(["--config", write(tmp_path, "c.json", content)])


def test_invalid_choice_in_json_suggests_the_closest(tmp_path):
    config = write(tmp_path, "c.json", {"data_dir": "d", "weight_method": "inverse_frq"})
    with pytest.raises(ConfigError, match=r"--weight-method: invalid choice 'inverse_frq' \(did you mean "
                                          r"'inverse_freq'\?\)"):
        config_from_args(["--config", config])


def test_invalid_choice_on_the_command_line_suggests_the_closest():
    with pytest.raises(ConfigError, match=r"invalid choice 'standart' \(did you mean 'standard'\?\)"):
        config_from_args(["--data-dir", "d", "--augmentation", "standart"])


def test_invalid_json_names_file_and_line(tmp_path):
    config = write(tmp_path, "broken.json", '{\n  "data_dir": "d",\n  "epochs": 3,,\n}\n')
    with pytest.raises(ValueError, match=r"broken\.json is not valid JSON: .* at line 3"):
        config_from_args(["--config", config])


def test_non_utf8_config_is_an_error_naming_the_file(tmp_path):
    # A file saved as GBK by a Chinese-locale editor.
    config = write(tmp_path, "gbk.json", '{"data_dir": "股骨柄"}'.encode("gbk"))
    with pytest.raises(ValueError, match=r"gbk\.json is not UTF-8"):
        config_from_args(["--config", config])


def test_utf8_with_bom_is_accepted(tmp_path):
    config = write(tmp_path, "bom.json", '\ufeff{"data_dir": "股骨柄"}'.encode("utf-8"))
    assert config_from_args(["--config", config]).data_dir == "股骨柄"


def test_missing_config_file(tmp_path):
    with pytest.raises(ValueError, match="nothing.json"):
        config_from_args(["--config", str(tmp_path / "nothing.json")])


@pytest.mark.parametrize("argv, message", [
    ([], "--data-dir is required"),
    (["--epochs", "0"], "--epochs must be at least 1"),
    (["--n-splits", "1"], "--n-splits must be at least 2"),
    (["--val-fraction", "1.0"], "--val-fraction must be between 0 and 1"),
    (["--warmup-epochs", "5", "--epochs", "2"], "--warmup-epochs must be between 0 and --epochs"),
    (["--weight-smooth-factor", "-1"], "--weight-smooth-factor must be non-negative"),
    (["--bootstrap-resamples", "-1"], "--bootstrap-resamples must be non-negative"),
    (["--text-template", "an X-ray"], "--text-template must contain '{class_name}'"),
    (["--data-csv", "labels.csv"], "--data-dir and --data-csv exclude each other"),
    (["--group-regex", "(P\\d+)", "--group-by", "dicom"], "--groups-file, --group-regex and --group-by exclude each other"),
    (["--group-by", "patient"], "--group-by: invalid choice 'patient'"),
    (["--select-on", "test"], "--select-on: invalid choice 'test'"),
    (["--inner-val-fraction", "0"], "--inner-val-fraction must be between 0 and 1"),
    (["--select-on", "last", "--patience", "3"], "--patience needs a choice of epoch"),
    (["--select-on", "last", "--calibrate", "temperature"], "--calibrate temperature needs images to fit it on"),
    (["--calibrate", "platt"], "--calibrate: invalid choice 'platt'"),
    (["--compile-mode", "reduce-overhead"], "--compile-mode reduce-overhead needs --compile"),
    (["--compile", "--compile-mode", "max-autotune"], "--compile-mode: invalid choice 'max-autotune'"),
    (["--augment-on", "gpu"], "--augment-on: invalid choice 'gpu'; expected one of workers, device"),
])
def test_value_checks_name_the_flag(argv, message):
    if argv:
        argv = ["--data-dir", "d"] + argv
    with pytest.raises(ConfigError, match=re.escape(message)):
        config_from_args(argv)


def test_augmentation_on_the_device_and_cuda_graphs_are_opt_in():
    default = config_from_args(["--data-dir", "d"])
    assert (default.augment_on, default.compile, default.compile_mode) == ("workers", False, "default")
    chosen = config_from_args(["--data-dir", "d", "--augment-on", "device", "--compile", "--compile-mode",
                               "reduce-overhead"])
    assert (chosen.augment_on, chosen.compile, chosen.compile_mode) == ("device", True, "reduce-overhead")


def test_bad_flag_value_is_one_line_naming_the_flag():
    with pytest.raises(ConfigError) as info:
        config_from_args(["--data-dir", "d", "--epochs", "ten"])
    assert "--epochs" in str(info.value) and "\n" not in str(info.value)


def test_unknown_flag_suggests_the_closest():
    with pytest.raises(ConfigError, match=r"--lerning-rate.*did you mean '--learning-rate'"):
        config_from_args(["--data-dir", "d", "--lerning-rate", "0.1"])


# -- round trip ---------------------------------------------------------------------------------
def test_config_json_of_a_run_is_a_valid_config(tmp_path):
    cfg = config_from_args(["--data-dir", "股骨柄数据", "--no-amp", "--use-cv", "--n-splits", "3",
                            "--text-template", "an X-ray of {class_name}", "--learning-rate", "3e-4",
                            "--no-save-best", "--weight-method", "balanced", "--output-dir", "out"])
    config = tmp_path / "config.json"
    write_json(config, cfg.to_dict())  # what train_clip writes
    assert config_from_args(["--config", str(config)]) == cfg


def test_command_line_can_switch_off_what_a_config_file_switched_on(tmp_path):
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"data_dir": "d", "use_cv": True, "use_amp": False, "freeze_text": True}))
    cfg = config_from_args(["--config", str(config), "--no-use-cv", "--amp", "--no-freeze-text"])
    assert (cfg.use_cv, cfg.amp, cfg.freeze_text) == (False, True, False)


def test_abbreviated_flags_are_refused():
    with pytest.raises(ConfigError, match="--epoch"):
        config_from_args(["--data-dir", "d", "--epoch", "5"])
