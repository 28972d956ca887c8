"""Sharing an atlas: a static site anyone can host (`site`), a hub-ready release folder (`release`),
and SAEs trained by other tools brought into a workspace (`peers`). Sits above the web stage."""
