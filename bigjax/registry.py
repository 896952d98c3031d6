"""Name -> object resolution, one registry per kind (model, loss, optimizer, data source).

A config names a component either by a built-in name ("adam") or by a dotted path to the
user's own code ("myproject.losses:focal_loss"). Users can also add names with the
`register` decorator before calling bigjax. Unknown names fail with the known ones listed
and the nearest suggested.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import re
from typing import Any, Callable, Iterable, Mapping


class ConfigError(ValueError):
  """A config value that bigjax cannot use; the message says what to change."""


def did_you_mean(name: str, known: Iterable[str]) -> str:
  """' Did you mean "x"?' for the closest known name, or ''."""
  close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
  return f' Did you mean "{close[0]}"?' if close else ""


# Where plugin paths may not come from: a workdir's config.json is data, not code (a shared
# or downloaded run must not run its own imports when evaluated). None: every path is allowed.
_untrusted_source: str | None = None
PLUGIN_PATH = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$")


def plugin_paths(config: Mapping[str, Any], prefix: str = "") -> list[str]:
  """'key=package.module:name' for every value (or comma-separated item) of a config that
  names code to import."""
  found = []
  for key, value in config.items():
    where = f"{prefix}{key}"
    if isinstance(value, Mapping) or hasattr(value, "items"):  # (a ConfigDict is no Mapping)
      found += plugin_paths(value, where + ".")
      continue
    items = value if isinstance(value, (list, tuple)) else [value]
    for item in items:
      if isinstance(item, str):
        found += [f"{where}={token.strip()}" for token in item.split(",")
                  if PLUGIN_PATH.match(token.strip())]
  return found


def refuse_plugins_from(source: str, config: Mapping[str, Any]) -> None:
  """Resolve only built-in names from now on, `source` being where the config came from;
  fails at once, naming each, if the config names any plugin path."""
  global _untrusted_source
  _untrusted_source = source
  check_no_plugins(source, config)


def check_no_plugins(source: str, config: Mapping[str, Any]) -> None:
  """Fails, naming each, if a config read from `source` names a plugin path (and changes
  nothing else: for a second run's config read inside this one, such as a teacher's)."""
  named = plugin_paths(config)
  if named:
    raise ConfigError(
        f"{source} names code to import ({'; '.join(named)}). A workdir's config.json is "
        "data: bigjax resolves only its built-in names. If you trust that code, add "
        "--trust_plugins (or pass the run's --config file).")


def trust_plugins() -> None:
  global _untrusted_source
  _untrusted_source = None


def import_object(path: str, kind: str = "object") -> Any:
  """Imports 'package.module:attribute' (or 'package.module.attribute')."""
  if _untrusted_source is not None:
    raise ConfigError(
        f'{_untrusted_source} names the {kind} "{path}", code to import. A workdir\'s '
        "config.json is data: bigjax resolves only its built-in names. If you trust that "
        "code, add --trust_plugins (or pass the run's --config file).")
  if ":" in path:
    module_name, _, attr = path.partition(":")
  else:
    module_name, _, attr = path.rpartition(".")
  if not module_name or not attr:
    raise ConfigError(
        f'Cannot import {kind} "{path}": expected "package.module:name", e.g. '
        '"myproject.losses:focal_loss".')
  try:
    module = importlib.import_module(module_name)
  except ImportError as e:
    raise ConfigError(
        f'Cannot import {kind} "{path}": module "{module_name}" failed to import ({e}). '
        "Check the spelling and that the module is on PYTHONPATH.") from e
  try:
    return getattr(module, attr)
  except AttributeError as e:
    public = [n for n in dir(module) if not n.startswith("_")]
    raise ConfigError(
        f'Cannot import {kind} "{path}": module "{module_name}" has no attribute '
        f'"{attr}".{did_you_mean(attr, public)}') from e


class Registry:
  """A named catalogue of one kind of component."""

  def __init__(self, kind: str):
    self.kind = kind
    self._entries: dict[str, Any] = {}

  def register(self, name: str, *, overwrite: bool = False) -> Callable[[Any], Any]:
    """Decorator: `@registry.register("name")` adds an entry under `name`."""
    def add(obj):
      if name in self._entries and not overwrite:
        raise ValueError(f'{self.kind} "{name}" is already registered; '
                         "pass overwrite=True to replace it.")
      self._entries[name] = obj
      return obj
    return add

  def unregister(self, name: str) -> None:
    """Removes `name` (e.g. a test's or a notebook cell's temporary entry)."""
    self._entries.pop(name, None)

  def names(self) -> list[str]:
    return sorted(self._entries)

  def __contains__(self, name: str) -> bool:
    return name in self._entries

  def get(self, name: str) -> Any:
    """Resolves a registered name or a dotted path."""
    if name in self._entries:
      return self._entries[name]
    if ":" in name or "." in name:
      return import_object(name, self.kind)
    raise ConfigError(
        f'Unknown {self.kind} "{name}".{did_you_mean(name, self._entries)} '
        f"Known {self.kind}{'es' if self.kind.endswith('s') else 's'}: "
        f"{', '.join(self.names())}. "
        'Or name your own as "package.module:attribute".')


def accepted_arguments(fn: Callable) -> list[str] | None:
  """Keyword arguments `fn` accepts, or None when it takes **kwargs or has no signature."""
  try:
    params = inspect.signature(fn).parameters
  except (TypeError, ValueError):
    return None
  if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
    return None
  return list(params)


def check_arguments(kind: str, name: str, fn: Callable, kwargs: Mapping[str, Any],
                    config_group: str) -> None:
  """Fails, with a did-you-mean, if `fn` does not take every key of `kwargs`."""
  accepted = accepted_arguments(fn)
  if accepted is not None:
    check_keys(kind, name, accepted, kwargs, config_group)


def check_keys(kind: str, name: str, accepted: list[str], kwargs: Mapping[str, Any],
               config_group: str) -> None:
  """Fails, with a did-you-mean, if any key of `kwargs` is not in `accepted`."""
  unknown = [k for k in kwargs if k not in accepted]
  if unknown:
    hints = "".join(did_you_mean(k, accepted) for k in unknown)
    raise ConfigError(
        f'{config_group} has keys {unknown} that {kind} "{name}" does not take.{hints} '
        f"It takes: {', '.join(accepted)}.")
