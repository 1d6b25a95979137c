"""Every error a user can cause, in the project's one-line form: Hydra's and OmegaConf's included.

Hydra reports a bad override in 4-19 lines with exit code 1, suggests ``+key=value`` for a typo
(which then runs with the typo ignored) and lists internal schema names (``base_model``) among a
group's options. ``user_error`` turns each of those exceptions into one ``UserError`` that names
the key, the value, and the fix; ``check_known_keys`` keeps ``+data.formt=json`` out of our schemas.
"""

from __future__ import annotations

import dataclasses
import difflib
import errno
from typing import Any

from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException, ValidationError

from agent_align.errors import UserError

# OSErrors a user causes with a path (a run_dir that is a file, a read-only disk, a full disk ...)
USER_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.EEXIST, errno.ENOTDIR, errno.EISDIR, errno.ENOSPC,
               errno.ENAMETOOLONG, errno.EDQUOT, errno.ELOOP}


def closest(name: str, valid, prefix: str = "") -> str:
    """"; did you mean 'x'?" for the nearest valid name, or ''."""
    match = difflib.get_close_matches(name, [str(v) for v in valid], n=1, cutoff=0.6)
    return f"; did you mean '{prefix}{match[0]}'?" if match else ""


def unknown_key(full_key: str, valid) -> UserError:
    valid = sorted(str(v) for v in valid)
    parent, _, leaf = full_key.rpartition(".")
    where = f"'{parent}'" if parent else "the top level"
    listing = ", ".join(valid) if len(valid) <= 12 else ", ".join(valid[:12]) + ", ..."
    hint = closest(leaf, valid, f"{parent}." if parent else "")
    return UserError(f"config key '{full_key}' is not known{hint} (keys in {where}: {listing})")


def _schema_fields(node: Any) -> list[str] | None:
    typ = OmegaConf.get_type(node)
    if typ is not None and dataclasses.is_dataclass(typ):
        return [f.name for f in dataclasses.fields(typ)]
    return None


def check_known_keys(cfg: DictConfig, prefix: str = "") -> None:
    """Every key of a schema-backed node is a field of its dataclass. Hydra's ``+key=value`` opens
    struct mode for the one assignment; this closes that door for our schemas (Dict fields such as
    data.negative_weights take new keys and are checked by their own rules)."""
    fields = _schema_fields(cfg)
    for key in cfg.keys():
        full = f"{prefix}{key}"
        if full == "hydra":  # Hydra's own node, present when composed with return_hydra_config
            continue
        if fields is not None and key not in fields:
            raise unknown_key(full, fields)
        child = cfg._get_node(key)
        if isinstance(child, DictConfig) and not child._is_missing() and not child._is_none():
            check_known_keys(child, f"{full}.")


def _expected(obj_type: Any, key: Any) -> str:
    if obj_type is not None and dataclasses.is_dataclass(obj_type):
        for f in dataclasses.fields(obj_type):
            if f.name == key:
                t = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
                return f"; expected {t}"
    return ""


def _first_line(text: str) -> str:
    return next((line.strip() for line in str(text).splitlines() if line.strip()), "")


def _group_options(exc: MissingConfigException) -> tuple[str, str, list[str]]:
    missing = str(exc.missing_cfg_file or "")
    group, _, name = missing.rpartition("/")
    schema_names = {f"base_{group.rsplit('/', 1)[-1]}", "base_config"}  # our ConfigStore schemas, not choices
    options = [o for o in (exc.options or []) if o not in schema_names]
    return group, name, options


def user_error(exc: BaseException, hydra_level: bool = False) -> UserError | None:
    """The one-line UserError for an exception a user caused, or None for a bug. ``hydra_level``:
    raised by Hydra before our code ran, where an OSError means the run directory is unusable."""
    if isinstance(exc, UserError):
        return exc
    if isinstance(exc, OverrideParseException):
        return UserError(f"cannot parse override '{exc.override}': {_first_line(exc.message)} (overrides look like "
                         "key=value, group=option or +experiment=NAME; quote values holding spaces or brackets)")
    if isinstance(exc, MissingConfigException):
        group, name, options = _group_options(exc)
        if group and options:
            return UserError(f"config group '{group}' has no option '{name}'{closest(name, options)} "
                             f"(valid: {', '.join(sorted(options))})")
        return UserError(_first_line(str(exc)))
    cause = exc.__cause__ if isinstance(exc, ConfigCompositionException) else exc
    if isinstance(cause, (ConfigKeyError, ConfigAttributeError)):
        full = cause.full_key or str(cause.key)
        parent = getattr(cause, "parent_node", None)
        valid = _schema_fields(parent) if parent is not None else None
        if valid is None and isinstance(parent, DictConfig):
            valid = list(parent.keys())
        if valid is None and dataclasses.is_dataclass(cause.object_type):
            valid = [f.name for f in dataclasses.fields(cause.object_type)]
        return unknown_key(str(full), valid or [])
    if isinstance(cause, ValidationError):
        full = cause.full_key or str(cause.key)
        return UserError(f"config key '{full}': {_first_line(cause.msg)}{_expected(cause.object_type, cause.key)}")
    if isinstance(cause, OmegaConfBaseException):
        full = f"config key '{cause.full_key}': " if getattr(cause, "full_key", None) else ""
        return UserError(f"{full}{_first_line(cause.msg or str(cause))}")
    if isinstance(exc, ConfigCompositionException):
        return UserError(_first_line(str(exc)) or "the config did not compose")
    if hydra_level and isinstance(exc, OSError) and exc.filename:
        return UserError(f"cannot create the run directory: {exc.filename}: {exc.strerror} "
                         "(set run_dir=DIR to a writable directory)")
    if isinstance(exc, OSError) and exc.errno in USER_ERRNOS and exc.filename:
        return UserError(f"{exc.filename}: {exc.strerror} (check run_dir and the paths you passed; "
                         "the run directory must be a writable directory)")
    return None
