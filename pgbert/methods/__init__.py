"""Pruning methods behind one interface (methods.base.Method), registered by name."""

from __future__ import annotations

from ..errors import PgbertError
from .base import Calibration, Method, Selection
from .kwon import Kwon
from .pgb import PGB
from .structured import StructuredFisher
from .unstructured import Unstructured

REGISTRY: dict[str, Method] = {
    m.name: m
    for m in (
        PGB(),
        PGB(permute=False),
        Kwon(),
        StructuredFisher(),
        Unstructured("magnitude"),
        Unstructured("fisher"),
    )
}
METHODS = tuple(REGISTRY)


def get_method(name: str) -> Method:
    if name not in REGISTRY:
        raise PgbertError(f"unknown method '{name}'; choose from {', '.join(METHODS)}")
    return REGISTRY[name]


__all__ = ["Calibration", "METHODS", "Method", "REGISTRY", "Selection", "get_method"]
