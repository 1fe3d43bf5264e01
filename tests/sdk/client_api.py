"""Prints the public API of whichever `hevlayer` this interpreter imports, as one JSON line: every AsyncHevlayer
method with its parameters, and every model with its fields (required or not). Used by test_client_compat.py
under the published 0.7.3's interpreter and under the project's client."""

from __future__ import annotations

import importlib.metadata
import inspect
import json

import hevlayer
from hevlayer import models
from pydantic import BaseModel


def main() -> None:
    methods = {}
    for name, fn in inspect.getmembers(hevlayer.AsyncHevlayer, inspect.isfunction):
        if name.startswith("_") or name == "aclose":
            continue
        params = list(inspect.signature(fn).parameters.values())[1:]
        methods[name] = [[p.name, p.kind.name, p.default is not inspect.Parameter.empty] for p in params]
    model_fields = {}
    for name, cls in vars(models).items():
        if isinstance(cls, type) and issubclass(cls, BaseModel) and cls is not BaseModel:
            model_fields[name] = {f: info.is_required() for f, info in cls.model_fields.items()}
    print(json.dumps({"version": importlib.metadata.version("hevlayer"), "file": hevlayer.__file__,
                      "methods": methods, "models": model_fields}))


if __name__ == "__main__":
    main()
