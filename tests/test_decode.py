"""decode: every broken file is a BadImage with a reason, bombs are refused before decoding,
orientation/draft/mode handling give the image a viewer would show."""

from __future__ import annotations

import io
import os
import pickle
import sys
import threading
import time
import warnings

import numpy as np
import pytest
from PIL import Image

from visdex import decode
from visdex.decode import DEFAULT_MAX_PIXELS, DecodedImage, content_hash, decode_image, hash_file, read_and_decode
from visdex.errors import BadImage, ImageTooLarge, MissingDependency

from imagefactory import BOMB_SIZE, real_photos, write_bad_files, write_photo

RED = (255, 0, 0)


@pytest.fixture(scope="module")
def bad(tmp_path_factory):
    return write_bad_files(tmp_path_factory.mktemp("bad"))


def _encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def _px(dec: DecodedImage, xy: tuple[int, int]) -> tuple[int, ...]:
    assert dec.image.mode == "RGB"
    return dec.image.getpixel(xy)


def _close(a, b, tol=12) -> bool:
    return all(abs(int(x) - int(y)) <= tol for x, y in zip(a, b, strict=True))


# -- broken files ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kind, reason",
    [
        ("empty", "empty file"),
        ("truncated_jpeg", "truncated image data"),
        ("truncated_png", "truncated image data"),
        ("random_bytes", "not a recognised image format"),
        ("text_as_jpg", "not a recognised image format"),
        ("corrupt_png", "corrupt image data"),
    ],
)
def test_broken_files_are_bad_images_with_a_reason(bad, kind, reason):
    with pytest.raises(BadImage) as err:
        decode_image(bad[kind])
    assert type(err.value) is BadImage and str(err.value).startswith(reason)
    with pytest.raises(BadImage, match=reason):  # the same from memory
        decode_image(bad[kind].read_bytes())


def test_header_cut_short_is_truncated_not_unknown():
    png = _encode(Image.new("RGB", (64, 64), RED), "PNG")
    for data in (png[:20], png[:40]):
        with pytest.raises(BadImage, match="truncated image data"):
            decode_image(data)


def test_unreadable_paths_are_bad_images(tmp_path):
    with pytest.raises(BadImage, match="cannot read file: No such file"):
        decode_image(tmp_path / "missing.jpg")
    with pytest.raises(BadImage, match="cannot read file"):
        decode_image(tmp_path)  # a directory


@pytest.mark.skipif(sys.platform == "win32" or os.geteuid() == 0, reason="root reads any file")
def test_permission_denied_is_a_bad_image(tmp_path, bad):
    p = tmp_path / "locked.jpg"
    p.write_bytes(bad["mislabelled_png"].read_bytes())
    p.chmod(0)
    with pytest.raises(BadImage, match="Permission denied"):
        decode_image(p)


