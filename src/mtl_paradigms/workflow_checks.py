"""Pure helpers of the Snakemake workflow (workflow/rules/common.smk), importable and testable
without Snakemake: run-path formatting, shell quoting and the config checks that run before any
job, each failing with a short message that names the key, what it expected and the config
file(s) that set it.
"""

from __future__ import annotations

import math
import re
import shlex
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "ConfigError",
    "cached_registry_hyperparameters",
    "check_config",
    "check_fixed_from",
    "check_learning_rates",
    "check_method_params",
    "coerce_cli_values",
    "fmt_lr",
    "package_fingerprint",
    "quote",
    "registry_hyperparameters",
    "single_quoted",
    "validate_config",
]

MAX_REPORTED = 10  # schema errors listed at most; the rest are counted


class ConfigError(ValueError):
    """A config the workflow refuses, with a message short enough to read at once."""


# ---- run paths and shell words ------------------------------------------------------------
def fmt_lr(lr: float | int | str) -> str:
    """The learning rate as it appears in run paths (`lr0.001`, `lr1e-05`).

    ``:g`` where it gives back exactly the same float (every learning rate of the shipped
    configs), else ``repr``, the shortest string that does: ``float(fmt_lr(x)) == x`` for
    every finite float, so two different learning rates never share a run directory and a
    run trains at exactly the configured value."""
    value = float(lr)
    short = f"{value:g}"
    return short if float(short) == value else repr(value)


def quote(*words: object) -> str:
    """Shell words, each quoted where it needs it (a path with a space stays one word)."""
    return " ".join(shlex.quote(str(w)) for w in words)


def single_quoted(word: object) -> str:
    """``word`` always in single quotes, read back by the shell as it is (a ' inside is closed,
    escaped and reopened): for params whose text must not change where quote() would drop
    the quotes (Snakemake reruns a job whose params change)."""
    return "'" + str(word).replace("'", "'\"'\"'") + "'"


# ---- learning rates -------------------------------------------------------------------------
def configured_learning_rates(config: Mapping[str, Any]) -> Iterator[tuple[str, Any]]:
    """(config key, value) of every learning rate that names a run directory."""
    main = config.get("main") or {}
    grid = main.get("grid") or {}
    for lr in grid.get("learning_rates") or []:
        yield "main.grid.learning_rates", lr
    for i, sweep in enumerate(grid.get("extra") or []):
        for lr in sweep.get("learning_rates") or []:
            yield f"main.grid.extra[{i}].learning_rates", lr
    for lr in (main.get("stl") or {}).get("learning_rates") or []:
        yield "main.stl.learning_rates", lr
    for lr in ((config.get("celeba") or {}).get("grid") or {}).get("learning_rates") or []:
        yield "celeba.grid.learning_rates", lr


def check_learning_rates(config: Mapping[str, Any], fmt: Callable[[Any], str] = fmt_lr) -> None:
    """Refuse two different configured learning rates that would share a run directory."""
    seen: dict[str, tuple[str, Any]] = {}
    problems = []
    for key, lr in configured_learning_rates(config):
        if not math.isfinite(float(lr)):
            problems.append(f"config {key}: {lr!r} is not a finite learning rate")
            continue
        name = fmt(lr)
        first = seen.setdefault(name, (key, lr))
        if float(first[1]) != float(lr):
            problems.append(
                f"config {key}: learning rate {lr!r} and {first[1]!r} ({first[0]}) would share "
                f"the run directory lr{name}"
            )
    if problems:
        raise ConfigError("\n".join(problems))


# ---- method hyperparameters -----------------------------------------------------------------
def registry_hyperparameters() -> dict[str, list[str]]:
    """Method name -> its hyperparameters, from the package's method registry (imports torch)."""
    from mtl_paradigms.methods.registry import describe_methods

    return {row["name"]: list(row["hyperparameters"]) for row in describe_methods()}


def package_fingerprint() -> str:
    """sha256 of every Python source of the mtl_paradigms package (names and contents): what
    the method registry, and so its hyperparameters, are made of."""
    import hashlib

    root = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


