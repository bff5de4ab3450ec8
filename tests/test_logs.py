"""Logging: secrets never reach a log line, and each finished rotation has one canonical line."""

from __future__ import annotations

import dataclasses
import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TypedDict, Unpack

import pytest
import structlog
from hypothesis import given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from vault_rotator import display
from vault_rotator.display import SECRET_PATTERN, redact_text, shown
from vault_rotator.engine import reasons
from vault_rotator.engine.state import Outcome, Rotation
from vault_rotator.logs import (
    ROTATION_FINISHED,
    canonical_rotation_line,
    configure,
    redact_secrets,
    rotation_steps,
)
from vault_rotator.ports.provider import Permissions
from vault_rotator.secret import Secret, fingerprint

LIVE = "lr_live_planted0123456789abcdef"
MGMT = "lr_mgmt_planted0123456789abcdef"
ADMIN = "lr_admin_planted0123456789abcdef"
HVS = "hvs.CAESIPlanted0123456789abcdefghijkl"
HVB = "hvb.AAAAAQPlanted0123456789abcdefghij"
LEGACY = "s.Planted0123456789abcdefgh"
BEARER = "opaque-bearer-credential-42"
PLANTED = (LIVE, MGMT, ADMIN, HVS, HVB, LEGACY, BEARER)


@pytest.fixture(autouse=True)
def _reset_structlog() -> Iterator[None]:
    """Leave structlog as other tests expect it."""
    yield
    structlog.reset_defaults()


@dataclass
class Holder:
    """An arbitrary object whose repr would show what it holds."""

    value: str


def emit_everything(log: structlog.typing.FilteringBoundLogger) -> None:
    """Log every planted secret in every shape: event text, nested values, an exception."""
    log.debug(
        f"event text carries {LIVE} and Authorization: Bearer {BEARER}",
        nested={"level1": {"level2": [MGMT, ("tuple", ADMIN)], "set": {HVS}}},
        listed=[{"token": HVB}, LEGACY],
        error=ValueError(f"server echoed {MGMT}"),
        secret=Secret(LIVE),
        holder=Holder(ADMIN),
        **{f"key-{HVS}": "mapping keys too"},
    )
    try:
        raise RuntimeError(f"wrapped {HVS} and {LIVE}")
    except RuntimeError:
        log.exception("failure with a secret in the traceback")


@pytest.mark.parametrize("secret", PLANTED)
def test_redact_text_masks_each_kind(secret: str) -> None:
    """Each key or token shape (a credential after ``Bearer``) becomes a fingerprint in text."""
    shown = f"Bearer {secret}" if secret == BEARER else secret
    text = redact_text(f"before {shown} after")
    assert secret not in text
    assert text.startswith("before ")
    assert text.endswith(" after")
    assert f"<redacted {fingerprint(secret)}>" in text


def test_bearer_keeps_the_scheme_and_masks_the_credential() -> None:
    """``Bearer x`` keeps the word and fingerprints only the credential, in any case."""
    assert redact_text(f"authorization: bearer {BEARER}") == (
        f"authorization: bearer <redacted {fingerprint(BEARER)}>"
    )


def test_redaction_is_idempotent_and_spares_ordinary_text() -> None:
    """Redacting twice changes nothing more; dotted words and bare ids are left alone."""
    once = redact_text(f"{LIVE} Bearer {BEARER} {HVS}")
    assert redact_text(once) == once
    plain = "class.attribute_name_that_is_long key_abc123 fp:0123 s.short"
    assert redact_text(plain) == plain


def test_bare_and_glued_prefixes_are_masked() -> None:
    """A bare ``lr_live_`` prefix or one glued to a word is masked too."""
    text = redact_text("prefix lr_live_ and keylr_mgmt_abcd")
    assert "lr_live_" not in text
    assert "lr_mgmt_" not in text


def test_capture_logs_at_debug_level_sees_no_secret() -> None:
    """Through the redaction processor, a debug event keeps no planted secret in any shape."""
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG))
    with capture_logs(processors=[redact_secrets]) as logs:
        emit_everything(structlog.get_logger())
    assert [entry["log_level"] for entry in logs] == ["debug", "error"]
    text = repr(logs)
    for secret in PLANTED:
        assert secret not in text
    first = logs[0]
    assert first["secret"] == fingerprint(LIVE)
    assert first["nested"]["level1"]["level2"][1] == ["tuple", f"<redacted {fingerprint(ADMIN)}>"]
    assert first["error"] == f"ValueError: server echoed <redacted {fingerprint(MGMT)}>"
    assert first["holder"] == f"Holder(value='<redacted {fingerprint(ADMIN)}>')"


