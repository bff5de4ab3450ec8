"""One contract suite for the KvStore port, run on the in-memory fake and on a real Vault API.

Every test taking ``kv`` runs twice: on :class:`MemoryKv` and on :class:`VaultKv` against the
session's Vault (OpenBao's dev server here), each under a fresh path. ``admin`` does what the
port cannot (soft-delete or destroy single versions, hand out a token holding only a given
policy) the way each backend allows. Tests of the fake's own test knobs are at the end.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol

import hvac
import pytest

from vault_rotator.errors import (
    AnswerTooLargeError,
    CasConflictError,
    RecordTooLargeError,
    StoreError,
    StorePermissionError,
    StoreUnavailableError,
)
from vault_rotator.ports.kv import KvStore
from vault_rotator.store.memory import MemoryKv
from vault_rotator.store.vault import VaultConnection, VaultKv
from vault_rotator.testing.clock import FakeClock
from vault_rotator.testing.vault_server import VaultServer, bao_dev_server

Kv = MemoryKv | VaultKv
Policy = Mapping[str, Sequence[str]]


class Admin(Protocol):
    """What a test needs beyond the port, done as an operator with a root token would."""

    def delete_versions(self, path: str, versions: Sequence[int] | None = None) -> None: ...

    def destroy_versions(self, path: str, versions: Sequence[int]) -> None: ...

    def token(self, policy: Policy) -> Kv: ...


class _MemoryAdmin:
    def __init__(self, kv: MemoryKv) -> None:
        self._kv = kv

    def delete_versions(self, path: str, versions: Sequence[int] | None = None) -> None:
        self._kv.delete_versions(path, versions)

    def destroy_versions(self, path: str, versions: Sequence[int]) -> None:
        self._kv.destroy_versions(path, versions)

    def token(self, policy: Policy) -> Kv:
        return self._kv.restricted(policy)


class _VaultAdmin:
    def __init__(self, server: VaultServer) -> None:
        self._server = server
        self._client = hvac.Client(url=server.addr, token=server.token)
        self._conns: list[VaultConnection] = []

    def delete_versions(self, path: str, versions: Sequence[int] | None = None) -> None:
        kv2 = self._client.secrets.kv.v2
        if versions is None:
            kv2.delete_latest_version_of_secret(path=path, mount_point="secret")
        else:
            kv2.delete_secret_versions(path=path, versions=list(versions), mount_point="secret")

    def destroy_versions(self, path: str, versions: Sequence[int]) -> None:
        self._client.secrets.kv.v2.destroy_secret_versions(
            path=path, versions=list(versions), mount_point="secret"
        )

    def token(self, policy: Policy) -> Kv:
        name = f"contract-{uuid.uuid4().hex[:12]}"
        rules = "\n".join(
            f'path "{path}" {{ capabilities = {json.dumps(list(caps))} }}'
            for path, caps in policy.items()
        )
        self._client.sys.create_or_update_policy(name, rules)
        token = self._client.auth.token.create(policies=[name], ttl="5m")["auth"]["client_token"]
        conn = VaultConnection(self._server.addr, token)
        self._conns.append(conn)
        return conn.kv("secret")

    def close(self) -> None:
        for conn in self._conns:
            conn.close()
        self._client.adapter.close()


@pytest.fixture(params=["memory", "vault"])
def kv(request: pytest.FixtureRequest) -> Iterator[Kv]:
    """The KV v2 mount `secret/`: in memory, then on the real Vault API."""
    if request.param == "memory":
        yield MemoryKv("secret")
        return
    server: VaultServer = request.getfixturevalue("vault")
    conn = VaultConnection(server.addr, server.token)
    yield conn.kv("secret")
    conn.close()


@pytest.fixture
def admin(kv: Kv, request: pytest.FixtureRequest) -> Iterator[Admin]:
    """Operator actions on the same backend as ``kv``."""
    if isinstance(kv, MemoryKv):
        yield _MemoryAdmin(kv)
        return
    vault_admin = _VaultAdmin(request.getfixturevalue("vault"))
    yield vault_admin
    vault_admin.close()


@pytest.fixture
def path() -> str:
    """A fresh secret path per test."""
    return f"contract/{uuid.uuid4().hex}"


def test_both_backends_implement_the_port(kv: Kv) -> None:
    """Both backends are a KvStore: mypy checks the assignment for each, the test its mount."""
    store: KvStore = kv
    assert store.mount == "secret"


# -- versions and check-and-set -------------------------------------------------------------


def test_write_then_read_returns_data_and_version(kv: Kv, path: str) -> None:
    """A first write with cas=0 creates version 1 whose data reads back unchanged."""
    assert kv.read(path) is None
    assert kv.current_version(path) == 0
    assert kv.write(path, {"api_key": "v1", "n": 1}, cas=0) == 1
    got = kv.read(path)
    assert got is not None
    assert got.version == 1
    assert dict(got.data) == {"api_key": "v1", "n": 1}
    assert not got.deleted


def test_versions_accumulate_and_old_versions_stay_readable(kv: Kv, path: str) -> None:
    """Each CAS write adds a version; an older version can still be read by number."""
    kv.write(path, {"v": 1}, cas=0)
    kv.write(path, {"v": 2}, cas=1)
    assert kv.write(path, {"v": 3}, cas=2) == 3
    assert kv.current_version(path) == 3
    old = kv.read(path, version=2)
    assert old is not None
    assert old.data == {"v": 2}
    assert kv.read(path, version=9) is None


def test_version_zero_or_negative_reads_the_current_one(kv: Kv, path: str) -> None:
    """Version 0 or below asks for the current version, as no version does."""
    kv.write(path, {"v": 1}, cas=0)
    kv.write(path, {"v": 2}, cas=1)
    for version in (None, 0, -1):
        got = kv.read(path, version=version)
        assert got is not None
        assert (got.version, dict(got.data)) == (2, {"v": 2})


def test_cas_conflict_is_its_own_error_and_writes_nothing(kv: Kv, path: str) -> None:
    """A write against a stale version raises CasConflictError and leaves the secret as it was."""
    kv.write(path, {"v": 1}, cas=0)
    kv.write(path, {"v": 2}, cas=1)
    with pytest.raises(CasConflictError, match="check-and-set"):
        kv.write(path, {"v": "stale"}, cas=1)
    with pytest.raises(CasConflictError):
        kv.write(path, {"v": "create"}, cas=0)
    got = kv.read(path)
    assert got is not None
    assert got.version == 2
    assert got.data == {"v": 2}


@pytest.mark.parametrize("cas", [2, 7, -1])
def test_cas_must_equal_the_current_version_exactly(kv: Kv, path: str, cas: int) -> None:
    """A cas ahead of the current version, or negative, loses like a stale one."""
    kv.write(path, {"v": 1}, cas=0)
    with pytest.raises(CasConflictError, match=f"check-and-set conflict on secret/{path}$"):
        kv.write(path, {"v": "x"}, cas=cas)
    assert kv.current_version(path) == 1


def test_cas_on_an_absent_path_must_be_zero_and_a_lost_one_creates_nothing(
    kv: Kv, path: str
) -> None:
    """Writing a path that does not exist with cas=1 conflicts and leaves no trace of it."""
    with pytest.raises(CasConflictError):
        kv.write(f"{path}/a", {"v": 1}, cas=1)
    assert kv.read(f"{path}/a") is None
    assert kv.current_version(f"{path}/a") == 0
    assert kv.list(path) == []


def test_cas_zero_fails_once_the_latest_version_is_soft_deleted(
    kv: Kv, admin: Admin, path: str
) -> None:
    """A soft-deleted latest version still counts: cas=0 conflicts, cas=<its number> writes."""
    kv.write(path, {"v": 1}, cas=0)
    admin.delete_versions(path)
    with pytest.raises(CasConflictError):
        kv.write(path, {"v": 2}, cas=0)
    assert kv.write(path, {"v": 2}, cas=1) == 2


def test_cas_zero_fails_once_every_version_is_destroyed(kv: Kv, admin: Admin, path: str) -> None:
    """Destroyed versions still count until the metadata goes: the next write needs cas=1."""
    kv.write(path, {"v": 1}, cas=0)
    admin.destroy_versions(path, [1])
    assert kv.current_version(path) == 1
    with pytest.raises(CasConflictError):
        kv.write(path, {"v": 2}, cas=0)
    assert kv.write(path, {"v": 2}, cas=1) == 2


def test_concurrent_writers_with_the_same_cas_exactly_one_wins(kv: Kv, path: str) -> None:
    """Eight threads writing on version 1 at once: one gets version 2, seven conflict."""
    kv.write(path, {"v": 1}, cas=0)
    start = threading.Barrier(8)
    won: list[int] = []
    lost: list[int] = []

    def writer(n: int) -> None:
        start.wait()
        try:
            kv.write(path, {"writer": n}, cas=1)
            won.append(n)
        except CasConflictError:
            lost.append(n)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert (len(won), len(lost)) == (1, 7)
    got = kv.read(path)
    assert got is not None
    assert (got.version, dict(got.data)) == (2, {"writer": won[0]})


def test_write_count_counts_writes_and_destroys_that_went_through(kv: Kv, path: str) -> None:
    """write_count (what the engine tests count) adds one per write or destroy, none per loss."""
    kv.write(path, {"v": 1}, cas=0)
    with pytest.raises(CasConflictError):
        kv.write(path, {"v": 2}, cas=0)
    kv.destroy(path)
    kv.destroy(f"{path}/never-written")
    assert kv.write_count[path] == 2
    assert kv.write_count[f"{path}/never-written"] == 1


# -- what reads give back ----------------------------------------------------------------------


def test_data_round_trips_as_vault_json(kv: Kv, path: str) -> None:
    """Data comes back as Vault's JSON: keys sorted, numbers through a float64, tuples as lists."""
    kv.write(
        path,
        {
            "whole": 1.0,
            "half": 0.5,
            "tiny": 1e-7,
            "huge": 1e300,
            "big": 2**70,
            "past_2_53": 2**53 + 1,
            "pair": (1, 2),
            "none": None,
            "flag": True,
            "text": "é\x00\u202e",
            "nested": {"b": [1, {"c": False}], "a": {}},
        },
        cas=0,
    )
    got = kv.read(path)
    assert got is not None
    assert dict(got.data) == {
        "whole": 1,
        "half": 0.5,
        "tiny": 1e-7,
        "huge": 1e300,
        "big": float(2**70),
        "past_2_53": 2**53,
        "pair": [1, 2],
        "none": None,
        "flag": True,
        "text": "é\x00\u202e",
        "nested": {"a": {}, "b": [1, {"c": False}]},
    }
    assert [type(got.data[k]) for k in ("whole", "big", "past_2_53")] == [int, float, int]
    assert list(got.data) == sorted(got.data)
    assert list(got.data["nested"]) == ["a", "b"]


