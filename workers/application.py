"""The Celery app.

Creating it reads no setting: the configuration module (workers.celeryconfig) is imported by
Celery when the app is first configured, i.e. when a `celery` command starts, and a bad setting
stops that command with one line.
"""
from celery import Celery

app = Celery("cloud-bandwidth")
app.config_from_object("workers.celeryconfig")

# Node-agent parts: the registry heartbeat (a consumer bootstep) and the test servers; the result
# handler's drainer of the durable result stream (a consumer bootstep, workers.results); and the
# liveness file container health checks read (workers.liveness; only with
# CBANDWIDTH_HEALTH_FILE set).
from workers import agent, liveness, results  # noqa: E402

agent.install(app)
liveness.install(app)
results.install(app)