def cached_registry_hyperparameters(
    cache_dir: str | Path,
    compute: Callable[[], Mapping[str, Sequence[str]]] = registry_hyperparameters,
) -> Callable[[], dict[str, list[str]]]:
    """registry_hyperparameters, remembered in ``cache_dir`` under the package's fingerprint
    (package_fingerprint): reading the registry imports torch (seconds, on every Snakemake
    invocation), a changed source reads it afresh. A cache that cannot be read or written is
    ignored."""

    def hyperparameters() -> dict[str, list[str]]:
        import json
        import os
        import tempfile

        path = Path(cache_dir) / f"registry-{package_fingerprint()}.json"
        try:
            found = json.loads(path.read_text())
            if isinstance(found, dict):
                return {str(k): [str(p) for p in v] for k, v in found.items()}
        except (OSError, ValueError, TypeError):
            pass
        known = {name: list(params) for name, params in compute().items()}
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".registry-", suffix=".json")
            with os.fdopen(fd, "w") as f:
                json.dump(known, f, sort_keys=True)
            os.replace(tmp, path)
            for old in path.parent.glob("registry-*.json"):
                if old != path:
                    old.unlink(missing_ok=True)
        except OSError:
            pass
        return known

    return hyperparameters


def check_method_params(
    config: Mapping[str, Any], hyperparameters: Callable[[], Mapping[str, Sequence[str]]]
) -> None:
    """Refuse `method_params` naming an unknown method or hyperparameter.

    ``hyperparameters()`` (the registry, see registry_hyperparameters) is called only when
    some method is given hyperparameters, so a config without any does not import torch."""
    sections = {
        f"{section}.grid.method_params": ((config.get(section) or {}).get("grid") or {}).get(
            "method_params"
        )
        or {}
        for section in ("main", "celeba")
    }
    if not any(params for given in sections.values() for params in given.values()):
        return
    known = hyperparameters()
    problems = []
    for key, given in sections.items():
        for method, params in given.items():
            if method not in known:
                problems.append(
                    f"config {key}: {method!r} is not a method; valid methods: "
                    f"{', '.join(sorted(known))}"
                )
                continue
            unknown = sorted(set(params or {}) - set(known[method]))
            if unknown:
                takes = (
                    f"the hyperparameters of {method} are: {', '.join(known[method])}"
                    if known[method]
                    else f"{method} takes no hyperparameters"
                )
                problems.append(
                    f"config {key}.{method}: unknown hyperparameter(s) {', '.join(unknown)}; "
                    f"{takes}"
                )
    if problems:
        raise ConfigError("\n".join(problems))


FIXED_FROM = "fixed_from_"


def check_fixed_from(config: Mapping[str, Any], methods: Iterable[str]) -> None:
    """Refuse a `fixed_from_<method>` of the main grid or its extra sweeps that names no
    method (the schema only checks the prefix)."""
    known = sorted(methods)
    grid = (config.get("main") or {}).get("grid") or {}
    sweeps = [("main.grid.methods", grid)] + [
        (f"main.grid.extra[{i}].methods", sweep) for i, sweep in enumerate(grid.get("extra") or [])
    ]
    problems = [
        f"config {key}: {method!r} names no method ({method.removeprefix(FIXED_FROM)!r} is not "
        f"one of: {', '.join(known)})"
        for key, sweep in sweeps
        for method in sweep.get("methods") or []
        if method.startswith(FIXED_FROM) and method.removeprefix(FIXED_FROM) not in known
    ]
    if problems:
        raise ConfigError("\n".join(problems))


# ---- the schema -------------------------------------------------------------------------------
def _resolve(node: Any, root: Mapping[str, Any]) -> Any:
    while isinstance(node, Mapping) and isinstance(node.get("$ref"), str):
        ref = node["$ref"]
        if not ref.startswith("#/"):
            break
        target: Any = root
        for part in ref[2:].split("/"):
            target = target[part]
        node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
    return node


