"""The method library's layout: one module per method, named after it, and complete exports."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from pathlib import Path

import pytest

import mtl_paradigms.methods as methods
from mtl_paradigms.methods import METHODS, Aggregator, Strategy, Weighting

FAMILIES = ("weightings", "aggregators", "strategies")
PACKAGES = ["mtl_paradigms.methods", *(f"mtl_paradigms.methods.{f}" for f in FAMILIES)]


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_registered_method_is_exported_and_lives_in_a_module_named_after_it(
    name: str,
) -> None:
    cls = METHODS[name]
    assert cls.name == name
    assert getattr(methods, cls.__name__) is cls
    assert cls.__name__ in methods.__all__
    family, _, module = cls.__module__.removeprefix("mtl_paradigms.methods.").partition(".")
    assert (family, module) in {(f, name) for f in FAMILIES}, cls.__module__
    package = importlib.import_module(f"mtl_paradigms.methods.{family}")
    assert cls.__name__ in package.__all__
    kind = {"weightings": Weighting, "aggregators": Aggregator, "strategies": Strategy}[family]
    assert issubclass(cls, kind)


def test_every_method_module_holds_a_registered_method() -> None:
    """No stray module: each public module of a family is a registered method's."""
    for family in FAMILIES:
        package = importlib.import_module(f"mtl_paradigms.methods.{family}")
        modules = {m.name for m in pkgutil.iter_modules(package.__path__)}
        public = {m for m in modules if not m.startswith("_")}
        registered = {n for n, c in METHODS.items() if c.__module__.split(".")[2] == family}
        assert public == registered, family


@pytest.mark.parametrize("package", PACKAGES)
def test_package_all_is_complete(package: str) -> None:
    """``__all__`` resolves, and names every public class the package exposes."""
    module = importlib.import_module(package)
    assert len(module.__all__) == len(set(module.__all__))
    for name in module.__all__:
        assert hasattr(module, name), f"{package}.{name}"
    exposed = {
        n
        for n, v in vars(module).items()
        if inspect.isclass(v) and not n.startswith("_") and v.__module__.startswith(package)
    }
    assert exposed <= set(module.__all__), sorted(exposed - set(module.__all__))


def test_public_functions_of_the_registry_are_exported() -> None:
    for name in ("METHODS", "make_method", "describe_methods"):
        assert name in methods.__all__


def test_no_module_of_the_method_library_exceeds_500_lines() -> None:
    root = Path(methods.__file__).parent
    for path in root.rglob("*.py"):
        assert len(path.read_text().splitlines()) <= 500, path
