"""`clipatlas export-site`: the atlas as a static site (HTML, JS, gzipped JSON, WebP) for any static host.

The pages are the served app's own templates and styles, rendered with `SiteLinks` (relative file
URLs, no playground, uploads or JSON API). What a large atlas has per feature or per image does not
become one file each: the rendered `<main>` of every feature page is stored in gzipped JSON chunks
of `chunk_size` features (`data/features/<chunk>.json.gz`), image pages likewise in chunks chosen by
a hash of the image id, and one shell page (`feature.html?id=N`, `image.html?id=ID`) fetches the
one chunk it needs (`static/site.js`). A feature's thumbnails are packed into one WebP sprite sheet
(`sheets/<chunk>/<feature>.webp`, its top image first), so a feature page makes one image request.
The map is one gzipped JSON file; label search runs in the browser over `data/search/<k>.json.gz`.

A killed export re-run with the same settings keeps the chunks already written (a chunk's JSON is
written last, after its sprite sheets). The pages, map and search index are written first, so a site
being exported already opens the features whose chunks are done. `jobs` worker processes render the
chunks in parallel; the files are the same for any number of them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import gzip
import json
import math
import multiprocessing
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup
from PIL import Image
from tqdm.auto import tqdm

from clipatlas._io import SCHEMA_VERSION, atomic_write_bytes, atomic_write_json, read_json
from clipatlas.atlas import Atlas
from clipatlas.atlas.query import search_rank
from clipatlas.atlas.thumbs import thumbnail_image
from clipatlas.errors import UserError
from clipatlas.share.config import SiteConfig
from clipatlas.web.context import TEMPLATES_DIR
from clipatlas.web.links import Links, template_globals
from clipatlas.web.views import AtlasViews, map_body, score_fields

STATIC_DIR = TEMPLATES_DIR.parent / "static"
SITE_MANIFEST = "site.json"
SHEET_COLS = 8  # tiles per sprite-sheet row
IMAGES_PER_CHUNK = 256  # image pages per chunk, on average
LABELS_PER_CHUNK = 20_000  # search index entries per file
WEBP_METHOD = 2  # libwebp effort: 4 saves ~4% of the bytes for twice the time, 0 costs ~35% more (bench/RESULTS.md)
TILE_CACHE_BYTES = 512 * 2**20  # decoded tiles kept: images repeat across features, decoding is most of a sheet's cost


class SiteLinks(Links):
    """The static site's URLs: files relative to the site's root (every page sits at the root)."""

    site = True
    home = "index.html"
    map = "map.html"
    search = "search.html"
    feature_prefix = "feature.html?id="
    thumb_prefix = ""  # no per-image files: thumbnails are tiles of the sprite sheets
    sheet_pattern = "sheets/{chunk}/{feature}.webp"
    feature_chunk_pattern = "data/features/{chunk}.json.gz"
    image_chunk_pattern = "data/images/{chunk}.json.gz"
    search_chunk_pattern = "data/search/{chunk}.json.gz"
    sheet_cols = SHEET_COLS

    def __init__(self, chunk_size: int, image_chunks: int):
        self.chunk_size = chunk_size
        self.image_chunks = image_chunks

    def static(self, name: str) -> str:
        return f"static/{name}"

    def image(self, image_id: str) -> str:
        return f"image.html?id={quote(image_id)}"

    def map_data(self) -> str:
        return "data/map.json.gz"

    def sheet(self, feature: int) -> str:
        return self.sheet_pattern.format(chunk=feature // self.chunk_size, feature=feature)

    def feature_chunk(self, chunk: int) -> str:
        return self.feature_chunk_pattern.format(chunk=chunk)

    def image_chunk(self, chunk: int) -> str:
        return self.image_chunk_pattern.format(chunk=chunk)

    def search_chunk(self, index: int) -> str:
        return self.search_chunk_pattern.format(chunk=index)

    def image_chunk_of(self, image_id: str) -> int:
        return fnv1a(image_id) % self.image_chunks


def fnv1a(text: str) -> int:
    """32-bit FNV-1a of the UTF-8 bytes (site.js computes the same to find an image's chunk)."""
    h = 0x811C9DC5
    for byte in text.encode():
        h = ((h ^ byte) * 0x01000193) & 0xFFFFFFFF
    return h


@dataclass(frozen=True)
class SiteExport:
    out: Path
    n_features: int
    n_images: int
    n_labels: int
    bytes: int

    def summary_line(self) -> str:
        return (
            f"exported {self.n_features:,} features, {self.n_images:,} image pages and {self.n_labels:,} searchable "
            f"labels to {self.out}: {self.bytes / 1e6:,.1f} MB; try it: python -m http.server -d {self.out}"
        )


class SiteWriter:
    """Renders the pages of one atlas into a folder; `export_site` drives it."""

    def __init__(self, atlas: Atlas, out: Path, config: SiteConfig, features: np.ndarray):
        self.atlas, self.out, self.config, self.features = atlas, out, config, features
        self.views = AtlasViews(atlas)
        self.views.warm_briefs()  # image pages name up to 48 features each: one query instead of 48
        image_chunks = max(1, math.ceil(len(features) * config.max_images / IMAGES_PER_CHUNK))
        self.links = SiteLinks(config.chunk_size, image_chunks)
        self.env = Environment(loader=FileSystemLoader(TEMPLATES_DIR), autoescape=select_autoescape())
        self.env.globals.update(template_globals(self.links))
        tiles_cached = max(1024, TILE_CACHE_BYTES // (3 * config.tile_size**2))
        self.tile = functools.lru_cache(maxsize=tiles_cached)(self._tile)

    # -- rendering --------------------------------------------------------------------------------
    def page(self, template: str, **context: Any) -> str:
        context.setdefault("title", "clipatlas")
        return self.env.get_template(template).render(summary=self.views.summary_brief(), **context)

    def main_block(self, template: str, **context: Any) -> str:
        """The `main` block alone: what a shell page puts into its <main>."""
        found = self.env.get_template(template)
        return "".join(found.blocks["main"](found.new_context({"summary": self.views.summary_brief(), **context})))

    def feature_main(self, feature: int, tiles: dict[str, tuple[int, int]]) -> str:
        page = self.views.feature_page(feature)
        top = page["top_images"][: self.config.max_images]
        quantiles = page["quantile_samples"][: self.config.max_images - len(top)]
        images = [row["image_id"] for row in top + quantiles]
        icon = self.atlas.icon_path(feature)
        self.write_sheet(feature, images, icon)
        for index, row in enumerate(top + quantiles):
            row["tile"] = self.tile_ref(feature, index)
            tiles.setdefault(row["image_id"], (feature, index))
        page["top_images"], page["quantile_samples"] = top, quantiles
        page["icon_tile"] = self.tile_ref(feature, len(images)) if icon else None
        return self.main_block("feature.html", f=page, title=f"feature {feature}")

    def image_main(self, image_id: str, tile: tuple[int, int]) -> str:
        image = self.views.image_page(image_id)
        image["tile"] = self.tile_ref(*tile)
        return self.main_block("image.html", image=image, title=f"image {image_id}")

    def tile_ref(self, feature: int, index: int) -> dict[str, Any]:
        row, col = divmod(index, SHEET_COLS)
        return {"url": self.links.sheet(feature), "cols": SHEET_COLS, "col": col, "row": row}

    # -- sprite sheets ----------------------------------------------------------------------------
    def _tile(self, image_id: str) -> Image.Image:
        path = self.atlas.thumbnail_path(image_id)
        image = Image.open(path) if path else self.atlas.store.open_image(self.atlas.store.row_of(image_id))
        return thumbnail_image(image, self.config.tile_size)

    def write_sheet(self, feature: int, image_ids: list[str], icon: Path | None) -> None:
        """One WebP: the feature's images in order (then its icon), SHEET_COLS to a row, each centred in its tile."""
        size = self.config.tile_size
        tiles = [self.tile(i) for i in image_ids] + ([thumbnail_image(Image.open(icon), size)] if icon else [])
        if not tiles:
            return
        sheet = sprite_sheet(tiles, size)
        path = self.out / self.links.sheet(feature)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as handle:  # a killed run rewrites the whole chunk, sheets first
            sheet.save(handle, format="WEBP", quality=self.config.quality, method=WEBP_METHOD)

    # -- the files --------------------------------------------------------------------------------
    def write_chunks(self, pool=None) -> dict[str, tuple[int, int]]:
        """Every feature chunk (kept when already written); returns image id -> (feature, tile) of all images,
        each image's tile the first one showing it in feature order."""
        chunks = np.unique(self.features // self.config.chunk_size)
        by_chunk = np.split(self.features, np.searchsorted(self.features // self.config.chunk_size, chunks[1:]))
        done: dict[int, dict[str, tuple[int, int]]] = {}
        todo = []
        for chunk, members in zip(chunks.tolist(), by_chunk):
            path = self.out / self.links.feature_chunk(chunk)
            if path.is_file():
                done[chunk] = {k: tuple(v) for k, v in read_gzip_json(path)["tiles"].items()}
            else:
                todo.append((chunk, members.tolist()))
        made = each_job(self, pool, "write_feature_chunk", todo, desc="feature pages")
        done.update(zip((chunk for chunk, _ in todo), made))
        tiles: dict[str, tuple[int, int]] = {}
        for chunk in sorted(done):
            tiles.update({k: v for k, v in done[chunk].items() if k not in tiles})
        return tiles

    def write_feature_chunk(self, chunk: int, members: list[int]) -> dict[str, tuple[int, int]]:
        """One chunk's sprite sheets, then its JSON; returns image id -> (feature, tile) of its images."""
        chunk_tiles: dict[str, tuple[int, int]] = {}
        pages = {str(f): self.feature_main(f, chunk_tiles) for f in members}
        write_gzip_json(self.out / self.links.feature_chunk(chunk), {"features": pages, "tiles": chunk_tiles})
        return chunk_tiles

    def write_image_chunks(self, tiles: dict[str, tuple[int, int]], pool=None) -> None:
        by_chunk: dict[int, dict[str, tuple[int, int]]] = {}
        for image_id, tile in tiles.items():
            by_chunk.setdefault(self.links.image_chunk_of(image_id), {})[image_id] = tile
        each_job(self, pool, "write_image_chunk", sorted(by_chunk.items()), desc="image pages")

    def write_image_chunk(self, chunk: int, tiles: dict[str, tuple[int, int]]) -> None:
        pages = {i: self.image_main(i, tile) for i, tile in tiles.items()}
        write_gzip_json(self.out / self.links.image_chunk(chunk), {"images": pages})

    def write_map(self) -> None:
        points = self.atlas.map_points()
        keep = np.isin(points.feature, self.features)
        subset = dataclasses.replace(
            points,
            feature=points.feature[keep],
            x=points.x[keep],
            y=points.y[keep],
            cluster=points.cluster[keep],
            label=[text for text, k in zip(points.label, keep) if k],
            top_image=[image for image, k in zip(points.top_image, keep) if k],
        )
        write_gzip_json(self.out / self.links.map_data(), map_body(subset))

    def write_search(self) -> tuple[int, int]:
        """The label index, in search order (`search_rank`: labels that name their feature, then others that beat
        their baseline and chance, best score first): [feature, label text, the hit as the search page's own
        macro renders it]; returns (files, labels)."""
        wanted = set(self.features.tolist())
        labels = [label for f, found in self.atlas.labels_by_feature().items() if f in wanted for label in found]
        labels.sort(key=lambda label: (search_rank(label), label.feature))
        hit = self.env.get_template("macros.html").module.label_hit
        entries = [
            [
                int(label.feature),
                label.text,
                str(
                    hit(
                        self.views.named(
                            int(label.feature), matched=label.text, source=label.source, **score_fields(label)
                        )
                    )
                ),
            ]
            for label in tqdm(labels, desc="search index", unit="label")
        ]
        parts = max(1, math.ceil(len(entries) / LABELS_PER_CHUNK))
        for index in range(parts):
            part = entries[index * LABELS_PER_CHUNK : (index + 1) * LABELS_PER_CHUNK]
            write_gzip_json(self.out / self.links.search_chunk(index), {"labels": part})
        return parts, len(entries)

    def write_pages(self, search_parts: int) -> None:
        """index.html, map.html and the shells, whose <main> site.js fills from the chunks."""
        shell = {
            "chunk_size": self.config.chunk_size,
            "image_chunks": self.links.image_chunks,
            "search_parts": search_parts,
            "n_features": self.atlas.n_features,
        }
        empty_search = Markup(self.main_block("search.html", q="", results=[]))
        pages = {
            "index.html": self.page("index.html", rows=self.views.summary_rows()),
            "map.html": self.page("map.html", title="feature map"),
            **{f"{kind}.html": self.page("site_shell.html", kind=kind, shell=shell) for kind in ("feature", "image")},
            "search.html": self.page("site_shell.html", kind="search", shell=shell, empty_search=empty_search),
        }
        for name, html in pages.items():
            atomic_write_bytes(self.out / name, html.encode())
        static = self.out / "static"
        static.mkdir(exist_ok=True)
        for name in ("style.css", "map.js", "site.js"):
            shutil.copyfile(STATIC_DIR / name, static / name)


def export_site(workspace, name: str | None, out: str | Path, config: SiteConfig | None = None) -> SiteExport:
    """Write the static site of an atlas into `out` (see the module's docstring)."""
    config = config or SiteConfig()
    atlas = Atlas.open(workspace, name)
    out = Path(out)
    features = atlas.select_features(config.features)
    if not len(features):
        raise UserError(f"--features {config.features} selects no feature of {atlas.name}; try --features all")
    identity = {"sae": atlas.name, "atlas_build": atlas.build_id, "config": config.identity()}
    manifest = out / SITE_MANIFEST
    if out.exists() and any(out.iterdir()):
        if not manifest.is_file():
            raise UserError(f"{out} is not empty and holds no clipatlas site; give an empty or new folder with -o")
        if {k: v for k, v in read_json(manifest).items() if k in identity} != identity:
            shutil.rmtree(out)  # another atlas or other settings: nothing in it can be kept
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(manifest, {**identity, "complete": False})
    writer = SiteWriter(atlas, out, config, features)
    writer.write_map()
    search_parts, n_labels = writer.write_search()
    writer.write_pages(search_parts)
    with worker_pool(config.jobs, (workspace, atlas.name, out, config, features)) as pool:
        tiles = writer.write_chunks(pool)
        writer.write_image_chunks(tiles, pool)
    atomic_write_json(manifest, {**identity, "complete": True, "n_features": len(features), "n_images": len(tiles)})
    return SiteExport(out, len(features), len(tiles), n_labels, folder_bytes(out))


def sprite_sheet(tiles: list[Image.Image], size: int) -> Image.Image:
    """The tiles SHEET_COLS to a row, each centred in its size x size cell on a light grey ground."""
    rows = math.ceil(len(tiles) / SHEET_COLS)
    sheet = Image.new("RGB", (SHEET_COLS * size, rows * size), (221, 221, 221))
    for index, tile in enumerate(tiles):
        row, col = divmod(index, SHEET_COLS)
        sheet.paste(tile, (col * size + (size - tile.width) // 2, row * size + (size - tile.height) // 2))
    return sheet


# -- worker processes: each opens the atlas and renders whole chunks with its own SiteWriter -----------
_worker: SiteWriter | None = None


def _start_worker(workspace, name: str, out: Path, config: SiteConfig, features: np.ndarray) -> None:
    global _worker
    _worker = SiteWriter(Atlas.open(workspace, name), out, config, features)


def _run_in_worker(method: str, job: tuple) -> Any:
    return getattr(_worker, method)(*job)


@contextlib.contextmanager
def worker_pool(jobs: int, writer_args: tuple) -> Iterator[Any]:
    """None for one job (everything runs here), else a pool of `jobs` processes (spawned: a forked SQLite
    connection or tqdm thread is not safe to use in the child)."""
    if jobs <= 1:
        yield None
        return
    with multiprocessing.get_context("spawn").Pool(jobs, _start_worker, writer_args) as pool:
        yield pool


def each_job(writer: SiteWriter, pool, method: str, jobs: list[tuple], desc: str) -> list[Any]:
    """`writer.method(*job)` for every job, in order: here, or in the pool's workers (a chunk at a time)."""
    if pool is None:
        results = (getattr(writer, method)(*job) for job in jobs)
    else:
        results = pool.imap(functools.partial(_run_in_worker, method), jobs)
    return list(tqdm(results, total=len(jobs), desc=desc, unit="chunk"))


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def write_gzip_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = json.dumps({"schema_version": SCHEMA_VERSION, **obj}, separators=(",", ":"), ensure_ascii=False).encode()
    atomic_write_bytes(path, gzip.compress(raw, compresslevel=6, mtime=0))


def read_gzip_json(path: Path) -> dict[str, Any]:
    return json.loads(gzip.decompress(path.read_bytes()))
