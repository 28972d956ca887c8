"""Where the pages link to, as one object the templates call (`links.feature(12)`).

The served app's routes are `Links`; the static site (`clipatlas.share.site`) renders the same
templates with its own subclass, whose URLs are relative files and whose `site` flag drops what
only a server can do (the playground, uploads, the JSON API).
"""

from __future__ import annotations

import functools
from typing import Any
from urllib.parse import quote

from fastapi.templating import Jinja2Templates

from clipatlas.web import fragments


class Links:
    site = False  # True on the static site: no playground, uploads or JSON API

    home = "/"
    map = "/map"
    features = "/features"
    search = "/search"
    playground = "/playground"
    api = "/api"
    feature_prefix = "/features/"  # + a feature id (the map's script appends ids to it)
    thumb_prefix = "/thumbs/"  # + an image id

    def static(self, name: str) -> str:
        return f"/static/{name}"

    def feature(self, feature: int) -> str:
        return f"{self.feature_prefix}{int(feature)}"

    def feature_on_map(self, feature: int) -> str:
        return f"{self.map}?feature={int(feature)}"

    def image(self, image_id: str) -> str:
        return f"/images/{quote(image_id)}"

    def thumb(self, image_id: str) -> str:
        return f"{self.thumb_prefix}{quote(image_id)}"

    def icon(self, feature: int) -> str:
        return f"/icons/{int(feature)}"

    def map_data(self) -> str:
        return "/api/map"


LINKS = Links()


def template_globals(links: Links) -> dict[str, Any]:
    """What every template (and macro imported without context) may call: `links`, `number` and the
    repeated pieces of `fragments`, those that link bound to `links`."""
    return {
        "links": links,
        "number": fragments.number,
        "feature_name": fragments.feature_name,
        "best_guess": fragments.best_guess,
        "thumb": fragments.thumb,
        "feature_link": functools.partial(fragments.feature_link, links),
        "image_tile": functools.partial(fragments.image_tile, links),
    }


def with_links(templates: Jinja2Templates, links: Links = LINKS) -> Jinja2Templates:
    """The templates with `template_globals(links)` (so macros imported without context see them too)."""
    templates.env.globals.update(template_globals(links))
    return templates