@pytest.mark.parametrize(("strings", "taken"), [(1000, True), (1001, False)])
def test_a_write_past_the_listeners_json_string_limit_is_refused_and_changes_nothing(
    kv: Kv, path: str, strings: int, taken: bool
) -> None:
    """A default listener takes a body of at most 1000 JSON strings (object keys and string
    values, the body's own "data", "options" and "cas" included) and refuses more as too
    large, writing nothing (what a consumer's flood of ack names once did to a state record)."""
    data = {"l": [f"s{i}" for i in range(strings - 4)]}  # + "data", "l", "options", "cas"
    if taken:
        assert kv.write(path, data, cas=0) == 1
        return
    with pytest.raises(RecordTooLargeError, match=r"as too large: .*maximum number of strings"):
        kv.write(path, data, cas=0)
    assert kv.read(path) is None


def test_a_record_larger_than_an_answer_is_read_whole_is_refused_in_one_line(
    kv: Kv, path: str
) -> None:
    """Anyone with write may store a 3 MiB record (a listener takes 32 MiB): reading it is an
    AnswerTooLargeError naming the path, so a pass's bytes stay bounded by its reads; a small
    record beside it still reads."""
    kv.write(path, {"pad": "x" * (3 * 1024 * 1024)}, cas=0)
    with pytest.raises(AnswerTooLargeError, match="with more than 2 MiB: not read") as caught:
        kv.read(path)
    assert path in str(caught.value)
    kv.write(f"{path}/small", {"v": 1}, cas=0)
    got = kv.read(f"{path}/small")
    assert got is not None
    assert got.data == {"v": 1}


