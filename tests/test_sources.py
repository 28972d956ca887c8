"""Image sources and decoding: folders, WebDataset shards, path lists, demo sets, and the broken
or unusual files real collections hold, each checked on the pixels that come out."""

from __future__ import annotations

import hashlib
import io
import json
import re
import struct
import tarfile
import tracemalloc
import urllib.parse
import zlib

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from clipatlas.errors import UserError
from clipatlas.sources import (
    ImageDecodeError,
    available_demo_sets,
    decode_image,
    iter_items,
    iter_source,
    open_uri,
    read_image,
    with_labels,
)
from clipatlas.sources.demo import emoji_groups


# -- helpers ---------------------------------------------------------------------------------------
def encode(image: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def solid(color, size=(6, 4)) -> Image.Image:
    return Image.new("RGB", size, color)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png(width=20_000, height=20_000) -> bytes:
    """A valid PNG header (IHDR with a correct CRC) claiming a huge RGB image, and no pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IEND", b"")


def noisy_jpeg(seed=0, size=64) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    return encode(Image.fromarray(pixels), "JPEG", quality=90)


def reason_of(data: bytes, **kwargs) -> str:
    with pytest.raises(ImageDecodeError) as info:
        decode_image(data, **kwargs)
    return info.value.reason


def pixels(image: Image.Image) -> np.ndarray:
    assert image.mode == "RGB"
    return np.asarray(image).astype(int)


# -- folders ---------------------------------------------------------------------------------------
def make_folder(root):
    """A small collection: nested folders, hidden files, sidecars, a mislabelled PNG, a fake JPEG."""
    (root / "b_sub" / "deeper").mkdir(parents=True)
    (root / "a_sub").mkdir()
    (root / ".hidden_dir").mkdir()
    (root / "z.png").write_bytes(encode(solid((255, 0, 0))))
    (root / "z.txt").write_text("\n  a red square  \nune traduction\n")
    (root / "a_sub" / "one.jpg").write_bytes(encode(solid((0, 255, 0)), "JPEG"))
    (root / "a_sub" / "one.caption").write_text("a green square")
    (root / "b_sub" / "deeper" / "mislabelled.dat").write_bytes(encode(solid((0, 0, 255), (3, 5))))
    (root / "b_sub" / "fake.jpg").write_text("this is not a picture\n")
    (root / "b_sub" / "notes.json").write_text("{}")
    (root / "m.png").write_bytes(encode(solid((9, 9, 9))))
    (root / ".DS_Store").write_bytes(b"\0\0")
    (root / ".hidden_dir" / "secret.png").write_bytes(encode(solid((1, 1, 1))))
    return root


def test_folder_is_recursive_sorted_and_skips_hidden_files_and_sidecars(tmp_path):
    root = make_folder(tmp_path / "photos")
    items = list(iter_source(str(root)))
    relative = [str(item.uri)[len(str(root)) + 1 :] for item in items]
    # a folder's own files (sorted), then its subfolders (sorted), depth first
    assert relative == ["m.png", "z.png", "a_sub/one.jpg", "b_sub/fake.jpg", "b_sub/deeper/mislabelled.dat"]
    assert {item.source for item in items} == {str(root)}
    # captions come from the .txt / .caption sidecar, first non-empty line, stripped
    captions = {rel: item.caption for rel, item in zip(relative, items)}
    assert captions == {
        "a_sub/one.jpg": "a green square",
        "b_sub/deeper/mislabelled.dat": None,
        "b_sub/fake.jpg": None,
        "m.png": None,
        "z.png": "a red square",
    }
    # listing again gives the very same items (resumes rely on it)
    assert list(iter_source(str(root))) == items


def test_content_decides_what_is_an_image_not_the_file_name(tmp_path):
    root = make_folder(tmp_path / "photos")
    by_name = {item.uri.rsplit("/", 1)[-1]: item for item in iter_source(str(root))}
    blue = read_image(by_name["mislabelled.dat"].uri)
    assert blue.image.size == (3, 5)
    assert (pixels(blue.image) == [0, 0, 255]).all()
    raw = (root / "b_sub" / "deeper" / "mislabelled.dat").read_bytes()
    assert blue.sha256 == hashlib.sha256(raw).hexdigest()
    with pytest.raises(ImageDecodeError) as info:
        read_image(by_name["fake.jpg"].uri)
    assert info.value.reason == "not an image"
    green = pixels(open_uri(by_name["one.jpg"].uri))
    assert np.abs(green - [0, 255, 0]).max() <= 3  # JPEG rounding only


def test_image_ids_are_stable_across_locations_and_url_safe(tmp_path, monkeypatch):
    first = make_folder(tmp_path / "machine_a" / "photos")
    second = make_folder(tmp_path / "elsewhere" / "deep" / "down" / "photos")
    ids_a = [item.image_id for item in iter_source(str(first))]
    ids_b = [item.image_id for item in iter_source(str(second))]
    assert ids_a == ids_b and len(set(ids_a)) == len(ids_a)
    # a relative spec naming the same folder gives the same ids
    monkeypatch.chdir(tmp_path / "machine_a")
    assert [item.image_id for item in iter_source("photos")] == ids_a
    # awkward names still give URL-safe, distinct ids
    awkward = tmp_path / "awkward"
    awkward.mkdir()
    names = ["a b.png", "a_b.png", "a#b?.png", "ÄÖÜ é.png", "%20.png", "x" * 200 + ".png", "A B.png"]
    for name in names:
        (awkward / name).write_bytes(encode(solid((5, 5, 5))))
    ids = [item.image_id for item in iter_source(str(awkward))]
    assert len(set(ids)) == len(names)
    for image_id in ids + ids_a:
        assert re.fullmatch(r"[a-z0-9-]+", image_id), image_id
        assert urllib.parse.quote(image_id, safe="") == image_id
        assert len(image_id) <= 64


def test_missing_source_and_single_file_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        list(iter_items([str(tmp_path / "nope")]))
    single = tmp_path / "one.png"
    single.write_bytes(encode(solid((0, 0, 0))))
    with pytest.raises(UserError, match="single file"):
        list(iter_items([str(single)]))


def test_iter_items_limit_spans_sources(tmp_path):
    a = make_folder(tmp_path / "a")
    b = make_folder(tmp_path / "b")
    items = list(iter_items([str(a), str(b)], limit=7))
    assert len(items) == 7
    assert [i.source for i in items] == [str(a)] * 5 + [str(b)] * 2
    assert [i.uri for i in items[5:]] == [str(b / "m.png"), str(b / "z.png")]


# -- WebDataset shards -------------------------------------------------------------------------------
def add_member(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    archive.addfile(info, io.BytesIO(data))


def test_webdataset_tar_is_read_in_place(tmp_path):
    red = np.zeros((5, 7, 3), np.uint8)
    red[..., 0] = 200
    jpg = encode(Image.fromarray(red), "JPEG", quality=95)
    png = encode(Image.fromarray(np.arange(60, dtype=np.uint8).reshape(4, 5, 3)))
    shard = tmp_path / "shard-000.tar"
    with tarfile.open(shard, "w") as archive:
        add_member(archive, "000001.jpg", jpg)
        add_member(archive, "000001.txt", b"a red rectangle\nsecond line\n")
        add_member(archive, "000002.png", png)
        add_member(archive, "000002.json", json.dumps({"caption": "a gradient", "width": 5}).encode())
        add_member(archive, "000002.cls", b"3\n")  # the WebDataset class member
        add_member(archive, "000003.cls", b"7")  # no image member: not an item
        add_member(archive, "sub/000004.png", png)  # keys may hold folders
    before = sorted(p.name for p in tmp_path.iterdir())
    items = list(iter_source(str(shard)))
    assert [item.caption for item in items] == ["a red rectangle", "a gradient", None]
    assert [item.label for item in items] == [None, "3", None]
    assert [item.uri for item in items] == [
        f"tar://{shard}#000001.jpg",
        f"tar://{shard}#000002.png",
        f"tar://{shard}#sub/000004.png",
    ]
    assert len({item.image_id for item in items}) == 3
    first = read_image(items[0].uri)
    assert first.sha256 == hashlib.sha256(jpg).hexdigest()
    assert first.image.size == (7, 5) and np.abs(pixels(first.image) - [200, 0, 0]).max() <= 4
    np.testing.assert_array_equal(np.asarray(open_uri(items[1].uri)), np.arange(60).reshape(4, 5, 3))
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing was extracted
    with pytest.raises(ImageDecodeError) as info:
        read_image(f"tar://{shard}#missing.jpg")
    assert info.value.reason == "file not found"


def test_compressed_tar_is_refused_with_a_hint(tmp_path):
    shard = tmp_path / "shard.tar"
    with tarfile.open(shard, "w:gz") as archive:
        add_member(archive, "1.png", encode(solid((0, 0, 0))))
    with pytest.raises(UserError, match="decompress"):
        list(iter_source(str(shard)))


# -- lists of paths ------------------------------------------------------------------------------------
def test_txt_list_with_relative_paths_comments_and_a_missing_file(tmp_path):
    images = tmp_path / "imgs"
    images.mkdir()
    (images / "a.png").write_bytes(encode(solid((10, 20, 30))))
    (images / "a.txt").write_text("caption beside a")
    outside = tmp_path / "outside.png"
    outside.write_bytes(encode(solid((40, 50, 60))))
    listing = images / "list.txt"
    listing.write_text(
        f"# my images\n\n  a.png  \n{outside}\n   # indented comment\nmissing.png\nhttps://example.com/x.jpg\n"
    )
    items = list(iter_source(str(listing)))
    assert [item.uri for item in items] == [
        str(images / "a.png"),
        str(outside),
        str(images / "missing.png"),
        "https://example.com/x.jpg",
    ]
    assert items[0].caption == "caption beside a"
    assert (pixels(open_uri(items[1].uri)) == [40, 50, 60]).all()
    reasons = []
    for item in items[2:]:
        with pytest.raises(ImageDecodeError) as info:
            read_image(item.uri)
        reasons.append(info.value.reason)
    assert reasons == ["file not found", "remote URL not fetched"]
    # the list travels with its images: the same relative list elsewhere gives the same ids
    moved = tmp_path / "moved"
    moved.mkdir()
    (moved / "list.txt").write_text(listing.read_text())
    assert [i.image_id for i in iter_source(str(moved / "list.txt"))][0] == items[0].image_id


def test_parquet_list_with_path_and_caption_columns(tmp_path):
    (tmp_path / "p.png").write_bytes(encode(solid((1, 2, 3))))
    (tmp_path / "q.png").write_bytes(encode(solid((4, 5, 6))))
    table = pa.table(
        {
            "path": ["p.png", str(tmp_path / "q.png"), "gone.png"],
            "caption": ["first", None, "third"],
            "label": [2, None, 5],
            "extra": [1, 2, 3],
        }
    )
    pq.write_table(table, tmp_path / "list.parquet")
    items = list(iter_source(str(tmp_path / "list.parquet")))
    assert [item.uri for item in items] == [
        str(tmp_path / "p.png"),
        str(tmp_path / "q.png"),
        str(tmp_path / "gone.png"),
    ]
    assert [item.caption for item in items] == ["first", None, "third"]
    assert [item.label for item in items] == ["2", None, "5"]
    assert (pixels(open_uri(items[1].uri)) == [4, 5, 6]).all()
    with pytest.raises(ImageDecodeError, match="file not found"):
        read_image(items[2].uri)
    pq.write_table(pa.table({"name": ["p.png"]}), tmp_path / "bad.parquet")
    with pytest.raises(UserError, match="no path column"):
        list(iter_source(str(tmp_path / "bad.parquet")))


# -- decoding ----------------------------------------------------------------------------------------------
def test_palette_png_transparency_becomes_white():
    image = Image.new("P", (4, 2))
    image.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)  # index 0 red (transparent), 1 blue
    image.putdata([0, 1, 0, 1, 1, 1, 0, 0])
    out = pixels(decode_image(encode(image, transparency=0)))
    expected = np.where(np.array([0, 1, 0, 1, 1, 1, 0, 0]).reshape(2, 4, 1) == 0, [255, 255, 255], [0, 0, 255])
    np.testing.assert_array_equal(out, expected)
    # a palette without transparency keeps its colours
    opaque = pixels(decode_image(encode(image)))
    assert (opaque[0, 0] == [255, 0, 0]).all() and (opaque[0, 1] == [0, 0, 255]).all()


def test_alpha_is_composited_on_white():
    la = Image.new("LA", (3, 1))
    la.putdata([(0, 0), (0, 128), (100, 255)])
    out = pixels(decode_image(encode(la)))
    np.testing.assert_array_equal(out[0, 0], [255, 255, 255])
    assert np.abs(out[0, 1] - 127).max() <= 1  # black at half opacity over white
    np.testing.assert_array_equal(out[0, 2], [100, 100, 100])
    rgba = Image.new("RGBA", (3, 1))
    rgba.putdata([(255, 0, 0, 0), (255, 0, 0, 255), (0, 0, 0, 64)])
    out = pixels(decode_image(encode(rgba)))
    np.testing.assert_array_equal(out[0, :2], [[255, 255, 255], [255, 0, 0]])
    assert np.abs(out[0, 2] - 191).max() <= 1


def test_cmyk_jpeg_becomes_rgb():
    cmyk = Image.new("CMYK", (8, 8), (255, 0, 0, 0))  # pure cyan
    data = encode(cmyk, "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    out = pixels(decode_image(data))
    assert np.abs(out - [0, 255, 255]).max() <= 3


def test_16_bit_grayscale_is_scaled_not_clipped():
    values = np.array([[0, 257, 32768, 65535]], dtype=np.uint16)
    data = encode(Image.fromarray(values))
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    out = pixels(decode_image(data))
    assert (out == out[..., :1]).all()  # gray
    gray = out[0, :, 0]
    assert gray[0] == 0 and gray[1] == 1 and gray[3] == 255
    assert abs(gray[2] - 128) <= 1  # not clipped to 255


def test_exif_orientation_is_applied():
    stored = Image.new("RGB", (40, 20), (0, 0, 255))
    stored.paste((255, 0, 0), (0, 0, 8, 8))  # red mark in the stored top-left corner
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    out = decode_image(encode(stored, "JPEG", exif=exif, quality=95))
    assert out.size == (20, 40)
    array = pixels(out)
    red, blue = np.array([255, 0, 0]), np.array([0, 0, 255])
    assert np.abs(array[2, -3] - red).max() <= 8  # the mark is now top-right
    for corner in (array[2, 2], array[-3, 2], array[-3, -3]):
        assert np.abs(corner - blue).max() <= 8


def test_pixel_cap_rejects_bombs_without_allocating():
    data = bomb_png()
    assert len(data) < 100
    tracemalloc.start()
    try:
        assert reason_of(data) == "too many pixels"
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 5_000_000  # a 20000x20000 RGB image would be 1.2 GB
    # the cap is ours, below Pillow's own bomb limit
    assert reason_of(bomb_png(9000, 9000)) == "too many pixels"
    assert reason_of(encode(solid((0, 0, 0), (10, 10))), max_pixels=99) == "too many pixels"
    assert decode_image(encode(solid((0, 0, 0), (10, 10))), max_pixels=100).size == (10, 10)


def test_empty_truncated_and_non_image_bytes():
    assert reason_of(b"") == "empty file"
    jpeg = noisy_jpeg()
    assert decode_image(jpeg).size == (64, 64)
    assert reason_of(jpeg[: len(jpeg) // 2]) == "truncated or corrupt image"
    assert reason_of(jpeg[:200]) == "truncated or corrupt image"
    assert reason_of(b"GIF89a but then nothing useful") in ("truncated or corrupt image", "not an image")
    assert reason_of(b"plain text, no magic number") == "not an image"


def test_unreadable_paths(tmp_path):
    with pytest.raises(ImageDecodeError) as info:
        read_image(str(tmp_path))
    assert info.value.reason == "not a file"
    with pytest.raises(ImageDecodeError) as info:
        read_image(str(tmp_path / "absent.png"))
    assert info.value.reason == "file not found"


# -- demo sets --------------------------------------------------------------------------------------------
def demo_items(name):
    if name not in available_demo_sets():
        pytest.skip(f"demo:{name} is not installed on this machine")
    return list(iter_source(f"demo:{name}"))


def test_demo_samples():
    items = demo_items("samples")
    assert 0 < len(items) <= 11 and all(item.caption for item in items)
    image = open_uri(items[0].uri)
    assert image.mode == "RGB" and min(image.size) > 100


def test_demo_tuxpaint_is_captioned_and_labelled_by_category():
    from clipatlas.sources.demo import TUXPAINT_DIR

    items = demo_items("tuxpaint")
    assert len(items) > 100
    captioned = [item for item in items if item.caption]
    assert len(captioned) > 0.9 * len(items)
    categories = {p.name for p in TUXPAINT_DIR.iterdir() if p.is_dir()}
    assert {item.label for item in items} <= categories and len({item.label for item in items}) > 5
    coin = next(item for item in items if "/symbols/money/" in item.uri)
    assert coin.label == "symbols"  # the top-level category, not the innermost folder
    assert len({item.image_id for item in items}) == len(items)
    image = open_uri(items[0].uri)
    assert image.mode == "RGB"
    assert (pixels(image) == 255).all(axis=2).any()  # transparent surroundings became white


def test_demo_emoji_renders():
    items = demo_items("emoji")
    assert len(items) > 500 and all(item.caption for item in items)
    cat = next((item for item in items if item.caption == "cat face"), items[0])
    image = open_uri(cat.uri)
    assert image.mode == "RGB" and image.size == (160, 160)
    array = pixels(image)
    assert (array < 250).any(axis=2).mean() > 0.1  # a real drawing, not a white square
    assert (array[0, 0] == 255).all()  # on a white background


def test_demo_emoji_are_labelled_with_their_unicode_group():
    items = demo_items("emoji")
    if not emoji_groups():
        pytest.skip("Debian unicode-data (emoji-test.txt) is not installed")
    by_caption = {item.caption: item.label for item in items}
    assert by_caption["cat face"] == "Animals & Nature"
    assert by_caption["grinning face"] == "Smileys & Emotion"
    assert sum(label is not None for label in by_caption.values()) > 0.9 * len(items)


def test_emoji_groups_parse_the_unicode_test_file(tmp_path):
    listing = tmp_path / "emoji-test.txt"
    listing.write_text(
        "# group: Smileys & Emotion\n# subgroup: face-smiling\n"
        "1F600 ; fully-qualified # 😀 E1.0 grinning face\n"
        "# group: Symbols\n"
        "2764 FE0F ; fully-qualified # ❤️ E0.6 red heart\n"
        "2764 ; unqualified # ❤ E0.6 red heart\n"
        "1F469 200D 1F4BB ; fully-qualified # 👩‍💻 woman technologist\n"
    )
    assert emoji_groups.__wrapped__(listing) == {0x1F600: "Smileys & Emotion", 0x2764: "Symbols"}
    assert emoji_groups.__wrapped__(tmp_path / "missing.txt") == {}


# -- labels from folders and CSV files ---------------------------------------------------------------
def test_labels_from_folder_and_cls_sidecars(tmp_path):
    for path in ("cats/a.png", "cats/b.png", "dogs/deeper/c.png"):
        (tmp_path / "src" / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "src" / path).write_bytes(encode(solid((1, 2, 3))))
    (tmp_path / "src" / "cats" / "b.cls").write_text("kitten\n")
    items = list(iter_source(str(tmp_path / "src")))
    assert [item.label for item in items] == [None, "kitten", None]  # the .cls sidecar
    labelled = with_labels(items, "folder")
    assert [item.label for item in labelled] == ["cats", "cats", "deeper"]  # the folder replaces it
    assert with_labels(items, None) == items


def test_labels_from_a_csv_by_relative_or_absolute_path(tmp_path):
    for name in ("a.png", "b.png", "c.png"):
        (tmp_path / "imgs" / name).parent.mkdir(exist_ok=True)
        (tmp_path / "imgs" / name).write_bytes(encode(solid((1, 2, 3))))
    items = list(iter_source(str(tmp_path / "imgs")))
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text(f"path,label\nimgs/a.png,cat\n{tmp_path / 'imgs' / 'c.png'},dog\nimgs/nope.png,x\n")
    assert [item.label for item in with_labels(items, str(csv_path))] == ["cat", None, "dog"]
    bad = tmp_path / "bad.csv"
    bad.write_text("file,class\na.png,cat\n")
    with pytest.raises(UserError, match="path,label"):
        with_labels(items, str(bad))
    unrelated = tmp_path / "unrelated.csv"
    unrelated.write_text("path,label\nelsewhere/a.png,cat\n")
    with pytest.raises(UserError, match="no image of the sources"):
        with_labels(items, str(unrelated))
    with pytest.raises(UserError, match="'folder' or a CSV"):
        with_labels(items, str(tmp_path / "missing.csv"))


def test_unknown_demo_set():
    with pytest.raises(UserError, match="demo:samples"):
        list(iter_source("demo:nope"))
