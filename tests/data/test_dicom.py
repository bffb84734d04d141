"""Issue 10: DICOM radiographs decode to the orientation and grey levels a reader sees.

Real files that pydicom ships (compressed with JPEG, JPEG-LS, JPEG 2000, RLE) and files written
here with pydicom (MONOCHROME1, a rescale, a VOI window, 12 of 16 bits, RLE compression).
"""
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from pydicom.data import get_testdata_file
from pydicom.uid import RLELossless

from data.dicom import DicomOptions, DicomWindowError, check_window, parse_window
from data.images import ImageDecodeError, build_image_cache, decode_image
from tests.helpers import write_dicom

SIZE = 32
# Left dark, right bright, and a bright square top-left: a flip or a transpose would show.
GRADIENT = np.tile(np.linspace(0, 4095, SIZE).astype(np.uint16), (SIZE, 1))
GRADIENT[:4, :4] = 4095


def decoded(path: Path, **options) -> np.ndarray:
    return decode_image(path, SIZE, DicomOptions(**options))[0].numpy().astype(int)


@pytest.fixture
def base(tmp_path) -> Path:
    return write_dicom(tmp_path / "base.dcm", GRADIENT, bits_stored=12)


def test_12_bit_stored_values_span_0_to_255_in_their_orientation(base):
    image = decoded(base)
    assert image.min() == 0 and image.max() == 255
    assert (np.diff(image[SIZE // 2]) >= 0).all()  # a row rises left to right
    assert image[0, 0] == 255 and image[SIZE // 2, 0] == 0  # the marker stays top-left


def test_monochrome1_is_inverted_so_bone_is_bright(tmp_path, base):
    inverted = write_dicom(tmp_path / "m1.dcm", GRADIENT, photometric="MONOCHROME1", bits_stored=12)
    assert (decoded(inverted) == 255 - decoded(base)).all()


def test_rescale_slope_and_intercept_come_before_the_window(tmp_path):
    # Stored 0..1000 → -1000..1000 after the modality LUT; a window 0±500 blacks the left quarter out
    # and whitens the right one. Without the rescale, most of the image would be white.
    stored = np.tile(np.linspace(0, 1000, SIZE).astype(np.uint16), (SIZE, 1))
    path = write_dicom(tmp_path / "ct.dcm", stored, RescaleSlope=2, RescaleIntercept=-1000)
    image = decoded(path, window="0,1000")
    assert (image[:, : SIZE // 4] == 0).all() and (image[:, -SIZE // 4:] == 255).all()
    assert 0 < image[0, SIZE // 2] < 255


def test_the_files_window_is_used_by_default_and_none_ignores_it(tmp_path, base):
    path = write_dicom(tmp_path / "w.dcm", GRADIENT, bits_stored=12, WindowCenter=2048, WindowWidth=1024)
    windowed, full = decoded(path), decoded(path, window="none")
    assert (windowed == 0).sum() > 5 * SIZE and (windowed == 255).sum() > 5 * SIZE  # a quarter each side
    assert (full == decoded(base)).all()


def test_rle_compression_decodes_to_the_same_image(tmp_path, base):
    ds = pydicom.dcmread(base)
    ds.compress(RLELossless)
    ds.save_as(tmp_path / "rle.dcm")
    assert ds.file_meta.TransferSyntaxUID == RLELossless
    assert (decoded(tmp_path / "rle.dcm") == decoded(base)).all()


@pytest.mark.parametrize("name", ["MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm", "MR_small_jp2klossless.dcm"])
def test_pydicom_testdata_compressed_syntaxes_equal_the_uncompressed_file(name):
    reference = decoded(Path(get_testdata_file("MR_small.dcm")))
    assert reference.std() > 10  # a real image, not a blank
    assert (decoded(Path(get_testdata_file(name))) == reference).all()


def test_jpeg_compressed_files_decode():
    # 12-bit lossy JPEG (Process 2 and 4), grayscale; and an 8-bit baseline JPEG in colour.
    gray = decode_image(get_testdata_file("JPGExtended.dcm"), SIZE)
    assert gray.shape == (1, SIZE, SIZE) and gray.float().std() > 5  # an image, not a blank
    lossy = decode_image(get_testdata_file("SC_rgb_jpeg_dcmtk.dcm"), SIZE).float()
    lossless = decode_image(get_testdata_file("SC_rgb_rle.dcm"), SIZE).float()
    assert lossy.shape == (3, SIZE, SIZE)
    assert (lossy - lossless).abs().mean() < 8  # the same colour bars, up to JPEG loss


@pytest.mark.parametrize("name", ["SC_ybr_full_422_uncompressed.dcm", "SC_rgb_dcmtk_+eb+cy+np.dcm"])
def test_ybr_files_decode_to_the_rgb_colours(name):
    # The same colour bars stored as YBR (uncompressed, and JPEG with the YBR colour transform).
    rgb = decode_image(get_testdata_file("SC_rgb_rle.dcm"), SIZE).float()
    ybr = decode_image(get_testdata_file(name), SIZE).float()
    assert ybr.shape == (3, SIZE, SIZE)
    assert (ybr - rgb).abs().mean() < 8


def test_signed_16_bit_ct_and_a_palette_image_decode():
    ct = decode_image(get_testdata_file("CT_small.dcm"), 128)  # 128x128 signed 16-bit with a rescale
    assert ct.shape == (1, 128, 128) and ct.min() == 0 and ct.max() == 255
    palette = decode_image(get_testdata_file("examples_palette.dcm"), SIZE)
    assert palette.shape == (3, SIZE, SIZE) and palette.float().std() > 5


def test_multi_frame_is_refused_unless_frame_0_is_asked_for():
    path = get_testdata_file("rtdose.dcm")  # 15 frames
    with pytest.raises(ImageDecodeError, match=r"multi-frame DICOM \(15 frames\); --dicom-first-frame"):
        decode_image(path, SIZE)
    assert decode_image(path, SIZE, DicomOptions(first_frame=True)).shape == (1, SIZE, SIZE)


def test_dicom_without_pixel_data_is_an_unreadable_image(tmp_path, base):
    ds = pydicom.dcmread(base)
    del ds.PixelData
    ds.save_as(tmp_path / "header_only.dcm")
    result = build_image_cache([tmp_path / "header_only.dcm", base], SIZE, 16, threads=1)
    assert [(p.name, reason) for p, reason in result.failures] == [("header_only.dcm", "DicomError: DICOM file "
                                                                   "without pixel data")]
    assert result.cache.paths == [base]


def test_a_suffixless_file_is_read_as_dicom_by_its_preamble_also_from_the_cache(tmp_path, base):
    export = tmp_path / "IM0001"
    export.write_bytes(base.read_bytes())
    result = build_image_cache([export], SIZE, 0, threads=1)  # budget 0: re-decoded from disk on access
    assert result.cache.images == [None]
    assert torch.equal(result.cache.get(0)[0], torch.from_numpy(decoded(base).astype(np.uint8)))


def test_window_setting_is_checked():
    assert parse_window("40, 400") == (40.0, 400.0)
    assert parse_window("-600,1500.5") == (-600.0, 1500.5)
    for bad in ("400", "40,0", "wide"):
        with pytest.raises(DicomWindowError, match="--dicom-window"):
            check_window(bad)
    check_window("auto")
    check_window("none")