def test_an_empty_map_is_a_version_too(kv: Kv, path: str) -> None:
    """Writing {} makes a live version with empty data, not a deleted one."""
    assert kv.write(path, {}, cas=0) == 1
    got = kv.read(path)
    assert got is not None
    assert (got.version, dict(got.data), got.deleted) == (1, {}, False)


def test_what_was_written_or_read_can_be_changed_without_touching_the_store(
    kv: Kv, path: str
) -> None:
    """The stored version is a copy: mutating the written dict or a read result changes nothing."""
    data: dict[str, Any] = {"list": [1], "map": {"k": "v"}}
    kv.write(path, data, cas=0)
    data["list"].append(2)
    data["map"]["k"] = "changed"
    got = kv.read(path)
    assert got is not None
    got.data["list"].append(3)
    again = kv.read(path)
    assert again is not None
    assert dict(again.data) == {"list": [1], "map": {"k": "v"}}


def test_created_time_is_rfc3339_in_utc(kv: Kv, path: str) -> None:
    """created_time is an RFC 3339 UTC stamp of the write that Python parses, later for later."""
    kv.write(path, {"v": 1}, cas=0)
    time.sleep(0.01)
    kv.write(path, {"v": 2}, cas=1)
    first, second = kv.read(path, 1), kv.read(path, 2)
    assert first is not None
    assert second is not None
    stamps = [datetime.fromisoformat(v.created_time) for v in (first, second)]
    assert all(v.created_time.endswith("Z") for v in (first, second))
    assert stamps[0] < stamps[1]
    assert abs(stamps[1].timestamp() - time.time()) < 300