def _in_thread(fn, seconds: float = 10):
    """fn() in a daemon thread: a regression that blocks fails the test instead of hanging the run."""
    box: dict = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as e:
            box["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(seconds)
    return t.is_alive(), box


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
@pytest.mark.parametrize("call", ["decode_image", "read_and_decode", "hash_file"])
def test_a_fifo_is_refused_at_once_not_waited_on(tmp_path, call):
    # A file swapped for a FIFO after the folder was listed: opening it for reading used to wait for a writer forever.
    fifo = tmp_path / "x.jpg"
    os.mkfifo(fifo)
    fn = {"decode_image": decode_image, "read_and_decode": read_and_decode, "hash_file": hash_file}[call]
    hung, box = _in_thread(lambda: fn(fifo))
    if hung:  # let the stuck open() finish so the thread ends
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    assert not hung, f"{call} blocked on a FIFO"
    expected = OSError if call == "hash_file" else BadImage
    assert isinstance(box.get("error"), expected), box
    assert "not a regular file but a FIFO" in str(box["error"])


def test_special_files_and_links_say_what_they_are(tmp_path):
    with pytest.raises(BadImage, match="not a regular file but a directory"):
        decode_image(tmp_path)
    if os.path.exists("/dev/null"):  # read as an empty file before: the reason was wrong
        with pytest.raises(BadImage, match="not a regular file but a character device"):
            decode_image("/dev/null")
    if hasattr(os, "symlink") and sys.platform != "win32":
        (tmp_path / "broken.jpg").symlink_to(tmp_path / "gone.jpg")
        with pytest.raises(BadImage, match="cannot read file: broken symbolic link"):
            decode_image(tmp_path / "broken.jpg")
        (tmp_path / "loop.jpg").symlink_to(tmp_path / "loop.jpg")
        with pytest.raises(BadImage, match="cannot read file: Too many levels of symbolic links"):
            decode_image(tmp_path / "loop.jpg")


def test_a_file_too_big_for_the_pixel_limit_is_refused_unread(tmp_path):
    p = tmp_path / "huge.jpg"
    with open(p, "wb") as f:  # sparse: no disk, but 100 MB of memory if it were read
        f.truncate(100 << 20)
    rss_before = _max_rss_kb()
    with pytest.raises(ImageTooLarge, match=r"file is 1.05e8 bytes, more than an image within the pixel limit of 1e3"):
        read_and_decode(p, max_pixels=1000)
    if sys.platform == "linux":
        assert _max_rss_kb() - rss_before < 50_000
    with pytest.raises(BadImage, match="not a recognised image format"):
        decode_image(p, max_pixels=None)  # no limit: read, and found to be no image


def test_mislabelled_png_decodes_by_content(bad):
    dec = decode_image(bad["mislabelled_png"])
    assert dec.format == "PNG" and (dec.width, dec.height) == (300, 200) and dec.image.size == (300, 200)


def _max_rss_kb() -> int:
    if sys.platform == "win32":
        return 0
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


# -- pixel limit ----------------------------------------------------------------------------
def test_bomb_is_refused_from_the_header_without_decoding(bad):
    assert bad["bomb"].stat().st_size < 1_000_000
    rss_before = _max_rss_kb()
    t0 = time.perf_counter()
    with pytest.raises(ImageTooLarge) as err:
        decode_image(bad["bomb"])
    assert time.perf_counter() - t0 < 0.5  # decoding 900 Mpx would take seconds
    if sys.platform == "linux":  # ru_maxrss is in kB there; the pixels alone would be 900 MB
        assert _max_rss_kb() - rss_before < 200_000
    w, h = BOMB_SIZE
    assert f"{w}x{h}" in str(err.value) and "VISDEX_MAX_PIXELS" in str(err.value)
    assert isinstance(err.value, BadImage)  # ingest records it like any other bad file


def test_max_pixels_is_per_call(bad):
    photo = bad["exif_rotated"]  # 320x200 = 64000 pixels
    with pytest.raises(ImageTooLarge, match="320x200 = 6.4e4 pixels, which exceeds the limit of 6.4e4"):
        decode_image(photo, max_pixels=63_999)
    assert decode_image(photo, max_pixels=64_000).width == 200
    assert decode_image(photo, max_pixels=None).width == 200
    assert DEFAULT_MAX_PIXELS >= 100_000_000


def test_pillows_global_limit_is_not_the_authority(bad, monkeypatch):
    # Pillow would refuse anything over 2 * 100 pixels and warn above 100; our limit decides.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dec = decode_image(bad["exif_rotated"])
        assert dec.image.size == (200, 320)
        with pytest.raises(ImageTooLarge, match="exceeds the limit of 1e3"):
            decode_image(bad["exif_rotated"], max_pixels=1000)
    assert Image.MAX_IMAGE_PIXELS == 100  # restored after the detour


def test_pillows_bomb_warning_does_not_escape(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 12x12 = 144: Pillow warns, does not refuse
    data = _encode(Image.new("RGB", (12, 12), RED), "PNG")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert decode_image(data).image.size == (12, 12)


# -- orientation ----------------------------------------------------------------------------
# Where the stored top-left pixel ends up on screen, per EXIF orientation (TIFF 6.0 table).
CORNER = {1: "tl", 2: "tr", 3: "br", 4: "bl", 5: "tl", 6: "tr", 7: "br", 8: "bl"}


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied(tmp_path, orientation):
    arr = np.full((60, 90, 3), 128, np.uint8)  # stored landscape: 90 wide, 60 high
    arr[:16, :16] = RED
    dec = decode_image(write_photo(tmp_path, "o", arr, quality=95, exif_orientation=orientation))
    portrait = orientation >= 5
    assert (dec.width, dec.height) == ((60, 90) if portrait else (90, 60))
    assert dec.image.size == (dec.width, dec.height)
    w, h = dec.image.size
    corners = {"tl": (4, 4), "tr": (w - 5, 4), "bl": (4, h - 5), "br": (w - 5, h - 5)}
    for name, xy in corners.items():
        assert _close(_px(dec, xy), RED if name == CORNER[orientation] else (128, 128, 128), tol=40), name


def test_exif_rotated_sample_shows_portrait_with_marker_top_right(bad):
    dec = decode_image(bad["exif_rotated"])
    assert (dec.width, dec.height) == (200, 320) and dec.image.size == (200, 320)
    assert _close(_px(dec, (190, 10)), RED, tol=40)
    assert not _close(_px(dec, (10, 10)), RED, tol=80)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_gives_the_pixels_of_a_physically_rotated_copy(orientation):
    from badfiles import ORIENTED, upright_image

    upright = upright_image()  # 96x64 with a red corner; ORIENTED makes the stored pixels per the EXIF spec
    stored = np.ascontiguousarray(ORIENTED[orientation](upright))
    exif = Image.Exif()
    exif[274] = orientation
    png = decode_image(_encode(Image.fromarray(stored), "PNG", exif=exif.tobytes()))
    assert np.array_equal(np.asarray(png.image), upright)  # lossless: exactly the upright pixels
    assert (png.width, png.height) == (96, 64)
    # JPEG, decoded at reduced scale: the same pixels as the untagged file's, turned upright by numpy
    big = np.asarray(Image.fromarray(stored).resize((stored.shape[1] * 8, stored.shape[0] * 8)))
    tagged = _encode(Image.fromarray(big), "JPEG", quality=90, exif=exif.tobytes())
    untagged = _encode(Image.fromarray(big), "JPEG", quality=90)
    got = np.asarray(decode_image(tagged, draft_size=64).image)
    raw = np.asarray(decode_image(untagged, draft_size=64).image)
    undo = ORIENTED[{6: 8, 8: 6}.get(orientation, orientation)]  # the others undo themselves
    assert np.array_equal(got, undo(raw)) and (got.shape[1], got.shape[0]) == (96, 64)


# -- draft decoding -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def big_jpeg() -> bytes:
    coffee = Image.fromarray(real_photos()["coffee"]).resize((3000, 2000), Image.Resampling.BILINEAR)
    return _encode(coffee, "JPEG", quality=85)


@pytest.mark.parametrize("draft", [100, 224, 250, 384, 500, 999, 1001, 2000, 5000])
def test_jpeg_draft_keeps_short_side_at_least_draft_size(big_jpeg, draft):
    dec = decode_image(big_jpeg, draft_size=draft)
    assert (dec.width, dec.height) == (3000, 2000)  # the file's size, not the decoded one
    short = min(dec.image.size)
    assert min(draft, 2000) <= short < max(2 * draft, 2000 + 1)
    assert dec.image.size[0] / dec.image.size[1] == pytest.approx(1.5, abs=0.01)


def test_jpeg_draft_224_decodes_small(big_jpeg):
    dec = decode_image(big_jpeg, draft_size=224)
    assert 224 <= min(dec.image.size) <= 447 and dec.format == "JPEG"
    assert _close(np.asarray(dec.image).mean(axis=(0, 1)), real_photos()["coffee"].mean(axis=(0, 1)), tol=6)


def test_jpeg_draft_lets_libjpeg_decode_at_reduced_scale(big_jpeg, monkeypatch):
    from PIL import JpegImagePlugin

    scaled = []
    real_draft = JpegImagePlugin.JpegImageFile.draft

    def spy(self, mode, size):
        result = real_draft(self, mode, size)
        scaled.append(self.size)
        return result

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    decode_image(big_jpeg, draft_size=224)
    assert scaled == [(375, 250)]  # 1/8 scale straight out of the DCT, not a full decode + resize


def test_mpo_from_phone_cameras_is_a_jpeg():
    first, second = Image.new("RGB", (64, 48), RED), Image.new("RGB", (64, 48), (0, 0, 255))
    data = _encode(first, "MPO", save_all=True, append_images=[second])
    assert Image.open(io.BytesIO(data)).format == "MPO"
    dec = decode_image(data, draft_size=16)
    assert dec.format == "JPEG" and (dec.width, dec.height) == (64, 48) and min(dec.image.size) >= 16
    assert _close(_px(dec, (5, 5)), RED, tol=10)


def test_draft_with_rotation_reports_the_shown_size(tmp_path):
    arr = np.asarray(Image.fromarray(real_photos()["rocket"]).resize((1800, 1200)))
    dec = decode_image(write_photo(tmp_path, "r", arr, exif_orientation=8), draft_size=224)
    assert (dec.width, dec.height) == (1200, 1800)
    w, h = dec.image.size
    assert h > w >= 224


def test_non_jpeg_is_reduced_when_much_larger_than_draft():
    png = _encode(Image.fromarray(real_photos()["astronaut"]).resize((1200, 900)), "PNG")
    dec = decode_image(png, draft_size=224)
    assert (dec.width, dec.height) == (1200, 900) and 224 <= min(dec.image.size) < 448
    assert decode_image(png, draft_size=500).image.size == (1200, 900)  # not over 2x: left alone
    assert decode_image(png).image.size == (1200, 900)


# -- extreme aspect ratios ------------------------------------------------------------------
def _strip(w: int, h: int) -> bytes:
    arr = np.zeros((h, w, 3), np.uint8)
    arr[..., 2] = 255  # blue, with a red band across the middle
    if w > h:
        arr[:, w // 2 - 2 : w // 2 + 2] = RED
    else:
        arr[h // 2 - 2 : h // 2 + 2] = RED
    return _encode(Image.fromarray(arr), "PNG", optimize=True)


STRIPS = [((1, 20000), (1, 32)), ((1, 100000), (1, 32)), ((20000, 10), (320, 10)), ((3000, 100), (3000, 100)),
          ((10, 320), (10, 320)), ((10, 321), (10, 320))]  # fmt: skip


@pytest.mark.parametrize("size, kept", STRIPS)
def test_extreme_aspect_ratios_keep_their_centre(size, kept):
    data = _strip(*size)
    assert len(data) < 2000  # a few hundred bytes...
    dec = decode_image(data, draft_size=224)
    assert (dec.width, dec.height) == size  # the file's size is reported
    assert dec.image.size == kept  # ...that a model's resize would have blown up to gigabytes
    assert max(kept) <= decode.MAX_ASPECT * min(kept)
    w, h = dec.image.size
    assert _px(dec, (w // 2, h // 2)) == RED  # the centre is what is kept
    assert decode_image(data, max_aspect=None).image.size == size


def test_aspect_crop_comes_before_the_exif_turn():
    stored = Image.open(io.BytesIO(_strip(1000, 10)))  # wide as stored, tall as shown
    exif = Image.Exif()
    exif[274] = 6
    dec = decode_image(_encode(stored, "PNG", exif=exif.tobytes()))
    assert (dec.width, dec.height) == (10, 1000) and dec.image.size == (10, 320)


def test_a_1x100000_png_embeds_in_little_memory():
    from visdex.models.base import HALF, Preprocess

    pre = Preprocess(size=224, resize_to=256, mode="shortest", mean=HALF, std=HALF)  # as effnet-lite0
    rss_before = _max_rss_kb()
    t0 = time.perf_counter()
    dec = decode_image(_strip(1, 100000), draft_size=pre.resize_to)
    pixels = pre.to_uint8(dec.image)  # uncropped, this resize alone needs 256 x 25.6e6 x 3 bytes = 20 GB
    assert pixels.shape == (224, 224, 3) and tuple(pixels[112, 112]) == RED
    assert time.perf_counter() - t0 < 2
    if sys.platform == "linux":
        assert _max_rss_kb() - rss_before < 100_000


# -- formats and modes ----------------------------------------------------------------------
def test_heic_decodes_with_size_and_colours(bad):
    dec = decode_image(bad["heic"])
    assert dec.format in ("HEIF", "HEIC") and (dec.width, dec.height) == (300, 200) and dec.image.mode == "RGB"
    expected = real_photos()["coffee"][::2, ::2].mean(axis=(0, 1))
    assert _close(np.asarray(dec.image).mean(axis=(0, 1)), expected, tol=8)


def test_avif_decodes(tmp_path):
    arr = np.zeros((64, 96, 3), np.uint8)
    arr[:, :48] = RED
    try:
        path = write_photo(tmp_path, "x", arr, fmt="AVIF", quality=90)
    except (KeyError, OSError, ValueError) as e:
        pytest.skip(f"no AVIF encoder here: {e}")
    dec = decode_image(path)
    assert (dec.width, dec.height) == (96, 64) and _close(_px(dec, (10, 30)), RED, tol=30)


def test_heic_without_pillow_heif_names_the_extra(bad, monkeypatch):
    monkeypatch.setitem(sys.modules, "pillow_heif", None)  # makes `import pillow_heif` fail
    monkeypatch.setattr(Image, "ID", [i for i in Image.ID if i != "HEIF"])
    decode._heif_opener_registered.cache_clear()
    try:
        with pytest.raises(MissingDependency, match=r"visdex\[heif\]"):
            decode_image(bad["heic"])
    finally:
        decode._heif_opener_registered.cache_clear()


def _frames(colours) -> list[Image.Image]:
    return [Image.new("RGB", (40, 30), c) for c in colours]


@pytest.mark.parametrize("fmt", ["GIF", "WEBP"])
def test_animation_gives_first_frame(fmt):
    first, *rest = _frames([RED, (0, 255, 0), (0, 0, 255)])
    data = _encode(
        first,
        fmt,
        save_all=True,
        append_images=rest,
        duration=100,
        loop=0,
        **({"lossless": True} if fmt == "WEBP" else {}),
    )
    assert Image.open(io.BytesIO(data)).n_frames == 3
    dec = decode_image(data)
    assert dec.format == fmt and dec.image.size == (40, 30) and _close(_px(dec, (20, 15)), RED, tol=2)


def test_alpha_is_composited_on_white():
    rgba = np.zeros((10, 30, 4), np.uint8)
    rgba[:, 10:20] = (255, 0, 0, 255)  # opaque red
    rgba[:, 20:] = (0, 0, 0, 128)  # half-transparent black
    dec = decode_image(_encode(Image.fromarray(rgba, "RGBA"), "PNG"))
    assert _px(dec, (5, 5)) == (255, 255, 255)
    assert _px(dec, (15, 5)) == RED
    assert _close(_px(dec, (25, 5)), (127, 127, 127), tol=2)
    la = Image.fromarray(rgba[..., [0, 3]].copy(), "LA")
    assert _px(decode_image(_encode(la, "PNG")), (5, 5)) == (255, 255, 255)


def test_palette_with_transparency_is_white_where_transparent():
    p = Image.new("P", (20, 10), 0)
    p.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    p.paste(1, (10, 0, 20, 10))
    dec = decode_image(_encode(p, "PNG", transparency=0))
    assert _px(dec, (5, 5)) == (255, 255, 255) and _px(dec, (15, 5)) == RED
    gif = decode_image(_encode(p, "GIF", transparency=0))
    assert _px(gif, (5, 5)) == (255, 255, 255) and _px(gif, (15, 5)) == RED


def test_16_bit_greyscale_is_scaled_not_clipped():
    ramp = np.array([[0, 257 * 64, 32768, 65535]], np.uint16)
    dec = decode_image(_encode(Image.fromarray(ramp), "PNG"))
    assert [_px(dec, (x, 0))[0] for x in range(4)] == [0, 64, 128, 255]


def test_float_tiff_in_unit_range_is_scaled():
    arr = np.array([[0.0, 0.5, 1.0]], np.float32)
    dec = decode_image(_encode(Image.fromarray(arr), "TIFF"))
    assert [_px(dec, (x, 0))[0] for x in range(3)] == [0, 128, 255]


@pytest.mark.parametrize("mode", ["L", "1", "CMYK", "I;16"])
def test_other_modes_become_rgb(mode):
    arr = real_photos()["chelsea"]
    img = Image.fromarray(arr)
    img = img.convert(mode) if mode != "I;16" else Image.fromarray(np.asarray(img.convert("L")).astype(np.uint16) * 257)
    data = _encode(img, "JPEG" if mode == "CMYK" else "TIFF")
    dec = decode_image(data)
    assert dec.image.mode == "RGB" and dec.image.size == (451, 300)
    if mode in ("CMYK", "I;16"):
        tol = 10 if mode == "CMYK" else 1
        target = arr if mode == "CMYK" else np.asarray(Image.fromarray(arr).convert("L").convert("RGB"))
        assert _close(np.asarray(dec.image).mean(axis=(0, 1)), target.mean(axis=(0, 1)), tol=tol)


@pytest.mark.parametrize("fmt", ["PNG", "TIFF", "BMP", "WEBP", "JPEG"])
def test_common_formats(tmp_path, fmt):
    arr = real_photos()["astronaut"][::2, ::2]
    dec = decode_image(write_photo(tmp_path, "a", arr, fmt=fmt))
    assert dec.format == fmt and (dec.width, dec.height) == (256, 256) and dec.image.size == (256, 256)
    assert _close(np.asarray(dec.image).mean(axis=(0, 1)), arr.mean(axis=(0, 1)), tol=3)


# -- metadata -------------------------------------------------------------------------------
def test_exif_date_and_camera(tmp_path):
    arr = real_photos()["coffee"][::4, ::4]
    p = write_photo(tmp_path, "a", arr, exif_datetime="2021:07:04 12:34:56", make="Canon ", model="Canon EOS R5\x00")
    dec = decode_image(p)
    assert dec.taken_at == "2021-07-04T12:34:56" and dec.camera == "Canon EOS R5"
    dec = decode_image(write_photo(tmp_path, "b", arr, make="NIKON CORPORATION", model="NIKON D750"))
    assert dec.camera == "NIKON D750" and dec.taken_at is None
    assert decode_image(write_photo(tmp_path, "c", arr, make="Apple", model="iPhone 12")).camera == "Apple iPhone 12"
    assert decode_image(write_photo(tmp_path, "d", arr, make="SONY")).camera == "SONY"
    plain = decode_image(write_photo(tmp_path, "e", arr))
    assert plain.taken_at is None and plain.camera is None


@pytest.mark.parametrize("raw", ["0000:00:00 00:00:00", "    :  :     :  :  ", "yesterday", "2021:13:45 99:00:00"])
def test_garbled_exif_date_is_none(tmp_path, raw):
    p = write_photo(tmp_path, "g", real_photos()["coffee"][::4, ::4], exif_datetime=raw)
    assert decode_image(p).taken_at is None


@pytest.mark.parametrize("blob", [b"Exif\x00\x00" + b"\xde\xad" * 40, b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\xff\xff"])
def test_garbled_exif_costs_only_the_metadata(blob):
    data = _encode(Image.new("RGB", (30, 20), RED), "JPEG", exif=blob)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dec = decode_image(data)
    assert dec.image.size == (30, 20) and dec.taken_at is None and dec.camera is None


def test_exif_datetime_in_ifd0_is_the_fallback(tmp_path):
    exif = Image.Exif()
    exif[306] = "2019:01:02 03:04:05"
    data = _encode(Image.new("RGB", (8, 8)), "JPEG", exif=exif.tobytes())
    assert decode_image(data).taken_at == "2019-01-02T03:04:05"


# -- hashing and workers --------------------------------------------------------------------
def test_hash_file_matches_content_hash_across_chunks(tmp_path):
    data = np.random.default_rng(1).bytes(int(2.5 * (1 << 20)))
    p = tmp_path / "blob.bin"
    p.write_bytes(data)
    digest = content_hash(data)
    assert hash_file(p) == digest == hash_file(str(p)) and len(digest) == 32
    assert content_hash(data[:-1]) != digest
    assert content_hash(b"") == "cae66941d9efbd404e4d88758ea67670"


def test_read_and_decode_hashes_what_it_decodes(bad):
    p = bad["exif_rotated"]
    digest, dec = read_and_decode(p, draft_size=100)
    assert digest == hash_file(p) and (dec.width, dec.height) == (200, 320)
    with pytest.raises(BadImage, match="truncated"):
        read_and_decode(bad["truncated_jpeg"])


def test_decode_is_picklable_for_worker_processes(bad):
    dec = pickle.loads(pickle.dumps(decode_image(bad["heic"])))
    assert dec.image.size == (300, 200) and pickle.loads(pickle.dumps(read_and_decode)) is read_and_decode