def _alternatives(node: Any, root: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The node (references resolved) and every alternative of its anyOf / oneOf / allOf."""
    node = _resolve(node, root)
    if not isinstance(node, Mapping):
        return []
    found = [node]
    for keyword in ("anyOf", "oneOf", "allOf"):
        for sub in node.get(keyword, []):
            found += _alternatives(sub, root)
    return found


def _schemas_at(schema: Mapping[str, Any], path: Sequence[str | int]) -> list[Mapping[str, Any]]:
    """Every schema that may apply at ``path`` (empty where the schema says nothing)."""
    nodes = _alternatives(schema, schema)
    for key in path:
        found = []
        for node in nodes:
            if isinstance(key, int):
                sub = node.get("items")
            elif key in node.get("properties", {}):
                sub = node["properties"][key]
            else:
                sub = node.get("additionalProperties")
            if isinstance(sub, Mapping):
                found += _alternatives(sub, schema)
        nodes = found
    return nodes


def _types(node: Mapping[str, Any]) -> set[str]:
    kind = node.get("type")
    return {kind} if isinstance(kind, str) else set(kind or ())


def _admits_text(node: Mapping[str, Any], text: str) -> bool:
    if "enum" in node:
        return text in node["enum"]
    if "const" in node:
        return text == node["const"]
    if "type" in node:
        return "string" in _types(node)
    # a node of alternatives leaves it to them; a node that constrains nothing admits anything
    return not {"anyOf", "oneOf", "allOf"} & set(node)


def _only_strings(nodes: Sequence[Mapping[str, Any]]) -> bool:
    types = set().union(*map(_types, nodes)) if nodes else set()
    return types == {"string"}


def _from_text(text: str, nodes: Sequence[Mapping[str, Any]]) -> Any:
    """``text`` as the value the schema asks for: a number, boolean or null where the schema
    admits one and not the string itself (gradstats.lr keeps "selected")."""
    if not nodes:  # the schema says nothing (method hyperparameters): as a config file reads it
        import yaml

        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            return text
        return value if isinstance(value, int | float | bool) or value is None else text
    if any(_admits_text(node, text) for node in nodes):
        return text
    types = set().union(*map(_types, nodes))
    word = text.strip()
    if types & {"integer", "number"} and re.fullmatch(r"[+-]?[0-9]+", word):
        return int(word)
    if "number" in types:
        try:
            value = float(word)
        except ValueError:
            pass
        else:
            if math.isfinite(value):
                return value
    if "boolean" in types and word.lower() in ("true", "false"):
        return word.lower() == "true"
    if "null" in types and word in ("null", "~"):
        return None
    return text


def coerce_cli_values(
    config: dict[str, Any], cli_config: Mapping[str, Any], schema: Mapping[str, Any]
) -> None:
    """Give `--config` values the types the schema asks for, in ``config`` (in place).

    Snakemake reads a nested `--config key={...}` value with YAML's BaseLoader, so every
    number, boolean and null in it arrives as a string ("3", "true"); a top-level
    `--config key=2024` arrives as a number, a string where the schema asks for one. Only
    values given on the command line (``cli_config``) are touched; config files are read as
    they are."""

    def walk(value: Any, path: list[str | int]) -> None:
        if isinstance(value, Mapping):
            for key, sub in value.items():
                walk(sub, [*path, key])
        elif isinstance(value, list):
            for i, sub in enumerate(value):
                walk(sub, [*path, i])
        elif isinstance(value, str | int) and path:
            parent: Any = config
            try:
                for key in path[:-1]:
                    parent = parent[key]
                if parent[path[-1]] != value or type(parent[path[-1]]) is not type(value):
                    return  # not the command line's value (cannot happen: it is merged last)
            except (KeyError, IndexError, TypeError):
                return
            nodes = _schemas_at(schema, path)
            if isinstance(value, str):
                parent[path[-1]] = _from_text(value, nodes)
            elif not isinstance(value, bool) and _only_strings(nodes):
                # a top-level `--config results_dir=2024`: Snakemake made it a number
                parent[path[-1]] = str(value)

    walk(cli_config, [])


def _where(path: Iterable[str | int]) -> str:
    text = ""
    for key in path:
        text += f"[{key}]" if isinstance(key, int) else f".{key}" if text else str(key)
    return text


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 5] + " ...>"


def _options(nodes: Sequence[Mapping[str, Any]]) -> str | None:
    """The admitted values of enum / const / pattern alternatives, or None if others exist."""
    options = []
    for node in nodes:
        if "enum" in node:
            options += sorted(str(v) for v in node["enum"])
        elif "const" in node:
            options.append(str(node["const"]))
        elif "pattern" in node:
            options.append(f"or a string matching {node['pattern']}")
        elif not ({"anyOf", "oneOf", "allOf"} & set(node)):
            return None
    return ", ".join(options)


def _sources(
    path: Sequence[str | int], sources: Sequence[tuple[str, Mapping[str, Any]]]
) -> list[str]:
    """The config files (and `--config`) that set the value at ``path``."""
    found = []
    for name, data in sources:
        node: Any = data
        try:
            for key in path:
                node = node[key]
        except (KeyError, IndexError, TypeError):
            continue
        found.append(name)
    return found


def _describe(error: Any, root: Mapping[str, Any]) -> tuple[list[str | int], str]:
    """(path of the offending value, one line on what is wrong and what was expected)."""
    path = list(error.absolute_path)
    where = _where(path) or "the top level"
    schema = error.schema if isinstance(error.schema, Mapping) else {}
    if error.validator == "additionalProperties" and isinstance(error.instance, Mapping):
        allowed = sorted(schema.get("properties", {}))
        unknown = sorted(set(error.instance) - set(allowed))
        keys = ", ".join(_where([*path, key]) for key in unknown)
        section = f"in {where}" if path else "at the top level"
        return [*path, unknown[0]] if unknown else path, (
            f"{keys}: unknown key; allowed keys {section}: {', '.join(allowed)}"
        )
    if "propertyNames" in error.relative_schema_path:
        return [*path, str(error.instance)], (
            f"{where}: unknown key {_short(error.instance)}; valid keys: {_options([schema])}"
        )
    if error.validator in ("enum", "const"):
        return path, f"{where}: {_short(error.instance)} is not one of: {_options([schema])}"
    if error.validator in ("anyOf", "oneOf"):
        options = _options(_alternatives(schema, root)[1:])
        if options is not None:
            return path, f"{where}: {_short(error.instance)} is not one of: {options}"
        expected = sorted({sub.message for sub in error.context})
        return path, f"{where}: {_short(error.instance)} is not valid: {'; or '.join(expected)}"
    if error.validator == "type":
        kinds = schema.get("type")
        kinds = " or ".join(kinds) if isinstance(kinds, list) else kinds
        return path, f"{where}: {_short(error.instance)} is not of type {kinds}"
    message = error.message
    if len(message) > 200:
        message = message[:195] + " ..."
    return path, f"{where}: {message}"


def validate_config(
    config: dict[str, Any],
    schema: Mapping[str, Any],
    sources: Sequence[tuple[str, Mapping[str, Any]]] = (),
    set_default: bool = True,
) -> None:
    """Validate ``config`` against the JSON schema, filling in the schema's `default`s (as
    snakemake.utils.validate does with set_default=True); raise ConfigError listing each
    problem on one line: the key path, what was expected and where it was set."""
    from jsonschema import Draft202012Validator, validators

    def set_defaults(validator: Any, properties: Any, instance: Any, node: Any) -> Iterator[Any]:
        if isinstance(instance, dict):
            for name, sub in properties.items():
                if isinstance(sub, Mapping) and "default" in sub:
                    instance.setdefault(name, sub["default"])
        yield from Draft202012Validator.VALIDATORS["properties"](
            validator, properties, instance, node
        )

    cls = (
        validators.extend(Draft202012Validator, {"properties": set_defaults})
        if set_default
        else Draft202012Validator
    )
    errors = sorted(cls(schema).iter_errors(config), key=lambda e: [str(p) for p in e.path])
    if not errors:
        return
    lines = []
    for error in errors[:MAX_REPORTED]:
        path, text = _describe(error, schema)
        # the last source that sets the value is the one that counts (later ones override)
        setters = _sources(path, sources) or _sources(path[:-1], sources)
        lines.append(f"  {text}" + (f" (set in {setters[-1]})" if setters else ""))
    if len(errors) > MAX_REPORTED:
        lines.append(f"  ... and {len(errors) - MAX_REPORTED} more")
    files = ", ".join(name for name, _ in sources) or "the config"
    head = f"Invalid config ({files}), checked by workflow/schemas/config.schema.yaml:"
    raise ConfigError("\n".join([head, *dict.fromkeys(lines)]))


def check_config(
    config: dict[str, Any],
    schema: Mapping[str, Any],
    sources: Sequence[tuple[str, Mapping[str, Any]]] = (),
    cli_config: Mapping[str, Any] | None = None,
    hyperparameters: Callable[[], Mapping[str, Sequence[str]]] = registry_hyperparameters,
    validate: bool = True,
) -> None:
    """Every check of the workflow's config, in order: `--config` values typed, the schema
    (with its defaults), fixed_from_<method> sources, method hyperparameters, learning rates
    of the run paths."""
    if cli_config:
        coerce_cli_values(config, cli_config, schema)
    if validate:
        validate_config(config, schema, sources)
    check_fixed_from(config, (schema.get("$defs") or {}).get("method", {}).get("enum", []))
    check_method_params(config, hyperparameters)
    check_learning_rates(config)


def config_sources(
    configfiles: Iterable[str | Path],
    overwrite_configfiles: Iterable[str | Path] = (),
    cli_config: Mapping[str, Any] | None = None,
) -> list[tuple[str, Mapping[str, Any]]]:
    """(name, content) of each config file in the order Snakemake merges them (the Snakefile's
    `configfile:`, then each `--configfile`), then `--config`."""
    import yaml

    overwrite = [Path(f).absolute() for f in overwrite_configfiles]
    paths = [Path(f).absolute() for f in configfiles]
    ordered = [p for p in paths if p not in overwrite] + overwrite
    sources: list[tuple[str, Mapping[str, Any]]] = []
    cwd = Path.cwd()
    for path in dict.fromkeys(ordered):
        name = str(path.relative_to(cwd)) if path.is_relative_to(cwd) else str(path)
        try:
            with open(path) as f:
                data = yaml.safe_load(f) or {}
        except (OSError, yaml.YAMLError):
            data = {}
        sources.append((name, data))
    if cli_config:
        sources.append(("--config", cli_config))
    return sources