def test_slashes_at_either_end_or_doubled_name_the_same_secret(kv: Kv, path: str) -> None:
    """`a//b/` and `/a/b` are the path `a/b`, and the listing shows it once."""
    kv.write(f"/{path}//a/", {"v": 1}, cas=0)
    got = kv.read(f"{path}/a")
    assert got is not None
    assert got.data == {"v": 1}
    assert kv.write(f"{path}/a", {"v": 2}, cas=1) == 2
    assert kv.list(f"/{path}/") == ["a"]


# -- soft-deleted and destroyed versions --------------------------------------------------------


def test_soft_deleted_current_version_reads_as_deleted(kv: Kv, admin: Admin, path: str) -> None:
    """A soft-deleted latest version reads back flagged deleted with no data, not as an error."""
    kv.write(path, {"v": 1}, cas=0)
    admin.delete_versions(path)
    got = kv.read(path)
    assert got is not None
    assert got.deleted
    assert got.data == {}
    assert kv.current_version(path) == 1


def test_a_soft_deleted_old_version_reads_as_deleted_and_the_rest_stay(
    kv: Kv, admin: Admin, path: str
) -> None:
    """Soft-deleting version 1 leaves version 2 current and readable, with its metadata."""
    kv.write(path, {"v": 1}, cas=0)
    kv.write(path, {"v": 2}, cas=1)
    kv.set_custom_metadata(path, {"owner": "team"})
    admin.delete_versions(path, [1])
    old, current = kv.read(path, 1), kv.read(path)
    assert old is not None
    assert (old.version, dict(old.data), old.deleted) == (1, {}, True)
    assert old.custom_metadata == {"owner": "team"}
    assert old.created_time
    assert current is not None
    assert (current.version, dict(current.data), current.deleted) == (2, {"v": 2}, False)


def test_a_destroyed_version_reads_as_deleted(
    kv: Kv, admin: Admin, path: str, request: pytest.FixtureRequest
) -> None:
    """A version destroyed alone (`kv destroy -versions`) reads as deleted, as the port says."""
    kv.write(path, {"v": 1}, cas=0)
    kv.write(path, {"v": 2}, cas=1)
    admin.destroy_versions(path, [1])
    old = kv.read(path, 1)
    assert old is not None
    assert (old.version, dict(old.data), old.deleted) == (1, {}, True)


# -- custom metadata -----------------------------------------------------------------------------


def test_custom_metadata_round_trips(kv: Kv, path: str) -> None:
    """Custom metadata set on a path shows on the next read."""
    kv.write(path, {"v": 1}, cas=0)
    kv.set_custom_metadata(path, {"rotation_id": "01abc", "managed-by": "vault-rotator"})
    got = kv.read(path)
    assert got is not None
    assert got.custom_metadata == {"rotation_id": "01abc", "managed-by": "vault-rotator"}


