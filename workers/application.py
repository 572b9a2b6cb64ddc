"""The Celery app.

Creating it reads no setting: the configuration module (workers.celeryconfig) is imported by
Celery when the app is first configured, i.e. when a `celery` command starts, and a bad setting
stops that command with one line.
"""
from celery import Celery

app = Celery("cloud-bandwidth")
app.config_from_object("workers.celeryconfig")

# Node-agent hooks (queue, registry heartbeat) are attached by importing their module.
import workers.agent  # noqa: E402,F401  (registers signal handlers on import)
