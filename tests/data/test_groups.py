"""Issue 10, the data layer: patient-grouped folds, CSV manifests, the sources of groups, leakage pairs."""
import logging
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from data.folder import DataError, ImageFolder, scan_image_folder
from data.folds import Fold, check_group_sizes, grouped_holdout, make_folds, make_holdout_split
from data.groups import assign_groups
from data.leakage import near_duplicates_across_folds
from data.manifest import scan_manifest
from tests.helpers import make_image_tree

# 20 patients with 3 images each; patients 0-9 in class 0, 10-19 in class 1.
LABELS = [p // 10 for p in range(20) for _ in range(3)]
GROUPS = [f"P{p:02d}" for p in range(20) for _ in range(3)]


@pytest.fixture
def warnings_of_train_clip(caplog):
    """Warnings of the train_clip loggers (they do not propagate to the root logger)."""
    logger = logging.getLogger("train_clip")
    logger.addHandler(caplog.handler)
    yield lambda: [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    logger.removeHandler(caplog.handler)


def sides(fold: Fold) -> tuple[set[str], set[str]]:
    return {GROUPS[i] for i in fold.train_idx}, {GROUPS[i] for i in fold.val_idx}


@pytest.mark.parametrize("n_splits", [2, 5])
def test_grouped_folds_never_split_a_patient_and_validate_each_image_once(n_splits):
    folds = make_folds(LABELS, n_splits, random_state=0, groups=GROUPS)
    for fold in folds:
        train, val = sides(fold)
        assert not train & val
        assert {LABELS[i] for i in fold.val_idx} == {0, 1}  # stratified: both classes validated
    assert Counter(i for f in folds for i in f.val_idx) == Counter(range(len(LABELS)))


def test_ungrouped_folds_do_split_patients():
    """The problem grouping solves: without groups some patient has images on both sides."""
    folds = make_folds(LABELS, 5, random_state=0)
    assert any(sides(f)[0] & sides(f)[1] for f in folds)


def test_grouped_holdout_and_test_split_keep_patients_whole():
    (fold,) = make_holdout_split(LABELS, ["a", "b"], 0.2, random_state=1, groups=GROUPS)
    assert not sides(fold)[0] & sides(fold)[1]
    assert len(fold.val_idx) == 12  # 4 of the 20 patients
    kept, held = grouped_holdout(LABELS, GROUPS, 0.25, random_state=1)
    assert not {GROUPS[i] for i in kept} & {GROUPS[i] for i in held}
    assert sorted(kept + held) == list(range(len(LABELS)))
    assert {LABELS[i] for i in held} == {0, 1}


def test_group_sizes_error_below_two_and_warn_below_the_fold_count(warnings_of_train_clip):
    labels, groups = [0] * 6 + [1] * 6, ["A"] * 6 + ["B", "B", "C", "C", "D", "D"]
    with pytest.raises(DataError, match=r"fewer than 2 groups.*cat \(1\)"):
        check_group_sizes(labels, groups, ["cat", "dog"], 3)
    groups = ["A", "A", "A", "E", "E", "E"] + groups[6:]
    check_group_sizes(labels, groups, ["cat", "dog"], 3)
    (warning,) = set(warnings_of_train_clip())  # the root logger may see the record too
    assert "cat (2)" in warning and "dog" not in warning
    with pytest.raises(DataError, match=r"--n-splits 6: only 5 groups"):
        check_group_sizes(labels, groups, ["cat", "dog"], 6)


# -- CSV manifests ------------------------------------------------------------------------------
def write_manifest(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_manifest_equals_the_folder_tree_whatever_the_row_order(tmp_path):
    data = make_image_tree(tmp_path / "data", {"cat_a": 3, "股骨柄A": 2})
    tree = scan_image_folder(data)
    rows = [f"{p.relative_to(data).as_posix()},{tree.class_names[y]}" for p, y in zip(tree.paths, tree.labels)]
    manifest = scan_manifest(write_manifest(data / "labels.csv", ["path,label"] + rows[::-1]))
    assert manifest == tree  # same root, classes, paths, labels, order; no groups


def test_manifest_reads_groups_and_absolute_paths(tmp_path):
    data = make_image_tree(tmp_path / "data", {"a": 2, "b": 2})
    lines = ["label,path,group", f"b,{data / 'b' / 'img_000.png'},P2", "b,data/b/img_001.png,P2", "a,data/a/img_000.png,P1",
             "a,data/a/img_001.png,P1"]
    images = scan_manifest(write_manifest(tmp_path / "m.csv", lines))
    assert images.class_names == ["a", "b"]
    assert images.groups == ["P1", "P1", "P2", "P2"]
    assert images.paths[2] == data / "b" / "img_000.png"


@pytest.mark.parametrize("lines, message", [
    (["path", "a/img_000.png"], r"line 1: missing column\(s\) label"),
    (["path,label", "a/img_000.png,a", "a/nope.png,a"], r"line 3: no such image file: 'a/nope.png'"),
    (["path,label", "a/img_000.png,a", "b/img_000.png, "], r"line 3: empty label"),
    (["path,label,group", "a/img_000.png,a,P1", "b/img_000.png,b,"], r"line 3: empty group"),
    (["path,label", "a/img_000.png,a", "a/img_001.png,a"], r"lists 1 class"),
])
def test_manifest_errors_name_the_line(tmp_path, lines, message):
    make_image_tree(tmp_path, {"a": 2, "b": 2})
    with pytest.raises(DataError, match=message):
        scan_manifest(write_manifest(tmp_path / "m.csv", lines))


# -- sources of groups --------------------------------------------------------------------------
def patient_tree(tmp_path: Path) -> ImageFolder:
    """Classes a (patients P01, P02) and b (P03), two views each, named ``P01_ap.png`` etc."""
    data = tmp_path / "data"
    for cls, patient in (("a", "P01"), ("a", "P02"), ("b", "P03")):
        (data / cls).mkdir(parents=True, exist_ok=True)
        for view in ("ap", "lat"):
            (data / cls / f"{patient}_{view}.png").write_bytes(b"not decoded here")
    return scan_image_folder(data)


def test_group_regex_uses_the_first_capture_group(tmp_path):
    images = assign_groups(patient_tree(tmp_path), None, r"(P\d+)_", "none")
    assert images.groups == ["P01", "P01", "P02", "P02", "P03", "P03"]
    with pytest.raises(DataError, match=r"matches no part of 6 path\(s\)"):
        assign_groups(patient_tree(tmp_path), None, r"(Q\d+)", "none")


def test_groups_file_maps_paths_to_patients_and_names_the_missing(tmp_path):
    images = patient_tree(tmp_path)
    groups_file = tmp_path / "groups.csv"
    rows = [f"{p.relative_to(images.root).as_posix()},{p.stem[:3]}" for p in images.paths]
    write_manifest(groups_file, ["path,group"] + rows)
    assert assign_groups(images, str(groups_file), None, "none").groups == GROUPS_OF_TREE
    write_manifest(groups_file, ["path,group"] + rows[1:])
    with pytest.raises(DataError, match=r"no group for 1 image\(s\): a/P01_ap.png"):
        assign_groups(images, str(groups_file), None, "none")


GROUPS_OF_TREE = ["P01", "P01", "P02", "P02", "P03", "P03"]


def test_group_by_dicom_reads_patient_id_and_names_files_without_one(tmp_path):
    from tests.helpers import write_dicom

    pixels = np.zeros((8, 8), dtype=np.uint8)
    for cls, patient in (("a", "PAT-1"), ("b", "PAT-2")):
        write_dicom(tmp_path / "data" / cls / "IM1", pixels, patient_id=patient)
    images = scan_image_folder(tmp_path / "data")
    assert assign_groups(images, None, None, "dicom").groups == ["PAT-1", "PAT-2"]
    make_image_tree(tmp_path / "data", {"b": 1})  # b/img_000.png: no PatientID
    with pytest.raises(DataError, match=r"1 file\(s\) are not DICOM or have no PatientID: b/img_000.png"):
        assign_groups(scan_image_folder(tmp_path / "data"), None, None, "dicom")


def test_a_second_source_of_groups_is_refused(tmp_path):
    images = patient_tree(tmp_path)
    grouped = ImageFolder(images.root, images.class_names, images.paths, images.labels, GROUPS_OF_TREE)
    with pytest.raises(DataError, match="already has a group column"):
        assign_groups(grouped, None, r"(P\d+)", "none")
    assert assign_groups(images, None, None, "none") is images


# -- leakage ------------------------------------------------------------------------------------
def test_near_duplicates_are_found_across_a_fold_but_not_within_a_side():
    rng = np.random.default_rng(0)
    codes = [int(c) for c in rng.integers(0, 2**63, size=6, dtype=np.int64)]
    codes[3] = codes[0] ^ 0b101  # 2 bits from image 0
    codes[4] = codes[1] ^ 0b1  # 1 bit from image 1, but on the same side in the fold
    codes[5] = codes[2]  # identical content: left to the exact-duplicate warning
    hashes = ["h0", "h1", "h2", "h3", "h4", "h2"]
    folds = [Fold(1, [0, 1, 4, 2], [3, 5]), Fold(2, [3, 5], [0, 1, 4, 2])]
    (pair,) = near_duplicates_across_folds(codes, hashes, folds)
    assert (pair.first, pair.second, pair.distance, pair.folds) == (0, 3, 2, (1, 2))


# -- refusals before anything is written --------------------------------------------------------
def refused(tmp_path: Path, capsys, *argv: str) -> str:
    import train_clip

    code = train_clip.main([*argv, "--log-file", str(tmp_path / "logs" / "run.log"), "--image-encoder",
                            "starnet_s050", "--text-encoder", "hf:unused", "--epochs", "1"])
    assert code == 2
    logging.getLogger("train_clip").handlers.clear()
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_a_csv_run_refuses_an_output_folder_holding_a_listed_image_or_the_csv_and_accepts_the_rest(tmp_path, capsys):
    """A CSV run reads only the files it lists: any other folder is safe (issue 24)."""
    from data.manifest import scan_manifest
    from training.arguments import config_from_args
    from training.run import check_output_location
    from utils.run_dir import RunDir

    images = make_image_tree(tmp_path / "pacs", {"a": 2, "b": 2})
    (tmp_path / "sheets").mkdir()
    rows = [f"{path},{path.parent.name}" for path in sorted(images.rglob("*.png"))]  # absolute paths
    manifest = write_manifest(tmp_path / "sheets" / "labels.csv", ["path,label"] + rows)
    message = refused(tmp_path, capsys, "--data-csv", str(manifest), "--output-dir", str(images))
    assert f"--output-dir {images} holds {images / 'a' / 'img_000.png'}, an image listed in --data-csv" in message
    message = refused(tmp_path, capsys, "--data-csv", str(manifest), "--output-dir", str(tmp_path))
    assert f"holds {manifest}, the --data-csv file itself" in message
    cfg = config_from_args(["--data-csv", str(manifest), "--output-dir", str(tmp_path / "x")])
    listed = scan_manifest(str(manifest))
    for safe in (tmp_path / "sheets" / "runs" / "x", images / "a" / "run", tmp_path / "elsewhere"):
        check_output_location(cfg, RunDir(safe), listed)  # beside the CSV, beside the images: accepted
        assert not safe.exists()


def test_a_bad_dicom_window_is_one_line_before_anything_is_written(tmp_path, capsys):
    make_image_tree(tmp_path / "data", {"a": 2, "b": 2})
    message = refused(tmp_path, capsys, "--data-dir", str(tmp_path / "data"), "--output-dir", str(tmp_path / "out"),
                      "--dicom-window", "400")
    assert "--dicom-window must be auto, none or CENTER,WIDTH" in message
    assert not (tmp_path / "out").exists()


def test_perceptual_hashes_of_two_exposures_are_near_and_of_two_patients_far(tmp_path):
    from data.images import build_image_cache
    from data.leakage import NEAR_DUPLICATE_BITS
    from PIL import Image

    rng = np.random.default_rng(3)
    paths = []
    for patient in range(2):
        coarse = Image.fromarray(rng.integers(0, 256, size=(8, 8)).astype(np.uint8))
        pattern = np.asarray(coarse.resize((64, 64), Image.Resampling.BICUBIC), dtype=float)
        for exposure in range(2):
            noisy = np.clip(pattern + rng.normal(0, 3, pattern.shape), 0, 255).astype(np.uint8)
            paths.append(tmp_path / f"p{patient}_{exposure}.png")
            Image.fromarray(noisy).save(paths[-1])
    codes = build_image_cache(paths, 32, 16, threads=1).phashes
    distance = [[bin(a ^ b).count("1") for b in codes] for a in codes]
    assert distance[0][1] <= NEAR_DUPLICATE_BITS and distance[2][3] <= NEAR_DUPLICATE_BITS
    assert min(distance[0][2], distance[0][3], distance[1][2], distance[1][3]) > NEAR_DUPLICATE_BITS


def test_the_test_set_and_the_single_split_of_a_run_are_grouped_too():
    from training.config import TrainConfig
    from training.run import folds_document, plan_folds, split_off_test

    paths = [Path(f"/data/{'ab'[y]}/{g}_{i}.png") for i, (y, g) in enumerate(zip(LABELS, GROUPS))]
    images = ImageFolder(Path("/data"), ["a", "b"], paths, LABELS, GROUPS)
    cfg = TrainConfig(data_dir="/data", test_fraction=0.2, val_fraction=0.25, batch_size=4)
    dev, test = split_off_test(cfg, images)
    (fold,) = plan_folds(cfg, images, dev)
    sides = [{GROUPS[i] for i in part} for part in (test, fold.train_idx, fold.val_idx)]
    assert all(sides[a].isdisjoint(sides[b]) for a, b in ((0, 1), (0, 2), (1, 2)))
    assert len(sides[0]) == 4 and {LABELS[i] for i in test} == {0, 1}
    document = folds_document(cfg, images, [fold], test)
    assert document["groups"]["a/P00_0.png"] == "P00" and len(document["groups"]) == len(paths)
