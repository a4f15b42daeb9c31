"""Declarative pipeline recipes (``pipelines/*.yaml``) and their runner behind ``syncam-data run``.

A recipe lists stages; each stage is one ``syncam-data`` command with its
options written as YAML keys (``--max-gap 100`` is ``max-gap: 100``). The
runner calls the very same commands through the CLI parser, in order, so a
recipe behaves exactly like typing the commands: same validation, same
defaults, same resumability (every stage skips work that is already done, so
re-running a recipe continues where it stopped).

```yaml
name: small
vars: {root: data/small}          # ${root} anywhere below; --var root=... overrides
engine: local                     # default --engine/--ray-address/--workers for stages that have them
stages:
  - name: render                  # a label; `command` defaults to it
    command: render
    args: {scenes: 2, out: "${root}/renders", cameras: 4, frames: 8}
  - name: filter-videos
    args: {inputs: ["${root}/web"], out: "${root}/filtered"}   # a command's arguments by name
  - name: build-shards
    args: {out: "${root}/shards", renders: ["${root}/renders"], videos: ["${root}/filtered/scores.parquet"]}
```

Values: a list repeats the option; ``true`` gives the flag (``--debug``),
``false`` its ``--no-...`` form when the command has one (``no-progress: true``
works too); ``null`` leaves the
option out. ``${name}`` is replaced from ``vars`` (``--var`` overrides),
then from the environment; ``${recipe_dir}`` is the recipe file's folder.
``--var`` may only name a variable the recipe declares or uses (a misspelt
name is an error, not a silent no-op). A stage with ``enabled: false`` is
skipped unless ``--only`` names it.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

log = logging.getLogger(__name__)

STAGE_COMMANDS = ("render", "sample-frames", "filter-videos", "build-shards")
# Options the runner passes through from `syncam-data run` to every stage that accepts them.
PASSTHROUGH = ("engine", "ray_address", "workers")
_VAR_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class RecipeError(ValueError):
    """A recipe that cannot run; the message names the file, the stage and the problem."""


class Stage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Label of the stage (unique in the recipe).")
    command: str | None = Field(None, description="syncam-data command; defaults to the name.")
    args: dict[str, Any] = Field(default_factory=dict, description="Options and arguments of the command, by name.")
    enabled: bool = Field(True, description="False skips the stage (e.g. a source you do not have).")

    @property
    def cmd(self) -> str:
        return self.command or self.name


class Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    description: str = ""
    vars: dict[str, Any] = Field(default_factory=dict)
    engine: str | None = Field(None, description="Default --engine of stages that have one (local or ray).")
    ray_address: str | None = None
    workers: int | None = None
    stages: list[Stage]

    @model_validator(mode="before")
    @classmethod
    def _no_mix(cls, data: Any) -> Any:
        if isinstance(data, dict) and "mix" in data:
            raise ValueError(
                "'mix' is not a recipe key: the training mix is a training setting (data.mix of the syncam-train config, docs/train.md)"
            )
        return data

    @field_validator("stages")
    @classmethod
    def _unique(cls, stages: list[Stage]) -> list[Stage]:
        names = [s.name for s in stages]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"stage names must be unique, repeated: {dup}")
        if not stages:
            raise ValueError("a recipe needs at least one stage")
        return stages

    @field_validator("engine")
    @classmethod
    def _engine(cls, v: str | None) -> str | None:
        if v not in (None, "local", "ray"):
            raise ValueError(f"engine must be local or ray, got {v!r}")
        return v


def load_recipe(path: str | os.PathLike) -> Recipe:
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text())
    except OSError as e:
        raise RecipeError(f"{p}: cannot read recipe ({e.strerror or e})") from None
    except yaml.YAMLError as e:
        raise RecipeError(f"{p}: not valid YAML ({e})") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{p}: a recipe is a YAML mapping with 'name' and 'stages'")
    try:
        return Recipe.model_validate(data)
    except ValidationError as e:
        msgs = "; ".join(
            f"{'.'.join(str(x) for x in err['loc']) or 'recipe'}: {err['msg'].removeprefix('Value error, ')}"
            for err in e.errors()
        )
        raise RecipeError(f"{p}: {msgs}") from None


def used_variables(value: Any) -> set[str]:
    """Names of every ``${name}`` in ``value`` (recursively)."""
    if isinstance(value, str):
        return set(_VAR_RE.findall(value))
    if isinstance(value, list):
        return set().union(*(used_variables(v) for v in value))
    if isinstance(value, dict):
        return set().union(*(used_variables(v) for v in value.values()))
    return set()


def substitute(value: Any, variables: dict[str, str], where: str, _seen: tuple[str, ...] = ()) -> Any:
    """Replace ``${name}`` in every string of ``value`` (recursively; a variable's value may use other variables)."""
    if isinstance(value, str):

        def repl(m: re.Match) -> str:
            key = m.group(1)
            if key in _seen:
                raise RecipeError(f"{where}: variable ${{{key}}} refers to itself ({' -> '.join((*_seen, key))})")
            if key in variables:
                return substitute(str(variables[key]), variables, where, (*_seen, key))
            if key in os.environ:
                return os.environ[key]
            raise RecipeError(f"{where}: unknown variable ${{{key}}} (define it under vars: or pass --var {key}=...)")

        return _VAR_RE.sub(repl, value)
    if isinstance(value, list):
        return [substitute(v, variables, where, _seen) for v in value]
    if isinstance(value, dict):
        return {k: substitute(v, variables, where, _seen) for k, v in value.items()}
    return value


@dataclass
class PlannedStage:
    name: str
    command: str
    argv: list[str]

    def shell(self) -> str:
        return shlex.join(["syncam-data", self.command, *self.argv])


@dataclass
class StageOutcome:
    name: str
    command: str
    exit_code: int
    seconds: float
    message: str = ""


@dataclass
class RunReport:
    recipe: str
    stages: list[StageOutcome] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(s.exit_code == 0 for s in self.stages)


def _commands() -> dict[str, Any]:
    """The click commands of the syncam-data app, by name."""
    import typer

    from syncam_data.cli import app

    group = typer.main.get_command(app)
    return dict(group.commands)  # type: ignore[attr-defined]


def stage_argv(stage: Stage, args: dict[str, Any], command: Any, where: str) -> list[str]:
    """Recipe args -> command-line arguments, checked against the command's own parameters."""
    params = {p.name: p for p in command.params}
    positional: list[str] = []
    argv: list[str] = []
    for key, value in args.items():
        pname = key.replace("-", "_")
        param = params.get(pname)
        if param is None and pname.startswith("no_") and isinstance(value, bool):
            # `no-progress: true` is `progress: false` (the `--no-` form of a flag pair)
            base = params.get(pname[3:])
            if base is not None and getattr(base, "is_flag", False) and base.secondary_opts:
                param, value = base, not value
        if param is None:
            known = sorted(p.replace("_", "-") for p in params)
            raise RecipeError(f"{where}: `syncam-data {stage.cmd}` has no option {key!r} (it has: {', '.join(known)})")
        if value is None:
            continue
        values = value if isinstance(value, list) else [value]
        if param.param_type_name == "argument":
            positional.extend(str(v) for v in values)
            continue
        opt = max(param.opts, key=len)
        if getattr(param, "is_flag", False) and isinstance(value, bool):
            if value:
                argv.append(opt)
            elif param.secondary_opts:
                argv.append(max(param.secondary_opts, key=len))
            continue
        if isinstance(value, list) and not getattr(param, "multiple", False):
            raise RecipeError(f"{where}: option {key!r} of `syncam-data {stage.cmd}` takes one value, got a list")
        for v in values:
            argv.extend([opt, _text(v)])
    return argv + positional


def _text(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, dict):
        return ",".join(f"{k}={x}" for k, x in v.items())
    return str(v)


def plan_recipe(
    recipe: Recipe,
    recipe_path: Path,
    overrides: dict[str, str] | None = None,
    only: list[str] | None = None,
    start_at: str | None = None,
    engine: str | None = None,
    ray_address: str | None = None,
    workers: int | None = None,
) -> list[PlannedStage]:
    """Check every enabled stage against its command and build its argv (nothing runs)."""
    commands = _commands()
    known = set(recipe.vars) | used_variables([s.args for s in recipe.stages]) | used_variables(recipe.vars)
    for key in overrides or {}:
        if key not in known:
            raise RecipeError(
                f"{recipe_path}: --var {key}: the recipe has no variable {key!r} (its variables: {', '.join(sorted(known)) or 'none'})"
            )
    variables = {
        "recipe_dir": str(Path(recipe_path).resolve().parent),
        **{k: str(v) for k, v in recipe.vars.items()},
        **(overrides or {}),
    }
    names = [s.name for s in recipe.stages]
    for n in (only or []) + ([start_at] if start_at else []):
        if n not in names:
            raise RecipeError(f"{recipe_path}: no stage named {n!r} (stages: {', '.join(names)})")
    stages = recipe.stages[names.index(start_at) :] if start_at else recipe.stages
    defaults = {
        "engine": engine or recipe.engine,
        "ray_address": ray_address or recipe.ray_address,
        "workers": workers or recipe.workers,
    }
    forced = {
        k: v for k, v in (("engine", engine), ("ray_address", ray_address), ("workers", workers)) if v is not None
    }
    planned = []
    for st in stages:
        if only and st.name not in only:
            continue
        if not st.enabled and not only:
            log.info("stage %s: enabled: false in the recipe, skipped (run it with --only %s)", st.name, st.name)
            continue
        where = f"{recipe_path}: stage {st.name!r}"
        command = commands.get(st.cmd)
        if command is None:
            raise RecipeError(f"{where}: unknown command {st.cmd!r} (syncam-data has: {', '.join(sorted(commands))})")
        args = substitute(dict(st.args), variables, where)
        params = {p.name for p in command.params}
        for key in PASSTHROUGH:
            given = any(k.replace("-", "_") == key for k in args)
            if key in params and (key in forced or (not given and defaults[key] is not None)):
                args = {k: v for k, v in args.items() if k.replace("-", "_") != key}
                args[key] = forced.get(key, defaults[key])
        planned.append(PlannedStage(st.name, st.cmd, stage_argv(st, args, command, where)))
    return planned


def run_stage(stage: PlannedStage) -> StageOutcome:
    """Run one stage through the syncam-data CLI in this process; never raises for a failing stage."""
    import typer

    from syncam_data.cli import app

    group = typer.main.get_command(app)
    t0 = time.perf_counter()
    log.info("stage %s: %s", stage.name, stage.shell())
    try:
        # The app's root callback resets logging on every invocation: hand it the level `run` was given.
        level = logging.getLogger().level
        verbosity = ["-q"] if level >= logging.WARNING else (["-vv"] if level <= logging.DEBUG else [])
        rv = group.main(args=[*verbosity, stage.command, *stage.argv], prog_name="syncam-data", standalone_mode=False)
        code = rv if isinstance(rv, int) else 0
        msg = ""
    except typer.Exit as e:  # in case the vendored click re-raises instead of returning the code
        code, msg = e.exit_code, ""
    except typer.TyperException as e:  # usage errors: bad option values
        code, msg = e.exit_code, e.format_message()
    except typer.Abort:
        code, msg = 130, "aborted"
    if code and not msg:
        msg = f"`{stage.shell()}` exited with status {code} (see its messages above)"
    return StageOutcome(stage.name, stage.command, int(code), time.perf_counter() - t0, msg)


def run_recipe(stages: list[PlannedStage], recipe_name: str, keep_going: bool = False) -> RunReport:
    report = RunReport(recipe_name)
    for st in stages:
        outcome = run_stage(st)
        report.stages.append(outcome)
        if outcome.exit_code:
            log.error("stage %s failed: %s", st.name, outcome.message)
            if not keep_going:
                break
        else:
            log.info("stage %s done in %.1fs", st.name, outcome.seconds)
    return report
