import imageio.v3 as iio
import numpy as np
import pytest
import tifffile

from napari_srgan.io import images as image_io
from napari_srgan.io.images import read_image, write_image, write_tiff
from napari_srgan.training.evaluation import image_files


def test_rgb_round_trip_with_provenance(tmp_path, rng):
    data = rng.integers(0, 255, (10, 12, 3)).astype(np.uint8)
    write_tiff(
        tmp_path / "rgb.tif",
        data,
        rgb=True,
        scale=(0.5, 0.25),
        translate=(1, 2),
        name="photo x4",
        provenance={"model": "m"},
    )
    image = read_image(tmp_path / "rgb.tif")
    np.testing.assert_array_equal(image.data, data)
    assert image.rgb and image.scale == (0.5, 0.25) and image.translate == (1, 2)
    assert image.provenance["model"] == "m" and image.provenance["layer"]["name"] == "photo x4"


def test_imagej_resolution_is_read(tmp_path):
    data = np.zeros((3, 8, 8), np.uint16)
    tifffile.imwrite(
        tmp_path / "ij.tif",
        data,
        imagej=True,
        resolution=(1 / 0.2, 1 / 0.2),
        metadata={"axes": "ZYX", "unit": "um"},
    )
    image = read_image(tmp_path / "ij.tif")
    assert image.scale[-2:] == pytest.approx((0.2, 0.2)) and image.unit == "µm"  # OME spelling


def test_a_failed_write_leaves_no_file(tmp_path, monkeypatch):
    target = tmp_path / "out.tif"
    target.write_bytes(b"previous result")

    def failing_write(path, *args, **kwargs):
        with open(path, "wb") as stream:
            stream.write(b"half a tiff")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(image_io.tifffile, "imwrite", failing_write)
    with pytest.raises(OSError, match=r"no space left on device while writing .*out\.tif"):
        write_tiff(target, np.zeros((4, 4), np.uint8), rgb=False, overwrite=True)
    assert target.read_bytes() == b"previous result"
    assert [p.name for p in tmp_path.iterdir()] == ["out.tif"]


def test_formats_that_cannot_hold_the_data_are_refused(tmp_path):
    with pytest.raises(ValueError, match="JPEG holds 8-bit data only"):
        write_image(tmp_path / "x.jpg", np.zeros((4, 4), np.uint16), rgb=False)
    with pytest.raises(ValueError, match="unknown output format"):
        write_image(tmp_path / "x.gif", np.zeros((4, 4), np.uint8), rgb=False)
    with pytest.raises(FileNotFoundError, match="output folder does not exist"):
        write_image(tmp_path / "missing" / "x.png", np.zeros((4, 4), np.uint8), rgb=False)


def test_training_folders_may_hold_lossless_webp(tmp_path, rng):
    """WebP (lossless) is read like PNG and found in image folders (training data, CLI)."""
    data = rng.integers(0, 255, (9, 11, 3)).astype(np.uint8)
    iio.imwrite(tmp_path / "photo.webp", data, lossless=True)
    (tmp_path / "notes.txt").write_text("not an image")
    assert image_files([tmp_path]) == [tmp_path / "photo.webp"]
    image = read_image(tmp_path / "photo.webp")
    np.testing.assert_array_equal(image.data, data)
    assert image.rgb


@pytest.mark.parametrize("suffix", [".webp", ".png", ".gif"])
def test_every_frame_of_an_animated_file_is_read(tmp_path, rng, suffix):
    """An animated WebP was read as its first frame only: the rest were silently dropped."""
    from PIL import Image

    frames = [rng.integers(0, 255, (9, 11, 3)).astype(np.uint8) for _ in range(3)]
    first, *rest = [Image.fromarray(frame) for frame in frames]
    first.save(tmp_path / f"movie{suffix}", save_all=True, append_images=rest, lossless=True)
    image = read_image(tmp_path / f"movie{suffix}")
    assert image.data.shape == (3, 9, 11, 3)
    assert image.rgb
    if suffix != ".gif":  # GIF stores a palette: its colours are not exact
        np.testing.assert_array_equal(image.data, np.stack(frames))


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_a_photo_is_read_turned_as_its_exif_orientation_says(tmp_path, suffix):
    """A phone photo stored on its side with orientation 6 ("turn 90 degrees clockwise") was
    upscaled on its side, unlike every viewer shows it."""
    from PIL import Image

    stored = np.zeros((20, 40, 3), np.uint8)
    stored[:4, :8] = 255  # the stored top-left corner: top-right once turned clockwise
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(tmp_path / f"phone{suffix}", exif=exif.tobytes(), quality=95)
    shown = read_image(tmp_path / f"phone{suffix}").data
    assert shown.shape == (40, 20, 3)
    assert shown[:8, -4:].mean() > 200 and shown[:8, :4].mean() < 50
