"""Typed configs: the base of every options class a command line fills (render backends, generation).

A ``Config`` is a pydantic model that refuses unknown keys and non-finite numbers, describes
every field (the descriptions are the command line's ``--help``) and knows, per field, the
command-line flag that sets it, so a bad value is reported as one line naming the flag:
``--samples: Input should be greater than or equal to 1 (got 0)``. Classes are named
``…Config`` everywhere (``TrainConfig``, ``BlenderConfig``, ``GenerationConfig``, ...).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Literal, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError


class ConfigError(ValueError):
    """Config values that do not validate: one ``; ``-separated line, each problem naming its flag or key."""


def setting(default: Any, description: str, flag: str | None = None, **constraints: Any) -> Any:
    """A config field: its default (``...``: required), the help text, and the flag that sets it (if any)."""
    return Field(default, description=description, json_schema_extra={"flag": flag} if flag else None, **constraints)


class Config(BaseModel):
    """Base of the command-line-facing configs: unknown keys, NaN and infinity refused; immutable."""

    # defer_build: the validator is built on first use, so a command line that only reads the fields for its
    # --help does not pay for it.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False, defer_build=True)
    label: ClassVar[str] = "config"  # names the config in messages ("blender backend", "generation")

    @classmethod
    def parse(cls, values: Mapping[str, Any] | Config) -> Any:
        """A validated instance; ``ConfigError`` naming each bad value (its flag where it has one)."""
        if isinstance(values, cls):
            return values
        if isinstance(values, Config):
            raise ConfigError(f"{cls.label}: got a {type(values).__name__}, expected a {cls.__name__}")
        try:
            return cls.model_validate(dict(values))
        except ValidationError as e:
            raise ConfigError("; ".join(cls._problem(err) for err in e.errors())) from None

    @classmethod
    def _problem(cls, err: Any) -> str:
        name = str(err["loc"][0]) if err["loc"] else ""
        if err["type"] == "extra_forbidden":
            return f"{cls.label}: unknown option {name!r} (its options: {', '.join(cls.model_fields)})"
        where = (cls.flag(name) if name in cls.model_fields else None) or f"{cls.label} option {name}"
        if err["type"] == "finite_number":  # the command lines' own wording for NaN and infinity
            return f"{where}: {err.get('input')} is not a finite number"
        msg = err["msg"].removeprefix("Value error, ")
        return f"{where}: {msg} (got {err.get('input')!r})"

    @classmethod
    def flag(cls, name: str) -> str | None:
        """The command-line flag that sets field ``name`` (None for fields only Python sets)."""
        extra = cls.model_fields[name].json_schema_extra
        return extra.get("flag") if isinstance(extra, dict) else None

    @classmethod
    def help(cls, name: str) -> str:
        """The field's description, for ``--help``."""
        return str(cls.model_fields[name].description)

    @classmethod
    def default(cls, name: str) -> Any:
        return cls.model_fields[name].get_default(call_default_factory=True)

    @classmethod
    def choices(cls, name: str) -> tuple[Any, ...]:
        """The values a ``Literal`` field accepts (None left out), for the command line's choices."""
        out: list[Any] = []
        todo = [cls.model_fields[name].annotation]
        while todo:
            t = todo.pop(0)
            if get_origin(t) is Literal:
                out += [v for v in get_args(t) if v is not None]
            else:
                todo += list(get_args(t))
        return tuple(out)

    def record(self) -> dict[str, Any]:
        """Every field, defaults included, as JSON (what an output records about how it was made)."""
        return self.model_dump(mode="json")
