"""The HTML pieces a page repeats tens of times (a feature link, an image tile), written in Python.

A Jinja macro call costs about 20 µs; a feature page makes ~60 of them (a link per neighbour, a tile per
image), which was half its render. These functions make the same markup, escaped as the templates escape
(`markupsafe.escape`), and the templates call them like the macros they replace. `links.template_globals`
binds the ones that need URLs to the site's `Links`. `number` is here too: it was a macro for the same reason.

An item is a page's row: a dict from `views`, or any object with the same attributes.
"""

from __future__ import annotations

from numbers import Number
from typing import TYPE_CHECKING, Any

from markupsafe import Markup, escape

if TYPE_CHECKING:
    from clipatlas.web.links import Links


def number(value: Any, digits: int = 3) -> str:
    """A number as the pages show it: `digits` significant digits, "–" when there is none."""
    if value is None:
        return "–"
    return f"%.{digits}g" % value if isinstance(value, Number) else str(value)


def field(item: Any, name: str) -> Any:
    """`item.name` as a template reads it: a dict's key or an object's attribute, None when absent."""
    if isinstance(item, dict):
        return item.get(name)
    return getattr(item, name, None)


def best_guess(g: Any, with_score: bool = True) -> Markup:
    """An unnamed feature's best label (`views.best_guess_fields`), with where its score came from."""
    html = f'<span class="best-guess">best guess “<span class="guess-text">{escape(field(g, "text"))}</span>”'
    if with_score:
        metric, judge, n = escape(str(field(g, "metric")).upper()), escape(field(g, "judge")), escape(field(g, "n"))
        value, baseline, p = field(g, "value"), field(g, "baseline"), field(g, "evidence_p")
        evidence = "" if p is None else f", p {p:.3g} &gt; {escape(field(g, 'naming_p'))}"
        html += (
            f' <span class="guess-score muted">({metric} {value:.2f} vs {baseline:.2f} baseline{evidence}, '
            f"{n} images, {judge} judge)</span>"
        )
    return Markup(html + "</span>")


def feature_name(item: Any, with_score: bool = True) -> Markup:
    """A feature's name: its headline label, else "unnamed" with the reason as its tooltip and, apart from
    it, the best guess; `with_score=False` where the row shows that score itself. playground.js mirrors this."""
    label = field(item, "label")
    if label:
        return Markup(f'<span class="label">{escape(label)}</span>')
    note = field(item, "label_note") or "unlabelled"
    html = f'· <span class="unnamed" title="{escape(note)}">unnamed</span>'
    guess = field(item, "best_guess")
    if guess:
        html += f" — {best_guess(guess, with_score)}"
    return Markup(html)


def feature_link(links: Links, item: Any, with_score: bool = True) -> Markup:
    """`#id name`, linking to the feature's page."""
    feature = field(item, "feature")
    return Markup(
        f'<a class="feature-link" href="{escape(links.feature(feature))}"><span class="fid">#{escape(feature)}</span> '
        f"{feature_name(item, with_score)}</a>"
    )


def thumb(tile: Any, alt: str, kind: str = "tile") -> Markup:
    """One tile of a sprite sheet (the static site): the sheet, scaled so one tile fills the box, shifted to
    the tile; not lazy: a page's tiles share one sheet, so one request loads them all."""
    cols, col, row = field(tile, "cols"), field(tile, "col"), field(tile, "row")
    return Markup(
        f'<span class="sprite {escape(kind)}"><img src="{escape(field(tile, "url"))}" alt="{escape(alt)}" '
        f'style="width: {escape(cols * 100)}%; left: -{escape(col * 100)}%; top: -{escape(row * 100)}%"></span>'
    )


def image_tile(links: Links, row: Any) -> Markup:
    """A top image or quantile sample: its thumbnail (or sprite tile), linking to its image page, with its
    activation (and decile)."""
    image_id = field(row, "image_id")
    tile = field(row, "tile")
    if tile:
        picture = thumb(tile, f"image {image_id}")
    else:
        picture = f'<img loading="lazy" src="{escape(links.thumb(image_id))}" alt="image {escape(image_id)}">'
    decile = field(row, "decile")
    caption = escape(number(field(row, "activation"))) + ("" if decile is None else f" · decile {escape(decile)}")
    return Markup(
        f'<figure class="tile">\n  <a href="{escape(links.image(image_id))}">{picture}</a>\n'
        f"  <figcaption>{caption}</figcaption>\n</figure>"
    )
