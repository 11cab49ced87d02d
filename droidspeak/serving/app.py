"""A serving node from its settings: the store, the hosted models, the engine, the HTTP app."""

from __future__ import annotations

from fastapi import FastAPI

from ..store import open_store
from .api import create_app
from .config import Settings
from .engine import Engine
from .host import ModelHost


def build_app(s: Settings) -> FastAPI:
    """The node ``droidspeak serve`` runs (a one-line :class:`DroidspeakError` on a bad store or model)."""
    store = open_store(s.store, s.namespace, secret=s.store_secret, encrypt=s.store_encrypt,
                       insecure=s.insecure_store, write_behind=s.store_write_queue) if s.store else None
    names = [n.strip() for n in s.models.split(",") if n.strip()] or None
    return create_app(Engine(ModelHost(names, packed=s.packed_weights), store, s))
