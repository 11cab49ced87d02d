"""A serving node from its settings: the store, the hosted models, the engine, the HTTP app."""

from __future__ import annotations

from fastapi import FastAPI

from ..errors import DroidspeakError
from ..store import CacheStore, open_backend
from ..store.keys import check_namespace
from .api import create_app
from .config import Settings
from .engine import Engine
from .host import ModelHost


def build_app(s: Settings) -> FastAPI:
    """The node ``droidspeak serve`` runs (a one-line :class:`DroidspeakError` on a bad store or model)."""
    try:
        check_namespace(s.namespace)
        store = CacheStore(open_backend(s.store, s.namespace), namespace=s.namespace) if s.store else None
    except ValueError as e:
        raise DroidspeakError(str(e)) from None
    names = [n.strip() for n in s.models.split(",") if n.strip()] or None
    return create_app(Engine(ModelHost(names), store, s))
