"""Bad and odd images: each decodes correctly or is reported by id with its reason, under every
`--on-bad-image` policy, through the real runner and the real EfficientNet-Lite0."""

from __future__ import annotations

import io
import os

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from feat.cache import FeatureCache
from feat.extract.images import decode_image, image_digest
from feat.extract.runner import ExtractConfig, extract
from helpers import cli, jpeg_bytes, png_bomb_bytes, png_bytes, register_test_encoders, write_csv


def _save(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def _exif_rotated() -> bytes:
    """40 x 20 stored, left half red, right half blue, EXIF orientation 6 (display rotated 90 degrees)."""
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :20] = (255, 0, 0)
    pixels[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    return _save(Image.fromarray(pixels), "JPEG", exif=exif.tobytes(), quality=95)


def _animated_gif() -> bytes:
    frames = [Image.new("RGB", (16, 16), (255, 0, 0)), Image.new("RGB", (16, 16), (0, 0, 255))]
    return _save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def _palette_transparent() -> bytes:
    image = Image.new("P", (16, 16), 1)
    image.putpalette([0, 0, 0, 0, 200, 0] + [0] * 762)
    image.info["transparency"] = 1  # the green index is transparent: over white it must be white
    return _save(image, "PNG", transparency=1)


def _rgba_half() -> bytes:
    pixels = np.zeros((16, 16, 4), np.uint8)
    pixels[:, :8] = (0, 0, 255, 255)  # opaque blue
    pixels[:, 8:] = (255, 0, 0, 0)  # fully transparent (red underneath must not show)
    return _save(Image.fromarray(pixels, "RGBA"), "PNG")


def _png16() -> bytes:
    ramp = np.linspace(0, 65535, 32 * 32).reshape(32, 32).astype(np.uint16)
    return _save(Image.fromarray(ramp), "PNG")


def _cmyk_red() -> bytes:
    return _save(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG", quality=95)


def _truncated_jpeg() -> bytes:
    data = jpeg_bytes((96, 96))
    return data[: len(data) // 2]


def _pixel(image: Image.Image, x: int, y: int) -> np.ndarray:
    return np.asarray(image)[y, x].astype(int)


def _close(actual, expected, tol=12) -> bool:
    return bool(np.all(np.abs(np.asarray(actual) - np.asarray(expected)) <= tol))


# name -> (file name, bytes or a marker, check of the decoded image or the expected reason)
GOOD = {
    "png": ("png.png", lambda: png_bytes(colour=(200, 30, 30)),
            lambda im: im.size == (24, 24) and _close(_pixel(im, 5, 5), (200, 30, 30), 0)),
    "jpeg": ("jpeg.jpg", lambda: jpeg_bytes(), lambda im: im.size == (64, 48) and im.mode == "RGB"),
    "grey": ("grey.png", lambda: png_bytes(mode="L", colour=90), lambda im: _close(_pixel(im, 0, 0), (90,) * 3, 0)),
    "cmyk": ("cmyk.jpg", _cmyk_red, lambda im: _close(_pixel(im, 8, 8), (255, 0, 0))),
    "png16": ("png16.png", _png16,
              lambda im: _close(_pixel(im, 0, 0), (0, 0, 0), 1) and _close(_pixel(im, 31, 31), (255,) * 3, 1)
              and _close(_pixel(im, 0, 16), (127,) * 3, 3)),
    "palette": ("palette.png", _palette_transparent, lambda im: _close(_pixel(im, 3, 3), (255, 255, 255), 0)),
    "rgba": ("rgba.png", _rgba_half,
             lambda im: _close(_pixel(im, 2, 2), (0, 0, 255), 0) and _close(_pixel(im, 12, 2), (255,) * 3, 0)),
    "gif": ("anim.gif", _animated_gif, lambda im: im.size == (16, 16) and _close(_pixel(im, 8, 8), (255, 0, 0))),
    "exif": ("exif.jpg", _exif_rotated,
             lambda im: im.size == (20, 40) and _close(_pixel(im, 10, 3), (255, 0, 0), 30)
             and _close(_pixel(im, 10, 36), (0, 0, 255), 30)),
    "wrong_ext": ("actually_png.jpg", lambda: png_bytes(colour=(10, 200, 10)),
                  lambda im: _close(_pixel(im, 1, 1), (10, 200, 10), 0)),
}
BAD = {
    "garbage": ("garbage.jpg", lambda: os.urandom(3000), "not an image"),
    "text_as_png": ("notes.png", lambda: b"just some text, not pixels\n" * 20, "not an image"),
    "truncated": ("truncated.jpg", _truncated_jpeg, "image corrupt"),
    "zero_byte": ("empty.png", lambda: b"", "empty (0 bytes)"),
    "missing": ("missing.png", None, "image file not found"),
    "directory": ("a_dir.png", "dir", "is a directory"),
    "fifo": ("pipe.png", "fifo", "not a regular file"),
    "bomb": ("bomb.png", lambda: png_bomb_bytes(100_000, 100_000), "image too large"),
    "bomb_below_pil_limit": ("bomb2.png", lambda: png_bomb_bytes(9_000, 9_000), "image too large"),
}
UNREADABLE = {"missing", "directory", "fifo", "zero_byte"}  # no bytes to hash


def _write_images(root) -> dict[str, str]:
    (root / "img").mkdir(parents=True, exist_ok=True)
    paths = {}
    for key, (name, make, _) in {**GOOD, **BAD}.items():
        path = root / "img" / name
        if make == "dir":
            path.mkdir()
        elif make == "fifo":
            os.mkfifo(path)
        elif make is not None:
            path.write_bytes(make())
        paths[key] = f"img/{name}"
    return paths


@pytest.fixture
def image_zoo(tmp_path):
    root = tmp_path / "zoo"
    paths = _write_images(root)
    records = [{"id": key, "text": f"text {key}", "image": path, "split": ["train", "dev", "test"][i % 3]}
               for i, (key, path) in enumerate(paths.items())]
    return write_csv(root / "data.csv", records)


@pytest.mark.parametrize("key", GOOD)
def test_odd_but_valid_images_decode_correctly(tmp_path, key):
    name, make, check = GOOD[key]
    path = tmp_path / name
    path.write_bytes(make())
    image, reason = decode_image(str(path))
    assert reason == "" and image.mode == "RGB"
    assert check(image), (key, image.size, np.asarray(image)[:2, :2].tolist())


@pytest.mark.parametrize("key", BAD)
def test_bad_images_give_a_reason(tmp_path, key):
    root = tmp_path / "r"
    paths = _write_images(root)
    image, reason = decode_image(str(root / paths[key]))
    assert image is None and BAD[key][2] in reason, reason
    assert image_digest(str(root / paths[key])).startswith("unreadable:") == (key in UNREADABLE)


def test_truncated_images_are_refused_even_if_pil_was_told_to_pad_them(tmp_path):
    from PIL import ImageFile

    path = tmp_path / "t.jpg"
    path.write_bytes(_truncated_jpeg())
    ImageFile.LOAD_TRUNCATED_IMAGES = True  # what some libraries set globally on import
    try:
        assert decode_image(str(path))[0] is None
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = False


def _rows(cache_dir, name="effnet"):
    rows = FeatureCache(cache_dir).read(name).rows
    return {item: (bool(v), r, x) for item, v, r, x in zip(rows.ids, rows.valid, rows.reason, rows.matrix)}


def _check_reported(cache_dir, output: str, policy: str) -> pd.DataFrame:
    bad = pd.read_csv(cache_dir / "bad_rows.csv", keep_default_na=False)
    assert set(bad["id"]) == set(BAD), "bad_rows.csv lists exactly the bad rows"
    for key, (_, _, reason) in BAD.items():
        assert reason in bad.set_index("id").loc[key, "reason"]
    assert f"{len(BAD)} bad row(s) listed in" in output
    shown = [line for line in output.splitlines() if line.startswith("  bad row ")]
    assert len(shown) == 5 and f"... and {len(BAD) - 5} more in bad_rows.csv" in output
    first = bad.iloc[0]
    assert shown[0] == f"  bad row {first['id']} ({first['feature']}): {first['reason']}"
    return bad


def test_policy_skip(image_zoo, tmp_path):
    cache = tmp_path / "c"
    result = cli("extract", image_zoo, "-e", "effnet", "-c", cache, "--on-bad-image", "skip", "--batch-size", "4")
    _check_reported(cache, result.output, "skip")
    rows = _rows(cache)
    assert list(rows) == [*GOOD, *BAD], "ids and order preserved"
    for key in GOOD:
        valid, reason, vector = rows[key]
        assert valid and reason == "" and np.isfinite(vector).all() and np.abs(vector).sum() > 0, key
    for key in BAD:
        valid, reason, vector = rows[key]
        assert not valid and BAD[key][2] in reason and not vector.any(), key
    assert f"{len(BAD)} invalid" in result.output


def test_policy_zero(image_zoo, tmp_path, monkeypatch):
    # The policy is the runner's, not the model's: the tiny encoder keeps the default suite fast.
    register_test_encoders(monkeypatch)
    cache = tmp_path / "c"
    result = cli("extract", image_zoo, "-e", "tiny-image", "-c", cache, "--on-bad-image", "zero",
                 "--batch-size", "4")
    bad = _check_reported(cache, result.output, "zero")
    assert bad["valid"].all()
    rows = _rows(cache, "tiny-image")
    for key in BAD:
        valid, reason, vector = rows[key]
        assert valid and BAD[key][2] in reason and not vector.any(), key
    assert all(rows[k][0] and rows[k][2].any() for k in GOOD)
    assert f"0 invalid, {len(BAD)} zero-filled" in result.output


def test_policy_fail_commits_good_rows_and_a_skip_rerun_reuses_them(image_zoo, tmp_path):
    cache = tmp_path / "c"
    result = cli("extract", image_zoo, "-e", "effnet", "-c", cache, "--on-bad-image", "fail", "--batch-size", "4",
                 expect=2)
    message = result.output.strip().splitlines()[-1]
    assert message.startswith("error:") and f"{len(BAD)} bad image(s) with --on-bad-image fail" in message
    for key, (_, _, reason) in BAD.items():
        assert f"{key}: " in message and reason in message, key
    # Not finalized, but every good row is durably committed and every bad one listed.
    assert not FeatureCache(cache).feature_path("effnet").exists()
    bad = pd.read_csv(cache / "bad_rows.csv", keep_default_na=False)
    assert set(bad["id"]) == set(BAD) and not bad["valid"].any()
    report = extract(ExtractConfig(data=image_zoo, cache=cache, encoders=["effnet"], on_bad_image="skip",
                                   batch_size=4))
    effnet = report.encoders[0]
    assert (effnet.batches, effnet.encoded, effnet.reused, effnet.invalid) == (0, 0, len(GOOD), len(BAD))
    rows = _rows(cache)
    assert {k for k, (valid, _, _) in rows.items() if not valid} == set(BAD)
    assert set(pd.read_csv(cache / "bad_rows.csv")["id"]) == set(BAD)
    # Running fail again on the now complete cache fails again, naming the same rows, and changes nothing.
    before = (cache / "features" / "effnet.h5").read_bytes()
    again = cli("extract", image_zoo, "-e", "effnet", "-c", cache, "--on-bad-image", "fail", expect=2)
    assert all(f"{key}: " in again.output for key in BAD)
    assert (cache / "features" / "effnet.h5").read_bytes() == before


def test_fixing_a_bad_image_re_encodes_only_that_row(image_zoo, tmp_path, monkeypatch):
    register_test_encoders(monkeypatch)
    cache = tmp_path / "c"
    config = ExtractConfig(data=image_zoo, cache=cache, encoders=["tiny-image"], batch_size=4)
    extract(config)
    (image_zoo.parent / "img" / "garbage.jpg").write_bytes(png_bytes(colour=(1, 2, 3)))
    report = extract(config).encoders[0]
    assert (report.encoded, report.batches, report.reused) == (1, 1, len(GOOD) + len(BAD) - 1)
    rows = _rows(cache, "tiny-image")
    assert rows["garbage"][0] and rows["garbage"][1] == ""
    assert "garbage" not in set(pd.read_csv(cache / "bad_rows.csv")["id"])


def test_switching_policy_reprocesses_only_bad_rows_and_loads_no_model(image_zoo, tmp_path, monkeypatch):
    cache = tmp_path / "c"
    extract(ExtractConfig(data=image_zoo, cache=cache, encoders=["effnet"], on_bad_image="skip"))
    from feat.extract.effnet import EfficientNetLite0Encoder

    def no_load(self, runtime):
        raise AssertionError("no good image to encode: the model must not be loaded")

    monkeypatch.setattr(EfficientNetLite0Encoder, "load", no_load)
    report = extract(ExtractConfig(data=image_zoo, cache=cache, encoders=["effnet"], on_bad_image="zero")).encoders[0]
    assert (report.batches, report.encoded, report.reused, report.zero_filled) == (0, 0, len(GOOD), len(BAD))
    assert "no forward pass;" in report.line() and "all rows reused" not in report.line()


def test_decoding_in_worker_processes_gives_the_same_rows(image_zoo, tmp_path, monkeypatch):
    register_test_encoders(monkeypatch)
    for workers in (0, 2):
        extract(ExtractConfig(data=image_zoo, cache=tmp_path / f"w{workers}", encoders=["tiny-image"],
                              batch_size=3, num_workers=workers))
    serial, parallel = (FeatureCache(tmp_path / f"w{w}").read("tiny-image").rows for w in (0, 2))
    assert list(parallel.ids) == list(serial.ids) and list(parallel.reason) == list(serial.reason)
    assert np.array_equal(parallel.matrix, serial.matrix) and np.array_equal(parallel.valid, serial.valid)
