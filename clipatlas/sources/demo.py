"""The built-in demo sets: real images that ship with Debian packages and Python wheels.

* `demo:samples`  the colour photos bundled in scikit-image and scikit-learn (11 images)
* `demo:tuxpaint` Tux Paint's photo cut-outs (Debian `tuxpaint-stamps-default`), captioned,
                  labelled with their Tux Paint category (animals, food, vehicles, ...)
* `demo:emoji`    Noto Color Emoji (Debian `fonts-noto-color-emoji`) rendered with Pillow,
                  captioned with the emoji's Unicode name, labelled with its Unicode emoji group
                  (from `emoji-test.txt` of Debian `unicode-data`, where installed)
"""

from __future__ import annotations

import functools
import importlib.util
import io
import unicodedata
from collections.abc import Callable, Iterator
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from clipatlas.errors import UserError
from clipatlas.sources.decode import to_rgb
from clipatlas.sources.files import caption_beside
from clipatlas.sources.items import SourceItem, make_image_id

TUXPAINT_DIR = Path("/usr/share/tuxpaint/stamps")
EMOJI_FONT = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
EMOJI_TEST = Path("/usr/share/unicode/emoji/emoji-test.txt")  # Unicode's emoji list, with groups
VARIATION_SELECTOR_16 = 0xFE0F
EMOJI_SCHEME = "emoji:"
EMOJI_FONT_SIZE = 109  # the only size the font's colour bitmaps (CBDT) come in
EMOJI_CANVAS = 160
MIRROR_SUFFIX = "_mirror"

SAMPLE_PHOTOS = {  # file -> caption; the colour photographs among the bundled data
    ("skimage", "astronaut.png"): "astronaut Eileen Collins in a space suit",
    ("skimage", "chelsea.png"): "Chelsea the cat",
    ("skimage", "coffee.png"): "a cup of coffee on a saucer",
    ("skimage", "hubble_deep_field.jpg"): "the Hubble deep field, galaxies in space",
    ("skimage", "ihc.png"): "immunohistochemistry stained tissue",
    ("skimage", "motorcycle_left.png"): "a motorcycle, left view",
    ("skimage", "motorcycle_right.png"): "a motorcycle, right view",
    ("skimage", "retina.jpg"): "a human retina",
    ("skimage", "rocket.jpg"): "a rocket on the launch pad",
    ("sklearn", "china.jpg"): "a Chinese temple",
    ("sklearn", "flower.jpg"): "a flower",
}
_PACKAGE_DATA = {"skimage": "data", "sklearn": "datasets/images"}

INSTALL_HINTS = {
    "tuxpaint": "install it with: sudo apt-get install --no-install-recommends tuxpaint-stamps-default",
    "emoji": "install it with: sudo apt-get install fonts-noto-color-emoji unicode-data (and pip install fonttools)",
    "samples": "install scikit-image and scikit-learn: pip install 'clipatlas[demo]'",
}


