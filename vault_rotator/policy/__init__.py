"""Rotation policy files: one YAML file per environment, loaded into frozen, validated models.

Modules, from the bottom up::

    problems     Problem, PolicyError, PolicyValueError
    durations    parse_duration / format_duration ("90s", "1.5h", "7d")
    naming       key_name templates: render_key_name
    schedule     cron (UTC, crontab(5) through cronsim), @aliases, "every 30d"
    window       "Mon-Fri 09:00-17:00" maintenance windows
    defaults     built-in defaults, documented in one table
    fields       validated value types shared by the file schema and the model
    namespace    one namespace per deployment: which Vault paths a policy may name
    yamlsource   YAML -> plain data + the line of every node
    schema       the raw file models and pydantic errors as problems
    model        KeyPolicy, EnvironmentPolicy, PolicySet: what the engine and daemon use
    build        one file: defaults merged, per-file rules
    loader       a directory: discovery, cross-file rules, load_policies
"""

from __future__ import annotations

from vault_rotator.policy.durations import format_duration, parse_duration
from vault_rotator.policy.loader import load_policies, resolve_config_dir
from vault_rotator.policy.model import (
    Account,
    EnvironmentPolicy,
    KeyPolicy,
    ManagementKeyRef,
    PolicySet,
    ProviderPolicy,
    VaultPolicy,
)
from vault_rotator.policy.naming import DEFAULT_KEY_NAME, render_key_name
from vault_rotator.policy.problems import PolicyError, PolicyValueError, Problem
from vault_rotator.policy.schedule import Schedule, next_fire, parse_schedule
from vault_rotator.policy.window import Window, parse_window

__all__ = [
    "DEFAULT_KEY_NAME",
    "Account",
    "EnvironmentPolicy",
    "KeyPolicy",
    "ManagementKeyRef",
    "PolicyError",
    "PolicySet",
    "PolicyValueError",
    "Problem",
    "ProviderPolicy",
    "Schedule",
    "VaultPolicy",
    "Window",
    "format_duration",
    "load_policies",
    "next_fire",
    "parse_duration",
    "parse_schedule",
    "parse_window",
    "render_key_name",
    "resolve_config_dir",
]