def test_custom_metadata_is_replaced_whole_and_shown_with_every_version(kv: Kv, path: str) -> None:
    """Setting metadata replaces the map (no merge), every version shows the path's current map,
    and an empty map clears it."""
    kv.write(path, {"v": 1}, cas=0)
    kv.set_custom_metadata(path, {"a": "1", "b": "2"})
    kv.write(path, {"v": 2}, cas=1)
    kv.set_custom_metadata(path, {"c": "3"})
    for version in (1, 2):
        got = kv.read(path, version)
        assert got is not None
        assert got.custom_metadata == {"c": "3"}
    kv.set_custom_metadata(path, {})
    got = kv.read(path)
    assert got is not None
    assert got.custom_metadata == {}
    assert kv.current_version(path) == 2


def test_custom_metadata_may_come_before_the_first_write(kv: Kv, path: str) -> None:
    """Metadata on a path without versions: nothing to read, version 0, listed, kept by cas=0."""
    kv.set_custom_metadata(f"{path}/a", {"owner": "team"})
    assert kv.read(f"{path}/a") is None
    assert kv.current_version(f"{path}/a") == 0
    assert kv.list(path) == ["a"]
    assert kv.write(f"{path}/a", {"v": 1}, cas=0) == 1
    got = kv.read(f"{path}/a")
    assert got is not None
    assert got.custom_metadata == {"owner": "team"}


@pytest.mark.parametrize(
    "metadata",
    [
        pytest.param({f"k{i}": "x" for i in range(65)}, id="65-keys"),
        pytest.param({"k" * 129: "x"}, id="key-129-bytes"),
        pytest.param({"é" * 65: "x"}, id="key-65-chars-130-bytes"),
        pytest.param({"k": "x" * 513}, id="value-513-bytes"),
        pytest.param({"": "x"}, id="empty-key"),
        pytest.param({"k": ""}, id="empty-value"),
        pytest.param({"a\nb": "x"}, id="newline-in-key"),
        pytest.param({"k": "a\tb"}, id="tab-in-value"),
    ],
)
def test_custom_metadata_past_vaults_limits_is_refused_and_changes_nothing(
    kv: Kv, path: str, metadata: dict[str, str]
) -> None:
    """A map Vault refuses (too many or too long keys or values, empty, unprintable) is a
    StoreError naming the path, and the metadata stays as it was."""
    kv.write(path, {"v": 1}, cas=0)
    kv.set_custom_metadata(path, {"keep": "me"})
    with pytest.raises(StoreError, match=f"rejected update metadata on secret/{path}"):
        kv.set_custom_metadata(path, metadata)
    got = kv.read(path)
    assert got is not None
    assert got.custom_metadata == {"keep": "me"}


def test_custom_metadata_at_vaults_limits_is_taken(kv: Kv, path: str) -> None:
    """64 keys, a 128-byte key, a 512-byte value, spaces and non-ASCII letters are all accepted."""
    kv.write(path, {"v": 1}, cas=0)
    for metadata in (
        {f"k{i}": "x" for i in range(64)},
        {"é" * 64: "x" * 512, "a key": "a value", "clé": "ünïcode"},
    ):
        kv.set_custom_metadata(path, metadata)
        got = kv.read(path)
        assert got is not None
        assert got.custom_metadata == metadata


# -- destroy -------------------------------------------------------------------------------------


def test_destroy_removes_every_version_and_metadata(kv: Kv, path: str) -> None:
    """Destroying a path removes all versions: nothing reads back, the version count restarts."""
    kv.write(path, {"v": 1}, cas=0)
    kv.write(path, {"v": 2}, cas=1)
    kv.destroy(path)
    assert kv.read(path) is None
    assert kv.read(path, version=1) is None
    assert kv.current_version(path) == 0
    assert kv.write(path, {"v": "again"}, cas=0) == 1
    kv.destroy(path)
    kv.destroy(path)  # destroying an absent path is not an error


def test_destroy_takes_the_custom_metadata_and_the_listing_entry(kv: Kv, path: str) -> None:
    """After destroy the path is unlisted and a new first version carries no old metadata."""
    kv.write(f"{path}/a", {"v": 1}, cas=0)
    kv.set_custom_metadata(f"{path}/a", {"owner": "team"})
    kv.destroy(f"{path}/a")
    assert kv.list(path) == []
    kv.write(f"{path}/a", {"v": 1}, cas=0)
    got = kv.read(f"{path}/a")
    assert got is not None
    assert got.custom_metadata == {}


