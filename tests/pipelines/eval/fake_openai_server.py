"""A scripted OpenAI-compatible chat server for testing the LLM judge over real HTTP.

    python -m tests.pipelines.eval.fake_openai_server [--idle-timeout 60]

Binds 127.0.0.1 on an ephemeral port and prints `PORT <n>` on its first stdout line. What it does for a
request is scripted by the request itself: the prompt must contain `<fake>{json}</fake>` (the judge embeds the
answer being judged in its prompt, so a test writes the script into that answer) with
    reply        the assistant text to return once the failures below are used up
    fail         HTTP statuses for the first attempts, e.g. [500] (500 once, then success)
    retry_after  seconds to send in a Retry-After header with each failure (optional)
    sleep        seconds to wait before answering each of the first attempts (client timeouts)
Attempts are counted per script. GET /log returns every request seen: time, script, attempt, temperature,
whether an Authorization header came (never its value). It shuts itself down after --idle-timeout seconds
without requests, so a crashed test cannot leave it running.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_SCRIPT = re.compile(r"<fake>(.*?)</fake>", re.DOTALL)


class _State:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.attempts: dict[str, int] = {}
        self.log: list[dict[str, Any]] = []
        self.last_activity = time.monotonic()

    def record(self, key: str, entry: dict[str, Any]) -> int:
        with self.lock:
            attempt = self.attempts.get(key, 0)
            self.attempts[key] = attempt + 1
            self.log.append({**entry, "script": key, "attempt": attempt, "time": time.monotonic()})
            self.last_activity = time.monotonic()
            return attempt


STATE = _State()


class Handler(BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # keep the test output clean
        return

    def _send(self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client timed out and left
            pass

    def do_GET(self) -> None:
        if self.path == "/log":
            with STATE.lock:
                self._send(200, {"requests": list(STATE.log)})
        else:
            self._send(404, {"error": "not found"})

    def do_POST(self) -> None:
        if not self.path.endswith("/chat/completions"):
            self._send(404, {"error": f"no route {self.path}"})
            return
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        prompt = "\n".join(str(m.get("content", "")) for m in body.get("messages", []))
        found = _SCRIPT.search(prompt)
        if not found or "model" not in body:
            self._send(400, {"error": "request needs a model and a <fake>{...}</fake> script"})
            return
        key = found.group(1)
        script = json.loads(key)
        attempt = STATE.record(key, {"temperature": body.get("temperature"), "model": body["model"],
                                     "authorized": self.headers.get("Authorization", "").startswith("Bearer ")})
        sleeps = script.get("sleep", [])
        if attempt < len(sleeps):
            time.sleep(float(sleeps[attempt]))
        fails = script.get("fail", [])
        if attempt < len(fails):
            headers = {"Retry-After": str(script["retry_after"])} if "retry_after" in script else None
            self._send(int(fails[attempt]), {"error": {"message": "scripted failure"}}, headers)
            return
        self._send(200, {"id": f"fake-{attempt}", "object": "chat.completion", "model": body["model"],
                         "choices": [{"index": 0, "finish_reason": "stop",
                                      "message": {"role": "assistant", "content": script.get("reply", "")}}]})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--idle-timeout", type=float, default=60.0)
    args = parser.parse_args(argv)
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True

    def watchdog() -> None:
        while time.monotonic() - STATE.last_activity < args.idle_timeout:
            time.sleep(0.2)
        server.shutdown()

    threading.Thread(target=watchdog, daemon=True).start()
    print(f"PORT {server.server_address[1]}", flush=True)
    server.serve_forever(poll_interval=0.1)
    server.server_close()
    sys.exit(0)


if __name__ == "__main__":
    main()