def _package_dir(package: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def iter_samples(spec: str) -> Iterator[SourceItem]:
    for (package, name), caption in SAMPLE_PHOTOS.items():
        folder = _package_dir(package)
        path = folder / _PACKAGE_DATA[package] / name if folder else None
        if path is not None and path.is_file():
            yield SourceItem(make_image_id("samples", name), str(path), spec, caption)


def iter_tuxpaint(spec: str) -> Iterator[SourceItem]:
    for path in sorted(TUXPAINT_DIR.rglob("*.png")):
        caption = caption_beside(path)
        if caption is None and path.stem.endswith(MIRROR_SUFFIX):  # mirrored stamps share the caption
            caption = caption_beside(path.with_name(path.stem[: -len(MIRROR_SUFFIX)] + ".png"))
        relative = path.relative_to(TUXPAINT_DIR)
        category = relative.parts[0] if len(relative.parts) > 1 else None
        yield SourceItem(make_image_id("tuxpaint", relative.as_posix()), str(path), spec, caption, category)


@functools.lru_cache(maxsize=1)
def emoji_codepoints() -> tuple[int, ...]:
    """Single code points the font draws that Unicode names, emoji-range only (no digits, #, *)."""
    from fontTools.ttLib import TTFont

    with TTFont(EMOJI_FONT, lazy=True) as font:
        cmap = font.getBestCmap()
    return tuple(
        cp
        for cp in sorted(cmap)
        if cp >= 0x2000 and unicodedata.name(chr(cp), "") and unicodedata.category(chr(cp)) == "So"
    )


@functools.lru_cache(maxsize=1)
def emoji_groups(path: Path = EMOJI_TEST) -> dict[int, str]:
    """{code point: Unicode emoji group} of the single-code-point emoji in `emoji-test.txt`
    (`# group: Smileys & Emotion` heads each group); empty when the file is not installed."""
    if not path.is_file():
        return {}
    groups: dict[int, str] = {}
    group = None
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("# group:"):
            group = line.split(":", 1)[1].strip()
        elif line.strip() and not line.startswith("#") and group:
            points = [int(p, 16) for p in line.split(";", 1)[0].split()]
            points = [p for p in points if p != VARIATION_SELECTOR_16]
            if len(points) == 1:
                groups.setdefault(points[0], group)
    return groups


def iter_emoji(spec: str) -> Iterator[SourceItem]:
    groups = emoji_groups()
    for cp in emoji_codepoints():
        name = unicodedata.name(chr(cp)).lower()
        uri = f"{EMOJI_SCHEME}{cp:x}"
        yield SourceItem(make_image_id("emoji", f"{cp:x}-{name}"), uri, spec, name, groups.get(cp))


@functools.lru_cache(maxsize=1)
def _emoji_font() -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(EMOJI_FONT), EMOJI_FONT_SIZE)


def render_emoji(uri: str) -> Image.Image:
    """The emoji at `emoji:HEX`, centred on a white square."""
    try:
        char = chr(int(uri[len(EMOJI_SCHEME) :], 16))
    except ValueError:
        raise UserError(f"{uri!r} is not an emoji URI (emoji:HEX)") from None
    canvas = Image.new("RGBA", (EMOJI_CANVAS, EMOJI_CANVAS), (255, 255, 255, 0))
    draw = ImageDraw.Draw(canvas)
    left, top, right, bottom = draw.textbbox((0, 0), char, font=_emoji_font(), embedded_color=True)
    origin = ((EMOJI_CANVAS - (right - left)) // 2 - left, (EMOJI_CANVAS - (bottom - top)) // 2 - top)
    draw.text(origin, char, font=_emoji_font(), embedded_color=True)
    return to_rgb(canvas)


def emoji_png_bytes(uri: str) -> bytes:
    buffer = io.BytesIO()
    render_emoji(uri).save(buffer, format="PNG")
    return buffer.getvalue()


DEMO_SETS: dict[str, tuple[Callable[[str], Iterator[SourceItem]], Callable[[], bool]]] = {
    "samples": (iter_samples, lambda: _package_dir("skimage") is not None or _package_dir("sklearn") is not None),
    "tuxpaint": (iter_tuxpaint, TUXPAINT_DIR.is_dir),
    "emoji": (iter_emoji, lambda: EMOJI_FONT.is_file() and importlib.util.find_spec("fontTools") is not None),
}


def available_demo_sets() -> list[str]:
    return [name for name, (_, present) in DEMO_SETS.items() if present()]


def iter_demo(name: str, spec: str) -> Iterator[SourceItem]:
    if name not in DEMO_SETS:
        raise UserError(f"unknown demo set {spec!r}; choose one of " + ", ".join(f"demo:{n}" for n in DEMO_SETS))
    iterate, present = DEMO_SETS[name]
    if not present():
        raise UserError(f"{spec} is not on this machine; {INSTALL_HINTS[name]}")
    return iterate(spec)
