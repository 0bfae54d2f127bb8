"""The README's one table of LAMINAR_* settings against the settings models: a setting the
code reads but the table lacks (someone added a field) fails here, naming it."""

from __future__ import annotations

import re
import types
import typing

from pydantic import BaseModel

from pipeline_service.settings import known_env_names
from tests.deploy.files import REPO

START, END = "<!-- settings-table:start -->", "<!-- settings-table:end -->"


def table_names() -> list[str]:
    readme = (REPO / "README.md").read_text()
    assert readme.count(START) == 1 and readme.count(END) == 1, "the table's markers are gone"
    table = readme.split(START)[1].split(END)[0]
    return re.findall(r"^\| `(LAMINAR_[A-Z0-9_<>]+)` \|", table, re.M)


def _nested_model(annotation: typing.Any) -> type[BaseModel] | None:
    """The model of a `Model` or `Model | None` field (a nested group of settings)."""
    candidates = (
        typing.get_args(annotation)
        if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union
        else (annotation,)
    )
    for candidate in candidates:
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def expected_names() -> set[str]:
    """Every variable Laminar reads: known_env_names(), with nested groups (Retention, Spark's
    kubernetes options) spelt out to their leaves as the table lists them."""
    from pipeline_service import settings as module
    from schemas.connections import Resources

    names = set(known_env_names())
    models = [
        getattr(module, name)
        for name in dir(module)
        if isinstance(getattr(module, name), type)
        and hasattr(getattr(module, name), "model_config")
        and "env_prefix" in getattr(module, name).model_config
    ] + [Resources]
    for model in models:
        prefix = model.model_config["env_prefix"]
        for field, info in model.model_fields.items():
            nested = _nested_model(info.annotation)
            if nested is None:
                continue
            parent = f"{prefix}{field}".upper()
            names.discard(parent)
            names |= {f"{parent}__{leaf}".upper() for leaf in nested.model_fields}
    return names


def documented(names: list[str]) -> set[str]:
    # `LAMINAR_CONNECTIONS__<NAME>__<FIELD>` documents the mapping LAMINAR_CONNECTIONS.
    return {name.split("__<")[0] for name in names}


def test_every_setting_is_in_the_readme_table() -> None:
    missing = expected_names() - documented(table_names())
    assert not missing, (
        f"README.md's settings table (section Deploying > Settings) lacks {sorted(missing)}: "
        "add a row for each, between the settings-table markers"
    )


def test_the_table_documents_only_settings_laminar_reads() -> None:
    names = table_names()
    assert len(names) == len(set(names)), "a setting is listed twice"
    extra = documented(names) - expected_names()
    assert not extra, f"README.md's settings table lists {sorted(extra)}, which nothing reads"
