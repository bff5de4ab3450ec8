"""The inference routes a live key can call: models, chat completions, embeddings.

Decisions where the spec is silent:

- A key is read from ``Authorization: Bearer`` or ``X-Api-Key``. No key, an unknown one, a
  deleted one or a *management* key: 401 (a management key is not an API key). A disabled or
  expired key: 403. A model whose provider is outside ``allowed_providers``, or a model outside
  ``allowed_models``: 403. A key whose spending cap is used up in its ``limit_reset`` period
  (its lifetime if none): 402 ``quota_exceeded``.
- A model's provider is the part before ``/``; a bare name is mapped by prefix (``gpt-``,
  ``o1``, ``o3``, ``text-embedding-`` -> openai, ``claude-`` -> anthropic, ``gemini-`` -> google,
  ``mistral-`` -> mistral, ``llama-`` -> meta-llama); a bare name matching none is a 400.
  ``allowed_models`` entries and the requested model match with or without the provider
  prefix (``gpt-4o`` matches ``openai/gpt-4o``).
- ``last_used_at`` moves on every request by a known, enabled, unexpired key, whatever the
  answer (a 400, 402 or 403 after authentication still counts as use). Cost and tokens move only
  on a successful chat or embeddings answer. ``GET /v1/models`` lists the whole catalogue.
- Prices: chat $1 per million prompt tokens and $2 per million completion tokens; embeddings
  $0.10 per million tokens. A token is 4 characters (at least 1 per message or input).
  ``stream`` is ignored: answers are never streamed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

from vault_rotator.emulator.clock import Clock
from vault_rotator.emulator.management import ManagementKeys
from vault_rotator.emulator.model import KeyView
from vault_rotator.emulator.store import KeyStore
from vault_rotator.emulator.usage import Use
from vault_rotator.emulator.wire import (
    BadRequestError,
    Request,
    Response,
    error_response,
    json_response,
)

CATALOGUE_CREATED = 1_700_000_000
CATALOGUE = (
    "openai/gpt-4o",
    "openai/gpt-4o-mini",
    "openai/text-embedding-3-small",
    "anthropic/claude-3-5-sonnet",
    "google/gemini-1.5-pro",
    "mistral/mistral-large",
    "meta-llama/llama-3.1-70b-instruct",
)
ALIASES = (
    ("gpt-", "openai"),
    ("o1", "openai"),
    ("o3", "openai"),
    ("text-embedding-", "openai"),
    ("claude-", "anthropic"),
    ("gemini-", "google"),
    ("mistral-", "mistral"),
    ("llama-", "meta-llama"),
)
REPLY = "Hello from the ARouter emulator."
PROMPT_PRICE, COMPLETION_PRICE, EMBEDDING_PRICE = 1e-6, 2e-6, 1e-7

Answer = tuple[Response, Use | None]


def provider_of(model: str) -> str | None:
    """The provider serving ``model``, or ``None`` if the name is not recognised."""
    if "/" in model:
        return model.split("/", 1)[0] or None
    return next((provider for prefix, provider in ALIASES if model.startswith(prefix)), None)


def qualified(model: str) -> str:
    """``provider/name`` for a bare name the aliases recognise; other names unchanged."""
    provider = provider_of(model)
    return model if "/" in model or provider is None else f"{provider}/{model}"


def _tokens(text: str) -> int:
    return max(1, len(text) // 4)


class Inference:
    """Handlers for the inference routes; each answers and meters one request."""

    def __init__(self, *, store: KeyStore, management_keys: ManagementKeys, clock: Clock) -> None:
        self._store = store
        self._management_keys = management_keys
        self._clock = clock
        self._answers: dict[str, Callable[[Request, KeyView, float], Answer]] = {
            "models": self._models,
            "chat": self._chat,
            "embeddings": self._embeddings,
        }

    def serve(self, route: str, request: Request, key: KeyView | None) -> Response:
        """Answer ``route`` for ``key`` (the key the request's value names, if any)."""
        now = self._clock()
        denial = self._deny(request, key, now)
        if denial is not None:
            return denial
        assert key is not None
        try:
            response, use = self._answers[route](request, key, now)
        except BadRequestError as exc:
            response, use = error_response(400, str(exc)), None
        self._store.record_use(key.id, use or Use(at=now))
        return response

    def _deny(self, request: Request, key: KeyView | None, now: float) -> Response | None:
        if key is None or key.deleted:
            if request.api_key() in self._management_keys:
                return error_response(401, "management keys cannot call inference routes")
            return error_response(401, "invalid API key")
        if key.disabled:
            return error_response(403, "this API key is disabled", code="key_disabled")
        if key.expired(now):
            return error_response(403, "this API key has expired", code="key_expired")
        return None

    def _models(self, _request: Request, _key: KeyView, _now: float) -> Answer:
        data = [
            {
                "id": model,
                "object": "model",
                "created": CATALOGUE_CREATED,
                "owned_by": provider_of(model),
            }
            for model in CATALOGUE
        ]
        return json_response(200, {"object": "list", "data": data}), None

    def _chat(self, request: Request, key: KeyView, now: float) -> Answer:
        body = request.json_object()
        model = self._model(body)
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise BadRequestError("'messages' must be a non-empty list")
        refusal = self._refusal(key, model)
        if refusal is not None:
            return refusal, None
        prompt = sum(_tokens(json.dumps(message)) for message in messages)
        completion = _tokens(REPLY)
        cost = prompt * PROMPT_PRICE + completion * COMPLETION_PRICE
        answer = {
            "id": "chatcmpl-" + hashlib.sha256(f"{key.id}:{now}".encode()).hexdigest()[:24],
            "object": "chat.completion",
            "created": int(now),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": REPLY},
                    "finish_reason": "stop",
                }
            ],
            "usage": _usage(prompt, completion, cost),
        }
        return json_response(200, answer), Use(now, cost, prompt, completion)

    def _embeddings(self, request: Request, key: KeyView, now: float) -> Answer:
        body = request.json_object()
        model = self._model(body)
        texts = body.get("input")
        texts = [texts] if isinstance(texts, str) else texts
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            raise BadRequestError("'input' must be a string or a non-empty list of strings")
        refusal = self._refusal(key, model)
        if refusal is not None:
            return refusal, None
        prompt = sum(_tokens(text) for text in texts)
        cost = prompt * EMBEDDING_PRICE
        data = [
            {"object": "embedding", "index": index, "embedding": _vector(text)}
            for index, text in enumerate(texts)
        ]
        answer = {"object": "list", "data": data, "model": model, "usage": _usage(prompt, 0, cost)}
        return json_response(200, answer), Use(now, cost, prompt, 0)

    def _model(self, body: dict[str, Any]) -> str:
        model = body.get("model")
        if not isinstance(model, str) or provider_of(model) is None:
            raise BadRequestError("'model' must name a known model, e.g. 'openai/gpt-4o'")
        return model

    def _refusal(self, key: KeyView, model: str) -> Response | None:
        provider = provider_of(model)
        if key.allowed_providers is not None and provider not in key.allowed_providers:
            return error_response(403, f"provider {provider!r} is not allowed for this key")
        allowed = key.allowed_models
        if allowed is not None and qualified(model) not in {qualified(m) for m in allowed}:
            return error_response(403, f"model {model!r} is not allowed for this key")
        limit = key.spending_limit
        if limit is not None and self._store.spent(key.id) >= limit:
            return error_response(402, "this key's spending limit is reached")
        return None


def _usage(prompt: int, completion: int, cost: float) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "cost": round(cost, 10),
    }


def _vector(text: str) -> list[float]:
    digest = hashlib.sha256(text.encode()).digest()
    return [round(byte / 255 - 0.5, 4) for byte in digest[:8]]
