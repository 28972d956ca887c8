"""`web.fragments` against the Jinja macros they replaced (kept here as the reference): the same markup,
escaped the same way, for named, unnamed and best-guess features, hostile text, thumbnails and sprite tiles."""

import itertools

import pytest
from jinja2 import Environment, select_autoescape

from clipatlas.share.site import SiteLinks
from clipatlas.web import fragments
from clipatlas.web.fragments import number
from clipatlas.web.links import LINKS

# The macros as they were before `fragments` (templates/macros.html at 31df7b8), with `number` as a global.
REFERENCE_MACROS = """
{% macro feature_name(item, with_score=true) -%}
{%- if item.label %}<span class="label">{{ item.label }}</span>
{%- else %}· <span class="unnamed" title="{{ item.label_note or 'unlabelled' }}">unnamed</span>{% if item.best_guess %} — {{ best_guess(item.best_guess, with_score) }}{% endif %}{% endif -%}
{%- endmacro %}

{% macro best_guess(g, with_score=true) -%}
<span class="best-guess">best guess “<span class="guess-text">{{ g.text }}</span>”{% if with_score %} <span class="guess-score muted">({{ g.metric | upper }} {{ "%.2f" | format(g.value) }} vs {{ "%.2f" | format(g.baseline) }} baseline{% if g.evidence_p is not none %}, p {{ "%.3g" | format(g.evidence_p) }} &gt; {{ g.naming_p }}{% endif %}, {{ g.n }} images, {{ g.judge }} judge)</span>{% endif %}</span>
{%- endmacro %}

{% macro feature_link(item, with_score=true) -%}
<a class="feature-link" href="{{ links.feature(item.feature) }}"><span class="fid">#{{ item.feature }}</span> {{ feature_name(item, with_score) }}</a>
{%- endmacro %}

{% macro image_tile(row) -%}
<figure class="tile">
  <a href="{{ links.image(row.image_id) }}">{% if row.tile %}{{ thumb(row.tile, "image " ~ row.image_id) }}{% else %}<img loading="lazy" src="{{ links.thumb(row.image_id) }}" alt="image {{ row.image_id }}">{% endif %}</a>
  <figcaption>{{ number(row.activation) }}{% if row.decile is not none %} · decile {{ row.decile }}{% endif %}</figcaption>
</figure>
{%- endmacro %}

{% macro thumb(tile, alt, kind="tile") -%}
<span class="sprite {{ kind }}"><img src="{{ tile.url }}" alt="{{ alt }}" style="width: {{ tile.cols * 100 }}%; left: -{{ tile.col * 100 }}%; top: -{{ tile.row * 100 }}%"></span>
{%- endmacro %}
"""  # noqa: E501

EVIL = "<script>alert(\"x\")</script>&amp; 'quoted'"
GUESS = {
    "label_id": 3,
    "text": "little penguin, " + EVIL,
    "source": "captions",
    "judge": "captions",
    "metric": "auroc",
    "value": 0.9512,
    "baseline": 0.6375,
    "evidence_p": 0.061234,
    "naming_p": 0.05,
    "n": 16,
}
ITEMS = [
    {"feature": 12, "label": "clock face, thirty", "label_note": "", "best_guess": None},
    {"feature": 7, "label": EVIL, "label_note": "", "best_guess": None},
    {"feature": 620, "label": "", "label_note": "no label beats its shuffled baseline " + EVIL, "best_guess": None},
    {"feature": 89, "label": "", "label_note": "not yet scored", "best_guess": GUESS},
    {"feature": 90, "label": "", "label_note": "", "best_guess": {**GUESS, "evidence_p": None}},
]
SPRITE_TILE = {"url": "s/1.webp", "cols": 8, "col": 3, "row": 1}  # the static site's rows have one
ROWS = [
    {"row": 1, "image_id": "stamps:cat.png", "activation": 3.14159, "rank": 0, "decile": None},
    {"row": 2, "image_id": "a b/<c>", "activation": 0.000123456, "rank": 1, "decile": 4},
    {"row": 3, "image_id": "x", "activation": None, "rank": 2, "decile": 0},
    {"row": 4, "image_id": "y", "activation": 12, "rank": 3, "decile": None, "tile": SPRITE_TILE},
]


def reference(links):
    env = Environment(autoescape=select_autoescape(default_for_string=True))
    env.globals.update(links=links, number=number)
    return env.from_string(REFERENCE_MACROS).module


@pytest.mark.parametrize("links", [LINKS, SiteLinks(64, 4)], ids=["served", "static site"])
def test_fragments_make_the_markup_the_macros_made(links):
    macros = reference(links)
    for item, with_score in itertools.product(ITEMS, (True, False)):
        assert str(fragments.feature_name(item, with_score)) == str(macros.feature_name(item, with_score))
        assert str(fragments.feature_link(links, item, with_score)) == str(macros.feature_link(item, with_score))
    for row in ROWS:
        assert str(fragments.image_tile(links, row)) == str(macros.image_tile(row))
    assert str(fragments.best_guess(GUESS)) == str(macros.best_guess(GUESS))
    tile = ROWS[-1]["tile"]
    assert str(fragments.thumb(tile, EVIL, "icon")) == str(macros.thumb(tile, EVIL, "icon"))


def test_fragments_escape_what_they_are_given():
    html = str(fragments.feature_link(LINKS, ITEMS[1])) + str(fragments.feature_name(ITEMS[3]))
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert "&amp;amp;" in html  # text that looks escaped is escaped again: it is text
