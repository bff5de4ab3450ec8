"""Load every policy file of a config directory and check the rules that span files.

Files are ``*.yaml`` and ``*.yml`` directly in the directory (hidden files skipped), read in
name order. Across files: ``environment`` is unique; a ``secret_path`` belongs to one key and is
never a management key's path; files that share a provider account (base URL, KV mount and
management-key path) configure it identically; a management key is used with one base URL;
an ``adopt_key_id`` is adopted once per account. The later occurrence is the one reported. And
one namespace per deployment (:mod:`~vault_rotator.policy.namespace`): in one KV mount, no path
lies inside another file's ``state_prefix``, reported where the path is written, whichever file
comes first.

A directory holds at most 100 policy files (``MAX_FILES``); with more, none is read. Each file
has its own limits (:mod:`~vault_rotator.policy.yamlsource`, :mod:`~vault_rotator.policy.build`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from vault_rotator.files import why_not_regular
from vault_rotator.policy.build import build_environment
from vault_rotator.policy.fields import normalize_vault_path
from vault_rotator.policy.model import Account, EnvironmentPolicy, PolicySet
from vault_rotator.policy.namespace import enclosing
from vault_rotator.policy.problems import PolicyError, PolicyValueError, Problem, clipped, shown
from vault_rotator.policy.schema import dotted
from vault_rotator.policy.yamlsource import Document, NodePath, read_document

CONFIG_ENV = "VAULT_ROTATOR_CONFIG"
DEFAULT_CONFIG_DIR = "config"
MAX_FILES = 100
_ACCOUNT_SETTINGS = (
    "type",
    "dialect",
    "management_key",
    "usage_lag_s",
    "poll_interval_s",
    "max_concurrent",
)


@dataclass(frozen=True)
class _Site:
    """Where a value was found: its document and node path."""

    doc: Document
    path: NodePath

    @property
    def where(self) -> str:
        return f"{self.doc.file}:{self.doc.line_of(self.path)}"


def resolve_config_dir(arg: str | None) -> Path:
    """``--config`` if given, else ``$VAULT_ROTATOR_CONFIG``, else ``config``."""
    return Path(arg or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG_DIR)


def policy_files(config_dir: Path) -> list[Path]:
    """The policy files of a directory, in name order (hidden names skipped: Kubernetes keeps
    a ConfigMap's real files under ``..data``). Whether each is a readable file is checked when
    it is loaded: a dangling link or a FIFO is a problem, never silently skipped."""
    found = [*config_dir.glob("*.yaml"), *config_dir.glob("*.yml")]
    return sorted(path for path in found if not path.name.startswith("."))


def load_policies(config_dir: Path) -> PolicySet:
    """Load and validate every file; PolicyError listing every problem if any is an error."""
    problems, loaded = _load_all(config_dir)
    if any(problem.is_error for problem in problems):
        raise PolicyError(problems)
    environments = {env.environment: env for env, _doc in loaded}
    return PolicySet(environments, sorted(problems, key=Problem.sort_key))


def _load_all(config_dir: Path) -> tuple[list[Problem], list[tuple[EnvironmentPolicy, Document]]]:
    if not config_dir.is_dir():
        return [Problem(config_dir, None, "config directory not found")], []
    files = policy_files(config_dir)
    if not files:
        return [Problem(config_dir, None, "no policy files (*.yaml, *.yml) in this directory")], []
    if len(files) > MAX_FILES:
        message = f"{len(files)} policy files; at most {MAX_FILES} are read"
        return [Problem(config_dir, None, message)], []
    problems: list[Problem] = []
    docs: list[Document] = []
    loaded: list[tuple[EnvironmentPolicy, Document]] = []
    for file in files:
        if (why := why_not_regular(file)) is not None:  # never opened: a FIFO would block
            problems.append(Problem(file, None, why))
            continue
        doc, read_problems = read_document(file)
        problems += read_problems
        if doc is None:
            continue
        docs.append(doc)
        environment, build_problems = build_environment(doc)
        problems += build_problems
        if environment is not None and not read_problems:
            loaded.append((environment, doc))
    problems += _unique_environments(docs) + _secret_path_checks(docs)
    problems += _account_checks(loaded) + _key_url_checks(loaded) + _adoption_checks(loaded)
    problems += _namespace_checks(loaded)
    return problems, loaded


def _unique_environments(docs: list[Document]) -> list[Problem]:
    first: dict[str, _Site] = {}
    problems: list[Problem] = []
    for doc in docs:
        env = _get(doc.data, ("environment",))
        if not isinstance(env, str):
            continue
        if env in first:
            message = f"environment {shown(env)} is already defined at {first[env].where}"
            problems.append(doc.problem(("environment",), message))
        else:
            first[env] = _Site(doc, ("environment",))
    return problems


def _secret_path_checks(docs: list[Document]) -> list[Problem]:
    management = {path: site for doc in docs for path, site in _management_paths(doc)}
    first: dict[str, _Site] = {}
    problems: list[Problem] = []
    for doc in docs:
        for path, site in _secret_paths(doc):
            if path in management:
                where = management[path].where
                message = f"secret_path {shown(path)} is the management key's path at {where}"
                problems.append(doc.problem(site.path, message))
            elif path in first:
                other = first[path]
                message = (
                    f"secret_path {shown(path)} is already used by {_key_label(other)} at "
                    f"{other.where}"
                )
                problems.append(doc.problem(site.path, message))
            else:
                first[path] = site
    return problems


def _management_paths(doc: Document) -> Iterator[tuple[str, _Site]]:
    node_path: NodePath = ("provider", "management_key", "path")
    path = _normalized(_get(doc.data, node_path))
    if path is not None:
        yield path, _Site(doc, node_path)


def _secret_paths(doc: Document) -> Iterator[tuple[str, _Site]]:
    items = _get(doc.data, ("keys",))
    for index in range(len(items) if isinstance(items, list) else 0):
        node_path: NodePath = ("keys", index, "secret_path")
        path = _normalized(_get(doc.data, node_path))
        if path is not None:
            yield path, _Site(doc, node_path)


def _key_label(site: _Site) -> str:
    env = _get(site.doc.data, ("environment",))
    name = _get(site.doc.data, (*site.path[:2], "name"))
    if isinstance(env, str) and isinstance(name, str):
        return f"key {clipped(env)}/{clipped(name)}"
    return f"{site.path[0]}[{site.path[1]}]"


def _account_checks(loaded: list[tuple[EnvironmentPolicy, Document]]) -> list[Problem]:
    first: dict[Account, tuple[EnvironmentPolicy, Document]] = {}
    problems: list[Problem] = []
    for env, doc in loaded:
        other = first.setdefault(env.account, (env, doc))
        if other[0] is env:
            continue
        differ = [
            name
            for name in _ACCOUNT_SETTINGS
            if getattr(env.provider, name) != getattr(other[0].provider, name)
        ]
        if differ:
            message = (
                f"provider account {env.account} is also used by {other[1].file} with a "
                f"different {', '.join(differ)}; files sharing an account must configure it alike"
            )
            problems.append(doc.problem(("provider",), message))
    return problems


def _key_url_checks(loaded: list[tuple[EnvironmentPolicy, Document]]) -> list[Problem]:
    """A management key is used against one provider URL only: another file naming the same
    key with another ``base_url`` would have the rotator send that key to it."""
    first: dict[tuple[str, str], tuple[str, Document]] = {}
    problems: list[Problem] = []
    for env, doc in loaded:
        where = (env.account.kv_mount, env.account.management_key_path)
        url, other = first.setdefault(where, (env.account.base_url, doc))
        if url != env.account.base_url:
            message = (
                f"management key {where[0]}/{shown(where[1])} is used by {other.file} with "
                f"base_url {shown(url)}: a management key goes to one provider URL only"
            )
            problems.append(doc.problem(("provider", "base_url"), message))
    return problems


def _adoption_checks(loaded: list[tuple[EnvironmentPolicy, Document]]) -> list[Problem]:
    first: dict[tuple[Account, str], str] = {}
    problems: list[Problem] = []
    for env, doc in loaded:
        for index, key in enumerate(env.keys):
            if key.adopt_key_id is None:
                continue
            claimed = first.setdefault((key.account, key.adopt_key_id), key.ref)
            if claimed != key.ref:
                message = (
                    f"adopt_key_id {shown(key.adopt_key_id)} is already adopted by key {claimed}"
                )
                problems.append(doc.problem(("keys", index, "adopt_key_id"), message))
    return problems


def _namespace_checks(loaded: list[tuple[EnvironmentPolicy, Document]]) -> list[Problem]:
    """One namespace per deployment (:mod:`~vault_rotator.policy.namespace`), across files:
    a path inside another file's state prefix is reported where it is written, whichever file
    comes first; the file's own prefix is its own rules' business."""
    prefix_node: NodePath = ("vault", "state_prefix")
    namespaces: dict[tuple[str, str], _Site] = {}
    for env, doc in loaded:
        namespaces.setdefault((env.vault.kv_mount, env.vault.state_prefix), _Site(doc, prefix_node))
    problems: list[Problem] = []
    for env, doc in loaded:
        mount, own = env.vault.kv_mount, env.vault.state_prefix
        paths = [
            (prefix_node, own),
            (("provider", "management_key", "path"), env.account.management_key_path),
        ]
        paths += [
            (("keys", index, "secret_path"), key.secret_path) for index, key in enumerate(env.keys)
        ]
        for node, path in paths:
            for prefix in enclosing(path):
                site = namespaces.get((mount, prefix))
                if site is not None and prefix != own:
                    message = _inside_message(node, path, (mount, prefix), site)
                    problems.append(doc.problem(node, message))
    return problems


def _inside_message(node: NodePath, path: str, namespace: tuple[str, str], site: _Site) -> str:
    mount, prefix = namespace
    message = (
        f"{dotted(node)} {shown(path)} is inside the state_prefix {shown(prefix)} of "
        f"{site.where} (kv_mount {shown(mount)}), where vault-rotator keeps that file's state"
    )
    if node == ("vault", "state_prefix"):
        message += "; give each deployment its own prefix, or share one prefix exactly"
    return message


def _get(data: object, path: NodePath) -> object:
    for part in path:
        if isinstance(part, str) and isinstance(data, dict):
            data = data.get(part)
        elif isinstance(part, int) and isinstance(data, list) and 0 <= part < len(data):
            data = data[part]
        else:
            return None
    return data


def _normalized(value: object) -> str | None:
    if not isinstance(value, str):
        return None
    try:
        return normalize_vault_path(value)
    except PolicyValueError:
        return None