def test_destroy_of_a_folder_name_leaves_the_secrets_below_it(kv: Kv, path: str) -> None:
    """Destroying `a` when `a` and `a/b` both exist removes only `a`."""
    kv.write(f"{path}/a", {"v": 1}, cas=0)
    kv.write(f"{path}/a/b", {"v": 1}, cas=0)
    kv.destroy(f"{path}/a")
    assert kv.list(path) == ["a/"]
    assert kv.read(f"{path}/a/b") is not None


# -- list ----------------------------------------------------------------------------------------


def test_list_shows_children(kv: Kv, path: str) -> None:
    """Listing a folder shows the secrets written below it and an absent folder lists empty."""
    kv.write(f"{path}/a", {"v": 1}, cas=0)
    kv.write(f"{path}/sub/b", {"v": 1}, cas=0)
    assert sorted(kv.list(path)) == ["a", "sub/"]
    assert kv.list(f"{path}/nothing-here") == []


def test_list_gives_direct_children_sorted_with_a_name_both_secret_and_folder(
    kv: Kv, path: str
) -> None:
    """Only direct children, sorted; a name that is a secret and a folder is listed twice."""
    for name in ("x", "x/y", "b", "a/deep/z", "a/deep/w"):
        kv.write(f"{path}/{name}", {"v": 1}, cas=0)
    assert kv.list(path) == ["a/", "b", "x", "x/"]
    assert kv.list(f"{path}/") == ["a/", "b", "x", "x/"]
    assert kv.list(f"{path}/a") == ["deep/"]
    assert kv.list(f"{path}/a/deep") == ["w", "z"]


def test_list_of_a_secret_without_children_is_empty(kv: Kv, path: str) -> None:
    """Listing the path of a secret (not a folder) gives [] as an absent folder does."""
    kv.write(f"{path}/a", {"v": 1}, cas=0)
    assert kv.list(f"{path}/a") == []


def test_list_keeps_soft_deleted_secrets_and_drops_emptied_folders(
    kv: Kv, admin: Admin, path: str
) -> None:
    """A soft-deleted secret stays listed; a folder whose last secret is destroyed disappears."""
    kv.write(f"{path}/b", {"v": 1}, cas=0)
    kv.write(f"{path}/a/deep/z", {"v": 1}, cas=0)
    admin.delete_versions(f"{path}/b")
    kv.destroy(f"{path}/a/deep/z")
    assert kv.list(path) == ["b"]
    assert kv.list(f"{path}/a") == []


# -- capabilities and permissions ------------------------------------------------------------


def test_capabilities_reports_root_and_limited_tokens(kv: Kv, admin: Admin, path: str) -> None:
    """capabilities-self reports a limited token's real capabilities per path."""
    assert kv.capabilities([f"secret/data/{path}"]) == {f"secret/data/{path}": frozenset({"root"})}
    limited = admin.token({f"secret/data/{path}": ["read"]})
    caps = limited.capabilities([f"secret/data/{path}", "secret/data/elsewhere"])
    assert caps[f"secret/data/{path}"] == frozenset({"read"})
    assert caps["secret/data/elsewhere"] == frozenset({"deny"})
    with pytest.raises(StorePermissionError, match="permission denied"):
        limited.write(path, {"v": 1}, cas=0)


def test_capabilities_follow_exact_rules_then_the_longest_glob_and_deny_wins(
    admin: Admin, path: str
) -> None:
    """An exact rule beats globs, the longest matching glob beats shorter ones, deny beats all."""
    base = f"secret/data/{path}"
    limited = admin.token(
        {
            f"{base}/q*": ["read"],
            f"{base}/qq/*": ["create", "update"],
            f"{base}/qq/x": ["deny"],
            f"{base}/z": ["read", "update", "deny"],
        }
    )
    asked = ["q", "qa/b", "qq", "qq/", "qq/a", "qq/x", "z", "other"]
    caps = limited.capabilities([f"{base}/{p}" for p in asked])
    assert {p: caps[f"{base}/{p}"] for p in asked} == {
        "q": {"read"},
        "qa/b": {"read"},
        "qq": {"read"},
        "qq/": {"create", "update"},
        "qq/a": {"create", "update"},
        "qq/x": {"deny"},
        "z": {"deny"},
        "other": {"deny"},
    }


def test_capabilities_of_no_paths_is_refused(kv: Kv) -> None:
    """Asking for the capabilities of no path at all is a StoreError, as Vault answers it."""
    with pytest.raises(StoreError, match="paths must be supplied"):
        kv.capabilities([])


