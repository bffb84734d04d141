"""Issue 10 end to end: grouped folds stop the inflation that a patient's similar images cause.

20 patients with 3 radiographs each; each patient's images share a patient-specific pattern and
the class is drawn at random per patient. A model can only learn "which patient is this", so:
without grouping a validated image has siblings in training and the CV accuracy is inflated; with
grouping it is near chance. Tiny images, starnet_s050 and a few epochs keep it fast.
"""
import csv
import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import predict
import train_clip
from reporting.patients import per_group
from tests.helpers import write_dicom
from utils.run_dir import RunDir

N_PATIENTS, IMAGES_PER_PATIENT, SIZE = 20, 3, 32
CLASSES = ("loose", "stable")


def patient_images(seed: int = 0) -> list[tuple[str, str, np.ndarray]]:
    """(patient, class, pixels): a patient's images are its own random 8x8 pattern plus a little noise."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation([0] * (N_PATIENTS // 2) + [1] * (N_PATIENTS // 2))
    out = []
    for p in range(N_PATIENTS):
        pattern = np.kron(rng.integers(0, 2, size=(4, 4)), np.ones((SIZE // 4, SIZE // 4))) * 200 + 20
        for _ in range(IMAGES_PER_PATIENT):
            noisy = np.clip(pattern + rng.normal(0, 6, pattern.shape), 0, 255).astype(np.uint8)
            out.append((f"P{p:02d}", CLASSES[labels[p]], noisy))
    return out


def make_png_tree(root: Path) -> Path:
    for n, (patient, cls, pixels) in enumerate(patient_images()):
        (root / cls).mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels, mode="L").save(root / cls / f"{patient}_{n % IMAGES_PER_PATIENT}.png")
    return root


def train(root: Path, name: str, text_encoder: Path, data: list[str], *extra: str) -> tuple[Path, str]:
    out, log_file = root / name, root / f"{name}.log"
    argv = [*data, "--output-dir", str(out), "--log-file", str(log_file), "--image-encoder", "starnet_s050",
            "--text-encoder", f"hf:{text_encoder}", "--img-size", str(SIZE), "--epochs", "8", "--batch-size", "4",
            "--num-workers", "0", "--augmentation", "none", "--embed-dim", "16", "--learning-rate", "3e-3",
            "--loss", "ce", "--text-template", "a {class_name} hip", "--deterministic",
            # No epoch is chosen, so the leakage between a patient's images is the only inflation measured.
            "--select-on", "last", *extra]
    assert train_clip.main(argv) == 0
    logging.getLogger("train_clip").handlers.clear()  # release the log file
    return out, log_file.read_text(encoding="utf-8")


def read(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_text_encoder):
    root = tmp_path_factory.mktemp("patients")
    data = make_png_tree(root / "data")
    cv = ["--use-cv", "--n-splits", "5"]
    ungrouped = train(root, "ungrouped", tiny_text_encoder, ["--data-dir", str(data)], *cv)
    grouped = train(root, "grouped", tiny_text_encoder, ["--data-dir", str(data)], *cv, "--group-regex", r"(P\d+)_")
    manifest = data / "labels.csv"
    with manifest.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label"])
        rows = [[p.relative_to(data).as_posix(), p.parent.name] for p in sorted(data.rglob("*.png"))]
        writer.writerows(sorted(rows, key=lambda r: r[0][::-1]))  # any row order
    from_csv = train(root, "from_csv", tiny_text_encoder, ["--data-csv", str(manifest)], *cv)
    return {"ungrouped": ungrouped, "grouped": grouped, "from_csv": from_csv}


def patient_of(path: str) -> str:
    return Path(path).name.split("_")[0]


def leakage_pairs(log_text: str) -> list[tuple[str, str]]:
    """The pairs the leakage warning names: "a.png ~ b.png (fold 1, 3); ..." → [(a.png, b.png), ...]."""
    lines = [line for line in log_text.splitlines() if "Possible leakage" in line]
    if not lines:
        return []
    listing = lines[0].split("the same patient: ", 1)[1].rsplit("; ", 1)[0]
    pairs = [item.split(" (fold")[0].split(" ~ ") for item in listing.split("; ")]
    return [(a, b) for a, b in pairs]


def test_grouped_folds_keep_every_patient_on_one_side(runs):
    out, log_text = runs["grouped"]
    folds = read(RunDir(out).folds)
    assert len(folds["groups"]) == N_PATIENTS * IMAGES_PER_PATIENT
    assert all(group == patient_of(path) for path, group in folds["groups"].items())
    for fold in folds["folds"]:
        assert not {patient_of(p) for p in fold["train"]} & {patient_of(p) for p in fold["val"]}
    summary = read(RunDir(out).summary)
    assert summary["n_groups"] == N_PATIENTS and summary["oof_patient"]["n_groups"] == N_PATIENTS
    # The images of one patient are not independent: the confidence intervals resample patients.
    assert summary["ci_settings"]["resampled_unit"] == "group"
    assert read(RunDir(runs["ungrouped"][0]).summary)["ci_settings"]["resampled_unit"] == "image"
    assert "20 groups" in log_text
    # Unrelated patients may look alike, but no patient's own pair can straddle a fold any more; the
    # same check on the same images without groups does find such pairs, so it ran and works.
    assert any(patient_of(a) == patient_of(b) for a, b in leakage_pairs(runs["ungrouped"][1]))
    assert all(patient_of(a) != patient_of(b) for a, b in leakage_pairs(log_text))
    assert "## Per patient (pooled out-of-fold)" in RunDir(out).report.read_text(encoding="utf-8")


def test_without_grouping_patients_straddle_folds_and_the_leakage_warning_names_pairs(runs):
    out, log_text = runs["ungrouped"]
    folds = read(RunDir(out).folds)
    assert "groups" not in folds
    assert any({patient_of(p) for p in f["train"]} & {patient_of(p) for p in f["val"]} for f in folds["folds"])
    # Most named pairs are two images of one patient, e.g. "loose/P03_0.png ~ loose/P03_2.png (fold 4)".
    pairs = leakage_pairs(log_text)
    assert sum(patient_of(a) == patient_of(b) for a, b in pairs) >= 5, pairs
    assert log_text.count("group them (a CSV group column, --groups-file, --group-regex or --group-by dicom)") == 1
    assert "oof_patient" not in read(RunDir(out).summary)


def test_grouping_removes_the_inflated_accuracy(runs):
    inflated = read(RunDir(runs["ungrouped"][0]).summary)["oof"]["accuracy"]
    honest = read(RunDir(runs["grouped"][0]).summary)["oof"]["accuracy"]
    # Chance is 0.5; with --select-on last nothing else lifts the grouped score.
    assert inflated >= 0.85, inflated
    assert honest <= 0.75, honest
    assert inflated - honest >= 0.2


def test_csv_manifest_gives_the_folds_and_metrics_of_the_folder_tree(runs):
    tree, manifest = RunDir(runs["ungrouped"][0]), RunDir(runs["from_csv"][0])
    assert read(manifest.folds) == read(tree.folds)
    assert read(manifest.summary)["oof"] == read(tree.summary)["oof"]
    assert [f["metrics"] for f in read(manifest.summary)["folds"]] == [f["metrics"] for f in read(tree.summary)["folds"]]


def test_patient_probabilities_are_the_mean_of_their_images():
    labels, groups = [1, 1, 0, 0], ["b", "b", "a", "a"]
    probs = np.array([[0.2, 0.8], [0.6, 0.4], [0.9, 0.1], [0.7, 0.3]])
    group_labels, group_probs = per_group(labels, probs, groups)
    assert group_labels.tolist() == [0, 1]
    assert np.allclose(group_probs, [[0.8, 0.2], [0.4, 0.6]])


def test_a_dicom_tree_trains_grouped_by_patient_id_and_predict_reads_dicom(tmp_path, tiny_text_encoder):
    data = tmp_path / "dicom"
    rng = np.random.default_rng(1)
    n_images, per_patient = 200, 5  # 40 patients, as a small PACS export
    for n in range(n_images):
        patient, cls = f"P{n // per_patient:02d}", CLASSES[(n // per_patient) % 2]
        pixels = rng.integers(0, 256, size=(SIZE, SIZE)).astype(np.uint16)
        bright = pixels * 14 + (0 if cls == "loose" else 400)  # 12 bits, class-dependent
        # Suffix-less, as PACS exports are: found by the DICM preamble.
        write_dicom(data / cls / f"IM{n:04d}", bright, bits_stored=12, patient_id=patient)
    out, log_text = train(tmp_path, "run", tiny_text_encoder, ["--data-dir", str(data)], "--use-cv", "--n-splits",
                          "2", "--group-by", "dicom", "--epochs", "1")
    folds = read(RunDir(out).folds)
    assert len(folds["groups"]) == n_images
    assert sorted(set(folds["groups"].values())) == [f"P{p:02d}" for p in range(n_images // per_patient)]
    assert "unreadable" not in log_text
    predictions = tmp_path / "predictions.csv"
    assert predict.main(["--run-dir", str(out), "--images", str(data / "stable"), "--output", str(predictions),
                         "--cpu"]) == 0
    with predictions.open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(list((data / "stable").iterdir())) and all(r["path"].startswith("IM") for r in rows)
