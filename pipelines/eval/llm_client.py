"""A minimal client for OpenAI-compatible chat completion endpoints (vLLM, SGLang, llama.cpp, hosted APIs).

Only `POST {base_url}/chat/completions` is needed, so this is a thin layer over `requests` (already installed
with Ray) rather than the `openai` SDK. What it adds is the part a judge run of thousands of calls relies on:

- retries with exponential backoff and full jitter on 429, 5xx, timeouts and dropped connections (a
  `Retry-After` header, when sent, is honoured up to `backoff_max_s`); other 4xx fail at once, since
  repeating a malformed request cannot help;
- the API key read only from the environment (`TTT_JUDGE_API_KEY`, then `OPENAI_API_KEY`), never from
  config files, and never printed; no key means no Authorization header (local servers);
- one HTTP session per thread, so a judge may run calls concurrently from a thread pool.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import requests

from ttt_common.config_tools import reject_unknown_keys

DEFAULT_KEY_ENV = ("TTT_JUDGE_API_KEY", "OPENAI_API_KEY")
RETRY_STATUS = frozenset({408, 409, 425, 429}) | frozenset(range(500, 600))


class LlmRequestError(RuntimeError):
    """A call that failed for good: a non-retryable status, a malformed reply, or retries exhausted."""


@dataclass(frozen=True)
class ClientConfig:
    """Where the judge model lives and how hard to try. `extra_body` is merged into every request (e.g.
    `{"chat_template_kwargs": {"enable_thinking": false}}` for Qwen3 behind vLLM)."""

    base_url: str
    model: str
    api_key_env: tuple[str, ...] = DEFAULT_KEY_ENV
    timeout_s: float = 120.0
    max_retries: int = 6
    backoff_base_s: float = 1.0
    backoff_max_s: float = 60.0
    max_tokens: int | None = 1024
    extra_body: Mapping[str, Any] = field(default_factory=dict)

    @staticmethod
    def from_mapping(m: Mapping[str, Any]) -> ClientConfig:
        known = {f.name for f in fields(ClientConfig)}
        reject_unknown_keys(m, known, "llm client config")
        missing = [k for k in ("base_url", "model") if not m.get(k)]
        if missing:
            raise ValueError(f"llm client config: {' and '.join(missing)} required (e.g. base_url: "
                             "http://127.0.0.1:8000/v1, model: Qwen3-235B-A22B)")
        values = dict(m)
        if "api_key_env" in values:
            env = values["api_key_env"]
            values["api_key_env"] = (env,) if isinstance(env, str) else tuple(env)
        values["extra_body"] = dict(values.get("extra_body") or {})
        return ClientConfig(**values)


def api_key_from_env(names: Sequence[str]) -> str | None:
    """The first non-empty variable among `names` (None: send no Authorization header)."""
    return next((os.environ[n] for n in names if os.environ.get(n)), None)


def backoff_delay(attempt: int, base_s: float, max_s: float, rng: random.Random,
                  retry_after_s: float | None = None) -> float:
    """Full-jitter exponential backoff: uniform in [0, min(max, base * 2**attempt)], raised to the server's
    Retry-After when it asked for longer, capped at `max_s` (so a hostile header cannot stall the run)."""
    delay = rng.uniform(0.0, min(max_s, base_s * (2 ** attempt)))
    if retry_after_s is not None:
        delay = max(delay, retry_after_s)
    return min(delay, max_s)


def _retry_after(response: requests.Response) -> float | None:
    value = response.headers.get("Retry-After")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:  # an HTTP date: rare for APIs; fall back to our own backoff
        return None


class ChatClient:
    """`complete(messages)` -> the assistant text of the first choice, with retries (see module docstring)."""

    def __init__(self, cfg: ClientConfig, *, sleep: Callable[[float], None] = time.sleep,
                 rng: random.Random | None = None) -> None:
        self.cfg = cfg
        self._url = cfg.base_url.rstrip("/") + "/chat/completions"
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._rng_lock = threading.Lock()
        self._local = threading.local()
        key = api_key_from_env(cfg.api_key_env)
        self._headers = {"Content-Type": "application/json"}
        if key:
            self._headers["Authorization"] = f"Bearer {key}"

    def __repr__(self) -> str:  # the headers hold the key: keep them out of logs and tracebacks
        return f"ChatClient(url={self._url!r}, model={self.cfg.model!r})"

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
        return session

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        with self._rng_lock:
            return backoff_delay(attempt, self.cfg.backoff_base_s, self.cfg.backoff_max_s, self._rng, retry_after)

    def complete(self, messages: Sequence[Mapping[str, str]], temperature: float = 0.0) -> str:
        body: dict[str, Any] = {"model": self.cfg.model, "messages": list(messages), "temperature": temperature,
                                **self.cfg.extra_body}
        if self.cfg.max_tokens is not None:
            body["max_tokens"] = self.cfg.max_tokens
        last = "no attempt made"
        for attempt in range(self.cfg.max_retries + 1):
            retry_after = None
            try:
                response = self._session().post(self._url, json=body, headers=self._headers,
                                                timeout=self.cfg.timeout_s)
            except (requests.Timeout, requests.ConnectionError) as e:
                last = f"{e.__class__.__name__}: {e}"
            else:
                if response.status_code == 200:
                    return _content(response)
                last = f"HTTP {response.status_code}: {response.text[:200]}"
                if response.status_code not in RETRY_STATUS:
                    raise LlmRequestError(f"{self._url}: {last}")
                retry_after = _retry_after(response)
            if attempt < self.cfg.max_retries:
                self._sleep(self._delay(attempt, retry_after))
        raise LlmRequestError(f"{self._url}: gave up after {self.cfg.max_retries + 1} attempts; last: {last}")


def _content(response: requests.Response) -> str:
    """The first choice's message text; reasoning models may send `content: null` (-> "")."""
    try:
        message = response.json()["choices"][0]["message"]
    except (ValueError, KeyError, IndexError, TypeError) as e:
        raise LlmRequestError(f"malformed chat completion reply ({e.__class__.__name__}): {response.text[:200]}") \
            from None
    return str(message.get("content") or "")