def test_json_rendering_through_configure_sees_no_secret(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """configure(json=True) renders debug and exception lines as JSON with every secret masked."""
    configure("debug", json=True)
    emit_everything(structlog.get_logger())
    err = capsys.readouterr().err
    for secret in PLANTED:
        assert secret not in err
    lines = [json.loads(line) for line in err.splitlines()]
    assert [line["level"] for line in lines] == ["debug", "error"]
    assert "<redacted fp:" in lines[0]["event"]
    assert "RuntimeError: wrapped <redacted fp:" in lines[1]["exception"]


def test_configure_level_still_filters(capsys: pytest.CaptureFixture[str]) -> None:
    """At level warning, debug and info lines are not written."""
    configure("warning", json=True)
    log = structlog.get_logger()
    log.info("quiet")
    log.warning("loud", n=1)
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [(line["event"], line["n"]) for line in lines] == [("loud", 1)]


def test_objects_without_secrets_pass_unchanged() -> None:
    """Numbers, None and objects whose repr holds no secret are not turned into strings."""
    holder = Holder("key_abc123")
    event = redact_secrets(None, "info", {"n": 3, "x": 1.5, "none": None, "holder": holder})
    assert event == {"n": 3, "x": 1.5, "none": None, "holder": holder}
    assert event["holder"] is holder


def rotation(**changes: object) -> Rotation:
    return Rotation(
        id="r1",
        attempt=2,
        date="2027-01-15",
        policy={},
        permissions=Permissions(),
        started_at=1000.0,
        start_version=3,
        trigger="schedule",
        by="daemon@host",
        old_key_id="key_old",
        new_key_id="key_new",
        published_at=1010.0,
        pickup_at=1100.5,
    ).evolve(**changes)


class OutcomeChanges(TypedDict, total=False):
    """Fields of :class:`Outcome` a test sets differently from :func:`outcome`'s defaults."""

    rotation_id: str
    at: float
    trigger: str
    by: str
    old_key_id: str | None
    new_key_id: str | None
    detail: str


def outcome(kind: str = reasons.SUCCEEDED, **changes: Unpack[OutcomeChanges]) -> Outcome:
    base = Outcome(
        rotation_id="r1",
        outcome=kind,
        at=1200.0,
        trigger="schedule",
        by="daemon@host",
        old_key_id="key_old",
        new_key_id="key_new",
    )
    return dataclasses.replace(base, **changes)


def test_canonical_line_of_a_success_has_every_field() -> None:
    """A finished rotation logs one info line with ids, who, outcome and each step's seconds."""
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG))
    with capture_logs() as logs:
        fields = canonical_rotation_line(outcome(), rotation(), env="prod", name="app")
    assert len(logs) == 1
    assert logs[0] == {"event": ROTATION_FINISHED, "log_level": "info", **fields}
    assert fields == {
        "env": "prod",
        "key": "prod/app",
        "rotation_id": "r1",
        "attempt": 2,
        "trigger": "schedule",
        "by": "daemon@host",
        "outcome": reasons.SUCCEEDED,
        "steps": {"publish": 10.0, "pickup": 90.5, "drain": 99.5, "total": 200.0},
        "old_key_id": "key_old",
        "new_key_id": "key_new",
        "detail": "",
    }


def test_canonical_line_of_a_failure_is_an_error_with_total_only() -> None:
    """A rotation that never published logs an error whose steps hold only the total."""
    with capture_logs() as logs:
        canonical_rotation_line(
            outcome(reasons.FAILED_VERIFY, new_key_id=None, detail="verify: HTTP 401"),
            rotation(published_at=None, pickup_at=None),
            env="prod",
            name="app",
            logger=structlog.get_logger().bind(component="engine"),
        )
    assert len(logs) == 1
    assert logs[0]["log_level"] == "error"  # the outcome table: failed-verify is a failure
    assert logs[0]["component"] == "engine"
    assert logs[0]["steps"] == {"total": 200.0}
    assert logs[0]["detail"] == "verify: HTTP 401"


def test_steps_stop_at_the_last_known_milestone() -> None:
    """Published but never picked up: publish and total only; no rotation: no steps."""
    steps = rotation_steps(outcome(), rotation(pickup_at=None))
    assert steps == {"publish": 10.0, "total": 200.0}
    assert rotation_steps(outcome(), None) == {}


@pytest.mark.parametrize("closing", [")", ").", "]", "}", ".", ",", ";", ":", "!", "?", '"', "'"])
def test_bearer_redaction_keeps_trailing_punctuation(closing: str) -> None:
    """A credential in parentheses or before punctuation is masked, the punctuation kept."""
    text = redact_text(f"HTTP 401: key refused (Authorization: Bearer {LIVE}{closing} next")
    assert LIVE not in text
    assert text == (
        f"HTTP 401: key refused (Authorization: Bearer <redacted {fingerprint(LIVE)}>{closing} next"
    )