def test_a_write_needs_create_on_a_new_path_and_update_on_an_existing_one(
    kv: Kv, admin: Admin, path: str
) -> None:
    """`create` writes only a path without metadata, `update` only a path that has some (even
    metadata alone); after destroy the path is new again."""
    only_create = admin.token({f"secret/data/{path}/c": ["create"]})
    assert only_create.write(f"{path}/c", {"v": 1}, cas=0) == 1
    with pytest.raises(StorePermissionError):
        only_create.write(f"{path}/c", {"v": 2}, cas=1)
    only_update = admin.token({f"secret/data/{path}/u": ["update"]})
    with pytest.raises(StorePermissionError):
        only_update.write(f"{path}/u", {"v": 1}, cas=0)
    kv.set_custom_metadata(f"{path}/u", {"owner": "team"})
    assert only_update.write(f"{path}/u", {"v": 1}, cas=0) == 1
    kv.destroy(f"{path}/u")
    with pytest.raises(StorePermissionError):
        only_update.write(f"{path}/u", {"v": 1}, cas=0)


def test_metadata_operations_need_their_own_capabilities(kv: Kv, admin: Admin, path: str) -> None:
    """Reading data needs read on data/, the version read on metadata/, destroy delete on
    metadata/, custom metadata create or update on metadata/."""
    kv.write(path, {"v": 1}, cas=0)
    reader = admin.token({f"secret/data/{path}": ["read"]})
    assert reader.read(path) is not None
    for call in (
        lambda: reader.current_version(path),
        lambda: reader.destroy(path),
        lambda: reader.set_custom_metadata(path, {"a": "b"}),
    ):
        with pytest.raises(StorePermissionError):
            call()
    meta = admin.token({f"secret/metadata/{path}": ["read", "update", "delete"]})
    assert meta.current_version(path) == 1
    meta.set_custom_metadata(path, {"a": "b"})
    with pytest.raises(StorePermissionError):
        meta.read(path)
    meta.destroy(path)
    assert kv.current_version(path) == 0


def test_a_denied_call_is_denied_before_anything_is_looked_up(admin: Admin, path: str) -> None:
    """Without the capability even an absent path is a permission error naming op and path."""
    nobody = admin.token({"secret/data/unrelated": ["read"]})
    for op, call in (
        ("read", lambda: nobody.read(path)),
        ("read metadata", lambda: nobody.current_version(path)),
        ("write", lambda: nobody.write(path, {"v": 1}, cas=0)),
        ("update metadata", lambda: nobody.set_custom_metadata(path, {"a": "b"})),
        ("destroy", lambda: nobody.destroy(path)),
        ("list", lambda: nobody.list(path)),
    ):
        with pytest.raises(StorePermissionError) as info:
            call()
        assert str(info.value) == (
            f"Vault denied {op} on secret/{path}: permission denied "
            "(token revoked, expired or lacking the capability)"
        )


def test_list_needs_list_on_the_folder_in_either_spelling(kv: Kv, admin: Admin, path: str) -> None:
    """A list rule on `metadata/<folder>` or `metadata/<folder>/` lists it, not its subfolders."""
    kv.write(f"{path}/e/f/g", {"v": 1}, cas=0)
    for rule in (f"secret/metadata/{path}/e", f"secret/metadata/{path}/e/"):
        lister = admin.token({rule: ["list"]})
        assert lister.list(f"{path}/e") == ["f/"]
        assert lister.list(f"{path}/e/") == ["f/"]
        with pytest.raises(StorePermissionError):
            lister.list(f"{path}/e/f")
    glob = admin.token({f"secret/metadata/{path}/e/*": ["list"]})
    assert glob.list(f"{path}/e") == ["f/"]
    assert glob.list(f"{path}/e/f") == ["g"]


# -- a sealed server -----------------------------------------------------------------------------


@pytest.fixture(params=["memory", "vault"])
def sealed_kv(request: pytest.FixtureRequest) -> Iterator[Kv]:
    """A mount holding `x` on a server that has since been sealed (Vault: a server of its own)."""
    if request.param == "memory":
        memory = MemoryKv("secret")
        memory.write("x", {"v": 1}, cas=0)
        memory.sealed = True
        yield memory
        return
    with bao_dev_server() as server:
        conn = VaultConnection(server.addr, server.token)
        conn.kv("secret").write("x", {"v": 1}, cas=0)
        hvac.Client(url=server.addr, token=server.token).sys.seal()
        yield conn.kv("secret")
        conn.close()


