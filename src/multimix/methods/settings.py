"""Every method's settings, read from the constructors: the one source of truth.

A method's settings are the keyword arguments of its class (and of the classes
its ``**kwargs`` reach), with their annotated types, defaults and the help
text of the class docstring's ``Args:`` section. The command line's method
flags, the validation of YAML recipes and of bench entries and tuning grids
all derive from :func:`method_settings`; nothing restates a setting.

Arguments that are objects rather than settings (``num_classes``,
``generator``, ``distill``, ``criterion``, a MixupE ``base`` instance, a
distillation ``model``) are not settings.
"""

from __future__ import annotations

import inspect
import re
import typing
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple

from ..checks import check_type, describe_type

__all__ = ["Setting", "settings_of", "check_settings", "parse_docstring_args"]

# Constructor arguments that the trainer supplies as objects: never user settings.
NOT_SETTINGS = frozenset({"self", "num_classes", "generator", "distill", "model", "criterion"})


@dataclass(frozen=True)
class Setting:
    """One keyword argument of a method: name, annotated type, default (``inspect.Parameter.empty`` if
    required, ``None`` where the default depends on other settings) and help text."""

    name: str
    annotation: Any
    default: Any
    help: str

    @property
    def type_name(self) -> str:
        return describe_type(self.annotation)

    def check(self, value: Any, where: str) -> Any:
        """``value`` if it has this setting's type; else ``TypeError``/``ValueError`` naming ``where.name``."""
        return check_type(value, self.annotation, f"{where}.{self.name}" if where else self.name)


def parse_docstring_args(doc: Optional[str]) -> Dict[str, str]:
    """``{name: text}`` of the entries of every ``Args...:`` section of a Google-style docstring."""
    found: Dict[str, str] = {}
    lines = inspect.cleandoc(doc or "").splitlines()
    in_args, indent, current = False, None, None
    for line in lines:
        if re.match(r"^Args\b.*:$", line.strip()) and not line.startswith(" "):
            in_args, indent, current = True, None, None
            continue
        if not in_args:
            continue
        if line.strip() and not line.startswith(" "):
            in_args = False  # the next section ("Call:", prose)
            continue
        entry = re.match(r"^(\s+)(\*{0,2}\w+): ?(.*)$", line)
        if entry and (indent is None or len(entry.group(1)) == indent):
            indent = len(entry.group(1))
            current = entry.group(2)
            found[current] = entry.group(3).strip()
        elif current is not None and line.strip():
            found[current] += " " + line.strip()
    return found


def _parameters(cls: type) -> List[Tuple[inspect.Parameter, Any, str]]:
    """(parameter, resolved annotation, help) of ``cls.__init__`` and, while it takes ``**kwargs``, of the
    ``__init__`` of the next class in the MRO that defines one."""
    out: Dict[str, Tuple[inspect.Parameter, Any, str]] = {}
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None or klass is object:
            continue
        hints = typing.get_type_hints(init, globalns=vars(inspect.getmodule(klass)))
        docs = parse_docstring_args(klass.__doc__)
        takes_more = False
        for p in inspect.signature(init).parameters.values():
            if p.kind is p.VAR_KEYWORD:
                takes_more = True
            elif p.kind is not p.VAR_POSITIONAL:
                if p.name not in out:
                    out[p.name] = (p, hints.get(p.name, Any), docs.get(p.name, ""))
                elif not out[p.name][2]:  # re-declared without a doc entry: the base class documents it
                    out[p.name] = (*out[p.name][:2], docs.get(p.name, ""))
        if not takes_more:
            break
    return list(out.values())


def _first_sentence(text: str) -> str:
    text = re.sub(r"``([^`]*)``", r"\1", re.sub(r":\w+:`~?([^`]*)`", r"\1", text))
    end = re.search(r"\.(\s|$)", text)
    return text[: end.start() + 1] if end else text


def settings_of(*classes: type, exclude: Iterable[str] = (), extra: Mapping[str, Setting] = ()) -> Dict[str, Setting]:
    """The settings of ``classes`` (first declaration wins), plus ``extra``, minus ``exclude``."""
    skip = NOT_SETTINGS | set(exclude)
    found: Dict[str, Setting] = dict(extra)
    for cls in classes:
        for p, annotation, help_text in _parameters(cls):
            if p.name in skip or p.name in found:
                continue
            default = p.default if _is_plain_default(p.default) else None
            found[p.name] = Setting(p.name, annotation, default, _first_sentence(help_text))
    return found


def _is_plain_default(value: Any) -> bool:
    return value is inspect.Parameter.empty or value is None or isinstance(value, (bool, int, float, str, tuple))


def check_settings(values: Any, settings: Mapping[str, Setting], where: str,
                   owner_of: Optional[Callable[[str], List[str]]] = None) -> Dict[str, Any]:
    """Check a mapping of settings: every key known, every value of its setting's type.

    Raises ``ValueError`` naming ``where``, the key and the valid keys (and, via
    ``owner_of``, which other owners take an unknown key), or ``TypeError``
    naming the key and the expected type. Returns a plain ``dict`` copy.
    """
    if values is None:
        return {}
    if not isinstance(values, Mapping):
        raise TypeError(f"{where} must be a mapping of settings, got {type(values).__name__}")
    for key, value in values.items():
        if key not in settings:
            owners = owner_of(key) if owner_of else []
            hint = f" ({key} belongs to {', '.join(owners)})" if owners else ""
            raise ValueError(f"{where} has unknown key {key!r}{hint}; valid keys: {', '.join(settings) or 'none'}")
        settings[key].check(value, where)
    return dict(values)