def test_shown_escapes_what_does_not_print_and_caps_the_length() -> None:
    """shown() escapes controls, bidi marks and backslashes as repr would, and caps the length."""
    assert shown("someone\u0007elses\tkey\u202e\\") == "someone\\x07elses\\tkey\\u202e\\\\"
    assert shown("naïve café 中文") == "naïve café 中文"
    capped = shown("\u0007" * 500, limit=40)
    assert len(capped) == 40
    assert capped.endswith("…")
    assert capped.isprintable()


# -- issue 20 item 7: third-party stdlib logging through the same renderer and redaction ------

OVERLOAD = f"""
import logging, sys, time
from apscheduler.schedulers.background import BackgroundScheduler
from vault_rotator.logs import configure

configure("info", json=True)
scheduler = BackgroundScheduler(job_defaults={{"coalesce": True, "max_instances": 1}})
scheduler.add_job(lambda: time.sleep(1.5), "interval", seconds=0.2, id="tick")
scheduler.start()
logging.getLogger("urllib3.connectionpool").warning("retrying with token %s", "{HVS}")
try:
    raise ValueError("hvac said {MGMT}")
except ValueError:
    logging.getLogger("hvac").exception("request failed")
logging.getLogger("httpx").info("an info line of a library: not written at level info")
time.sleep(1.2)
scheduler.shutdown(wait=False)
"""


def test_third_party_log_lines_are_json_and_redacted_under_scheduler_overload() -> None:
    """A job outlasting its interval makes APScheduler log "skipped: maximum number of running
    instances reached"; with JSON logs every stderr line parses as JSON (those included, with
    their logger's name), secret-shaped values in a library's message are masked, and library
    lines below warning are not written at level info."""
    done = subprocess.run(
        [sys.executable, "-c", OVERLOAD], capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [json.loads(line) for line in done.stderr.splitlines()]  # each line is JSON
    skipped = [line for line in lines if "maximum number of running instances" in line["event"]]
    assert skipped, lines
    assert {line["level"] for line in skipped} == {"warning"}
    assert {line["logger"] for line in skipped} == {"apscheduler.scheduler"}
    assert all("timestamp" in line for line in lines)
    assert HVS not in done.stderr
    assert MGMT not in done.stderr
    retry = next(line for line in lines if line["event"].startswith("retrying with token"))
    assert retry["event"] == f"retrying with token <redacted {fingerprint(HVS)}>"
    failed = next(line for line in lines if line["event"] == "request failed")
    assert failed["level"] == "error"
    assert "ValueError: hvac said <redacted fp:" in failed["exception"]
    assert not any("an info line" in line["event"] for line in lines)


def test_library_records_below_warning_are_not_written_even_at_debug(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """At ``--log-level debug`` the rotator's debug lines are written, libraries' info and debug
    lines are not (APScheduler writes two per tick: a daemon's stderr pipe would fill)."""
    configure("debug", json=True)
    structlog.get_logger().debug("ours")
    logging.getLogger("apscheduler.executors.default").info("Running job")
    logging.getLogger("httpx").debug("HTTP Request")
    logging.getLogger("urllib3").warning("theirs")
    events = [json.loads(line)["event"] for line in capsys.readouterr().err.splitlines()]
    assert events == ["ours", "theirs"]


def test_configure_twice_installs_one_stdlib_handler() -> None:
    """Reconfiguring (a test, a second main()) replaces the stdlib handler, never adds one."""
    configure("info", json=True)
    configure("debug", json=False)
    ours = [h for h in logging.getLogger().handlers if getattr(h, "vault_rotator", False)]
    assert len(ours) == 1


_PIECES = st.sampled_from(
    [
        "lr_live_", "lr_mgmt_abc", "lr_admin_Z-9", "hvs.", "hvb.CAESIabcdefgh", "hvr.0123456789",
        "s.", "b.", "s.abcdefghijklmnopqrstu", "b.ABCDEFGHIJKLMNOPQRSTUVWX.y", "Bearer ",
        "bEaReR\t", "BEARER x", "keys.", "(", ")", ".", '"', " ", "\\n", "é", "0.5",
    ]
)  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(st.lists(st.one_of(_PIECES, st.text(max_size=12)), max_size=12))
def test_redaction_is_the_patterns_whatever_the_text(pieces: list[str]) -> None:
    """The quick look for key-shaped text never lets a match of the pattern through."""
    text = "".join(pieces)
    assert redact_text(text) == SECRET_PATTERN.sub(display._mask, text)
