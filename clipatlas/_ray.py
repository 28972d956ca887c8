"""The one way clipatlas joins Ray (`--engine ray`): an optional dependency, started or joined once."""

from __future__ import annotations

from typing import Any

from clipatlas.errors import UserError


def connect(address: str | None) -> Any:
    """The `ray` module, initialised: joined to `address` (auto, ray://HOST:PORT) or a local Ray when None.
    A Ray already initialised in this process (a notebook, a test) is used as it is."""
    try:
        import ray
    except ImportError:
        raise UserError("--engine ray needs Ray: pip install 'clipatlas[ray]'") from None
    if not ray.is_initialized():
        try:
            ray.init(address=address, include_dashboard=False)
        except ConnectionError as exc:
            raise UserError(
                f"cannot join the Ray cluster at {address!r} ({exc}); start it with `ray start --head` "
                "or leave out --address to run a local Ray"
            ) from exc
    return ray


def has_gpus(ray: Any) -> bool:
    return ray.cluster_resources().get("GPU", 0) > 0