def test_every_call_on_a_sealed_server_is_unavailable_naming_op_and_path(sealed_kv: Kv) -> None:
    """Each operation on a sealed server raises StoreUnavailableError with the same message."""
    kv = sealed_kv
    for op, where, call in (
        ("read", "secret/x", lambda: kv.read("x")),
        ("read metadata", "secret/x", lambda: kv.current_version("x")),
        ("write", "secret/x", lambda: kv.write("x", {"v": 2}, cas=1)),
        ("update metadata", "secret/x", lambda: kv.set_custom_metadata("x", {"a": "b"})),
        ("destroy", "secret/x", lambda: kv.destroy("x")),
        ("list", "secret/", lambda: kv.list("")),
        (
            "check capabilities",
            "secret/data/x, a/b",
            lambda: kv.capabilities(["secret/data/x", "a/b"]),
        ),
    ):
        with pytest.raises(StoreUnavailableError) as info:
            call()
        assert str(info.value) == f"Vault is sealed or down ({op} on {where})"
    assert kv.write_count["x"] == 1


# -- the fake's own knobs (no Vault) -------------------------------------------------------------


def test_unsealing_the_fake_brings_its_data_back() -> None:
    """sealed=False again serves what was there before the seal."""
    kv = MemoryKv()
    kv.write("x", {"v": 1}, cas=0)
    kv.sealed = True
    with pytest.raises(StoreUnavailableError):
        kv.read("x")
    kv.sealed = False
    got = kv.read("x")
    assert got is not None
    assert got.data == {"v": 1}


def test_a_restricted_view_shares_data_and_seal_but_not_its_counter() -> None:
    """restricted() is another token on the same server: it sees writes and the seal."""
    kv = MemoryKv()
    other = kv.restricted({"secret/data/*": ["create", "read", "update"]})
    other.write("x", {"v": 1}, cas=0)
    assert kv.current_version("x") == 1
    assert (kv.write_count["x"], other.write_count["x"]) == (0, 1)
    kv.sealed = True
    with pytest.raises(StoreUnavailableError):
        other.read("x")


def test_the_before_hook_can_fail_a_call_or_race_it() -> None:
    """`before` runs ahead of each call with (operation, path): it may raise, or write first."""
    kv = MemoryKv()
    calls: list[tuple[str, str]] = []

    def racing(op: str, where: str) -> None:
        calls.append((op, where))
        if op == "write" and len(calls) == 1:
            kv.before = None
            kv.write(where, {"by": "the other process"}, cas=0)
            kv.before = racing

    kv.before = racing
    with pytest.raises(CasConflictError):
        kv.write("x", {"by": "us"}, cas=0)
    got = kv.read("x")
    assert got is not None
    assert got.data == {"by": "the other process"}
    assert calls == [("write", "x"), ("read", "x")]

    def unavailable(op: str, where: str) -> None:
        raise StoreUnavailableError(f"Vault failed {op} on secret/{where}: server error")

    kv.before = unavailable
    with pytest.raises(StoreUnavailableError, match="server error"):
        kv.list("")


def test_the_injected_clock_stamps_created_time() -> None:
    """created_time comes from the injected clock, in Vault's form."""
    clock = FakeClock(1_800_000_000.5)
    kv = MemoryKv(clock=clock)
    kv.write("x", {}, cas=0)
    clock.advance(0.5)
    kv.write("x", {}, cas=1)
    stamps = [v.created_time for v in (kv.read("x", 1), kv.read("x", 2)) if v is not None]
    assert stamps == ["2027-01-15T08:00:00.5Z", "2027-01-15T08:00:01Z"]


@pytest.mark.parametrize(
    "policy",
    [{"secret/data/+/x": ["read"]}, {"secret/*/x": ["read"]}, {"secret/data/x": ["reed"]}],
)
def test_a_policy_the_fake_cannot_honour_is_refused(policy: Policy) -> None:
    """`+` segments, a `*` not at the end and unknown capabilities are a ValueError, not ignored."""
    with pytest.raises(ValueError, match="not supported"):
        MemoryKv(policy=policy)
