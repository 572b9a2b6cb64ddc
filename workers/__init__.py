"""cloud-bandwidth's Celery app and node agent: `celery -A workers worker|beat|call …`."""
from workers.application import app

__all__ = ["app"]
