"""The container harness's podman configuration, on files only (no podman needed)."""
import tomllib

import pytest

from tests.containers import harness


def test_written_configuration_is_toml_with_every_required_setting(tmp_path):
    conf = tmp_path / "containers.conf"
    assert harness.configure_podman(conf) is True
    parsed = tomllib.loads(conf.read_text())
    for table, values in harness.REQUIRED_CONF.items():
        assert {k: parsed[table][k] for k in values} == values
    assert parsed["engine"]["runtime"] == "runc"
    assert parsed["network"]["default_subnet"].startswith("198.19.")


def test_configuration_is_idempotent_and_refreshes_only_its_own_file(tmp_path):
    conf = tmp_path / "containers.conf"
    harness.configure_podman(conf)
    assert harness.configure_podman(conf) is False
    conf.write_text(harness.MARKER + "\n[engine]\nruntime = \"crun\"\n")  # an older harness
    assert harness.configure_podman(conf) is True
    assert conf.read_text() == harness.containers_conf_text()


def test_a_foreign_configuration_is_accepted_when_it_agrees_and_never_overwritten(tmp_path):
    conf = tmp_path / "containers.conf"
    agreeing = harness.containers_conf_text().replace(harness.MARKER, "# the operator's")
    conf.write_text(agreeing + "\n# extra\n")
    assert harness.configure_podman(conf) is False
    conf.write_text(agreeing.replace('runtime = "runc"', 'runtime = "crun"'))
    with pytest.raises(harness.HarnessError, match=r"\[engine\] runtime = 'crun'"):
        harness.configure_podman(conf)
    assert 'runtime = "crun"' in conf.read_text()
