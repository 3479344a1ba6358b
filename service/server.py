"""Starts the service: checks the service file and keys, picks batches up where the root left them,
and serves HTTP until SIGTERM or Ctrl-C."""

from __future__ import annotations

import logging

from common.retry import storage_problem
from common.storage import Storage, absolute
from schemas.errors import SpecError
from schemas.job import RetrySpec, StorageSpec
from service.app import build_app
from service.config import ServiceSpec
from service.keys import ApiKeys
from service.store import Store
from service.webhooks import WebhookSender
from service.worker import BatchWorker

log = logging.getLogger("herd.service")

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def serve(spec: ServiceSpec, keys: ApiKeys) -> None:
    if not keys.required and spec.host not in LOOPBACK:
        raise SpecError(
            f"--host {spec.host}: without API keys (--keys FILE or HERD_API_KEYS) the service listens on "
            "loopback only; give keys to serve other machines"
        )
    for model in spec.models:
        model.check_weights()
    import uvicorn

    from jobs.runner import ensure_ray

    root = absolute(spec.root)
    store = Store(root, Storage(StorageSpec(), RetrySpec()))
    try:
        # Reads the root (and writes to it on its first start): a root this server cannot use (no
        # credentials, no such bucket, access denied) stops it here instead of failing every request.
        store.index_open_batches()
    except Exception as error:  # noqa: BLE001 - whatever storage raised, said with the root it concerns
        raise storage_problem(f"root: cannot use {root}", error) from None
    webhooks = WebhookSender(spec.webhook.url, spec.webhook.secret) if spec.webhook is not None else None
    worker = BatchWorker(spec, store, webhooks)
    app = build_app(spec, store, keys, worker.health_problem, worker.metrics)
    models = ", ".join(f"{model.name} ({model.job['model']['path']})" for model in spec.models)
    log.info("serving the Batch API on http://%s:%d/v1 for %s; state in %s", spec.host, spec.port, models, root)
    if not keys.required:
        log.warning("no API keys: every caller is the same owner, and only this machine can connect")
    # Ray first, on the main thread: uvicorn's signal handlers then take over SIGTERM and Ctrl-C.
    ensure_ray(quiet=True)
    worker.start()
    try:
        # log_config=None: uvicorn's own lines ("Invalid HTTP request received.") go through herd's
        # handler, as JSON objects with --log-format json, instead of its own plain-text one.
        uvicorn.run(app, host=spec.host, port=spec.port, log_level="warning", access_log=False, log_config=None)
    finally:
        worker.close()
