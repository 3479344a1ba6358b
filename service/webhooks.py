"""Terminal statuses POSTed to the configured URL, signed as standard-webhooks (and OpenAI) sign them:
`webhook-id`, `webhook-timestamp` and `webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">`,
with the secret's base64 part (after `whsec_`) as the key. Sent from a thread of their own and retried
with backoff, so a slow or absent receiver never holds up a batch."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import queue
import re
import secrets
import threading
import time
from typing import Any

log = logging.getLogger("herd.service")

# Delays between the attempts of one event: about 15 minutes in all.
_DELAYS_S = (1, 2, 5, 10, 30, 60, 120, 300, 420)


def secret_key(secret: str) -> bytes:
    """The HMAC key of a `whsec_<base64>` secret; ${VAR} reads the secret from the environment."""
    found = re.fullmatch(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", secret)
    if found is not None:
        secret = os.environ.get(found.group(1), "")
    return base64.b64decode(secret.removeprefix("whsec_"))


def sign(key: bytes, message_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{message_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


class WebhookSender:
    def __init__(self, url: str, secret: str) -> None:
        self.url = url
        self._key = secret_key(secret)
        self._queue: queue.Queue[tuple[str, bytes]] = queue.Queue()
        threading.Thread(target=self._deliver_all, name="herd-webhooks", daemon=True).start()

    def send(self, event_type: str, data: dict[str, Any]) -> None:
        event_id = f"evt_{secrets.token_hex(12)}"
        body = {"id": event_id, "object": "event", "type": event_type, "created_at": int(time.time()), "data": data}
        self._queue.put((event_id, json.dumps(body).encode()))

    def _deliver_all(self) -> None:
        while True:
            event_id, body = self._queue.get()
            threading.Thread(target=self._deliver, args=(event_id, body), daemon=True).start()

    def _deliver(self, event_id: str, body: bytes) -> None:
        import httpx

        for attempt, delay in enumerate((0, *_DELAYS_S)):
            time.sleep(delay)
            timestamp = int(time.time())
            headers = {
                "content-type": "application/json",
                "webhook-id": event_id,
                "webhook-timestamp": str(timestamp),
                "webhook-signature": sign(self._key, event_id, timestamp, body),
            }
            try:
                answer = httpx.post(self.url, content=body, headers=headers, timeout=10)
                if answer.status_code < 300:
                    return
                problem = f"HTTP {answer.status_code}"
            except httpx.HTTPError as error:
                problem = f"{type(error).__name__}: {error}"
            log.warning("webhook %s to %s: attempt %d failed (%s)", event_id, self.url, attempt + 1, problem)
        log.error("webhook %s to %s: given up after %d attempts", event_id, self.url, len(_DELAYS_S) + 1)
