"""The folder scan: classes, extensions, hidden files, errors."""
import pytest

from data.folder import IMAGE_EXTENSIONS, DataError, scan_image_folder


def touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def test_scan_finds_every_extension_case_insensitively(tmp_path):
    names = ["a.jpg", "b.jpeg", "c.png", "d.bmp", "e.tif", "f.tiff", "g.webp", "h.JPG", "i.Png", "j.TIFF",
             "k.WebP", "l.DCM"]
    for name in names:
        touch(tmp_path / "one" / name)
    touch(tmp_path / "two" / "x.png")
    found = scan_image_folder(tmp_path)
    assert sorted(p.name for p, label in zip(found.paths, found.labels) if label == 0) == sorted(names)
    assert {"." + n.rsplit(".", 1)[1].lower() for n in names} == set(IMAGE_EXTENSIONS)


def test_scan_ignores_hidden_and_non_image_files_and_includes_subfolders(tmp_path):
    keep = [tmp_path / "b" / "x.png", tmp_path / "b" / "view" / "lateral" / "y.png",
            tmp_path / "a" / "z.jpg", tmp_path / "b" / "scan.dcm"]
    skip = [tmp_path / "b" / ".hidden.png", tmp_path / "b" / ".thumbs" / "t.png",
            tmp_path / "b" / "sub" / ".cache" / "c.png", tmp_path / "b" / "notes.txt",
            tmp_path / "b" / "Thumbs.db", tmp_path / "b" / "png",
            tmp_path / ".git" / "objects" / "o.png", tmp_path / "loose.png"]
    for path in keep + skip:
        touch(path)
    # A PACS export without suffix is found by its DICOM preamble (128 bytes, then DICM).
    pacs_export = tmp_path / "b" / "IM000001"
    pacs_export.write_bytes(bytes(128) + b"DICM" + bytes(16))
    keep.append(pacs_export)
    found = scan_image_folder(tmp_path)
    assert found.class_names == ["a", "b"]
    assert sorted(found.paths) == sorted(keep)
    assert found.labels == [0, 1, 1, 1, 1]
    assert found.class_counts() == [1, 4]


def test_scan_sorts_classes_and_keeps_utf8_names(tmp_path):
    for name in ["股骨柄B", "zeta", "股骨柄A", "Alpha", "beta"]:
        touch(tmp_path / name / "img.png")
    found = scan_image_folder(tmp_path)
    assert found.class_names == ["Alpha", "beta", "zeta", "股骨柄A", "股骨柄B"]
    for path, label in zip(found.paths, found.labels):
        assert path.parent.name == found.class_names[label]


def test_scan_sorts_images_within_a_class(tmp_path):
    for name in ["c.png", "a.png", "b.png"]:
        touch(tmp_path / "k" / name)
    touch(tmp_path / "m" / "x.png")
    assert [p.name for p in scan_image_folder(tmp_path).paths] == ["a.png", "b.png", "c.png", "x.png"]


def test_missing_data_dir(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        scan_image_folder(tmp_path / "nowhere")


def test_data_dir_that_is_a_file(tmp_path):
    with pytest.raises(DataError, match="not a folder"):
        scan_image_folder(touch(tmp_path / "data.zip"))


def test_empty_data_dir(tmp_path):
    touch(tmp_path / "readme.txt")
    with pytest.raises(DataError, match="no class folders"):
        scan_image_folder(tmp_path)


def test_single_class_is_an_error_naming_it(tmp_path):
    touch(tmp_path / "股骨柄A" / "x.png")
    with pytest.raises(DataError, match="only one class.*股骨柄A"):
        scan_image_folder(tmp_path)


def test_class_folder_without_images_is_named(tmp_path):
    touch(tmp_path / "a" / "x.png")
    touch(tmp_path / "空类" / "notes.txt")
    touch(tmp_path / "空类" / ".hidden.png")
    with pytest.raises(DataError, match="no image: 空类"):
        scan_image_folder(tmp_path)


