"""check-config runs start-up's own checks: the same one line and exit 2 as `run`, nothing created."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from .conftest import MISSING_KEY_HINT, line_of, run_cli, write_config

# A meta path finder that makes google-cloud-bigquery look uninstalled in the
# process under test, whatever the venv holds.
HIDE_MODULE = """\
import sys

class Hide:
    def find_spec(self, name, path=None, target=None):
        if name == {module!r} or name.startswith({module!r} + "."):
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None

sys.meta_path.insert(0, Hide())
"""


def hide_module(tmp_path: Path, monkeypatch, module: str) -> None:
    """Make ``module`` look uninstalled to the processes this test starts."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(HIDE_MODULE.format(module=module))
    monkeypatch.setenv("PYTHONPATH", str(hook))


def our_lines(stderr: str) -> list:
    """What the client itself printed: on Python 3.9 Google's libraries add FutureWarnings of their own."""
    return [line for line in stderr.splitlines() if line.startswith("wattchecker-client:")]


def config_with_bigquery(tmp_path: Path, **bigquery: str) -> Path:
    data_dir = tmp_path / "data"
    data_dir.mkdir(exist_ok=True)
    config = write_config(tmp_path / "config.yaml", data_dir, "sim://")
    settings = {"dataset_id": "d", "table_id": "t", **bigquery}
    with open(config, "a") as f:
        f.write("bigquery:\n" + "".join(f"  {k}: {json.dumps(v)}\n" for k, v in settings.items()))
    return config


def service_account_key(path: Path) -> Path:
    """A well-formed key (a fresh RSA key no server knows), so only the checks decide."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    pem = rsa.generate_private_key(public_exponent=65537, key_size=1024).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    path.write_text(json.dumps({
        "type": "service_account", "project_id": "p", "private_key_id": "1", "private_key": pem,
        "client_email": "wattchecker@p.iam.gserviceaccount.com", "client_id": "1",
        "token_uri": "https://oauth2.googleapis.com/token",
    }))
    return path


def assert_both_stop_with(config: Path, line: str) -> None:
    """check-config and run fail alike: exit 2, the same last line."""
    checked = run_cli("check-config", "--config", str(config), timeout=30)
    started = run_cli("run", "--config", str(config), timeout=60)
    assert (checked.returncode, started.returncode) == (2, 2), (checked.stderr, started.stderr)
    assert checked.stderr.splitlines()[-1] == started.stderr.splitlines()[-1] == line
    assert "OK" not in checked.stdout


@pytest.mark.process
def test_a_missing_key_file_fails_check_config_as_it_fails_start_up(tmp_path):
    config = config_with_bigquery(tmp_path, service_account_json="missing-key.json")
    at = f"{config}:{line_of(config, 'service_account_json')}"
    assert_both_stop_with(config, f"wattchecker-client: error: {at}: bigquery.service_account_json: cannot read "
                                  f"{tmp_path / 'missing-key.json'}: No such file or directory: {MISSING_KEY_HINT}")
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == []  # run created nothing either


@pytest.mark.process
def test_an_unreadable_key_file_fails_both(tmp_path):
    # Tests run as root, for whom chmod 000 still reads: a folder where the key
    # should be is unreadable as a file for every user.
    (tmp_path / "key.json").mkdir()
    config = config_with_bigquery(tmp_path, service_account_json="key.json")
    at = f"{config}:{line_of(config, 'service_account_json')}"
    assert_both_stop_with(config, f"wattchecker-client: error: {at}: bigquery.service_account_json: cannot read "
                                  f"{tmp_path / 'key.json'}: Is a directory: {MISSING_KEY_HINT}")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a mode 000 file; the folder case covers root")
def test_a_mode_000_key_file_fails_both(tmp_path):
    key = service_account_key(tmp_path / "key.json")
    key.chmod(0)
    config = config_with_bigquery(tmp_path, service_account_json="key.json")
    at = f"{config}:{line_of(config, 'service_account_json')}"
    assert_both_stop_with(config, f"wattchecker-client: error: {at}: bigquery.service_account_json: cannot read "
                                  f"{key}: Permission denied: {MISSING_KEY_HINT}")


@pytest.mark.process
def test_a_key_that_is_not_a_key_fails_both(tmp_path):
    (tmp_path / "key.json").write_text('{"type": "service_account", "project_id": "p"}')
    (tmp_path / "key.json").chmod(0o600)
    config = config_with_bigquery(tmp_path, service_account_json="key.json")
    checked = run_cli("check-config", "--config", str(config), timeout=30)
    started = run_cli("run", "--config", str(config), timeout=60)
    assert (checked.returncode, started.returncode) == (2, 2)
    # google-auth lists the missing fields from a set: their order varies from process to process
    prefix = (f"wattchecker-client: error: {config}:{line_of(config, 'service_account_json')}: "
              f"bigquery.service_account_json: {tmp_path / 'key.json'} is not a service account key: put the JSON "
              "key made for the service account there (IAM -> Service accounts -> Keys -> Add key -> JSON); "
              "Service account info was not in the expected format, missing fields ")
    lines = [result.stderr.splitlines()[-1] for result in (checked, started)]
    assert all(line.startswith(prefix) for line in lines), lines
    assert {frozenset(line[len(prefix):].rstrip(".").split(", ")) for line in lines} == {
        frozenset({"client_email", "token_uri"})}


@pytest.mark.process
def test_a_good_key_passes_and_a_loose_mode_is_a_warning(tmp_path):
    pytest.importorskip("cryptography")
    key = service_account_key(tmp_path / "key.json")
    key.chmod(0o644)
    config = config_with_bigquery(tmp_path, service_account_json="key.json")
    result = run_cli("check-config", "--config", str(config), timeout=30)
    assert result.returncode == 0, result.stderr
    assert our_lines(result.stderr) == [
        f"wattchecker-client: warning: {key} is readable by other users (mode 644): chmod o-rwx it"]
    assert result.stdout.splitlines()[0] == f"{config}: OK"
    assert "BigQuery: d.t" in result.stdout
    assert "PRIVATE KEY" not in result.stdout + result.stderr
    key.chmod(0o640)  # as the README installs it: the service's group reads it, nobody else
    quiet = run_cli("check-config", "--config", str(config), timeout=30)
    assert (quiet.returncode, our_lines(quiet.stderr)) == (0, [])


@pytest.mark.process
def test_google_cloud_bigquery_not_installed_fails_both(tmp_path, monkeypatch):
    hide_module(tmp_path, monkeypatch, "google.cloud.bigquery")
    config = config_with_bigquery(tmp_path, project_id="p", api_endpoint="http://127.0.0.1:9")
    assert_both_stop_with(config, f"wattchecker-client: error: {config}:{line_of(config, 'bigquery:')}: bigquery: "
                                  "is configured but google-cloud-bigquery is not installed: "
                                  "pip install 'google-cloud-bigquery>=3'")
    monkeypatch.delenv("PYTHONPATH")
    installed = run_cli("check-config", "--config", str(config), timeout=30)
    assert installed.returncode == 0, installed.stderr  # the hook, not the config, made the difference


@pytest.mark.process
def test_no_project_anywhere_fails_both(tmp_path):
    config = config_with_bigquery(tmp_path, api_endpoint="http://127.0.0.1:9")
    assert_both_stop_with(config, f"wattchecker-client: error: {config}:{line_of(config, 'bigquery:')}: "
                                  "bigquery.project_id: missing, and the credentials name no project: set project_id")


@pytest.mark.process
def test_a_missing_data_folder_is_a_warning_and_nothing_is_created(tmp_path):
    data_dir = tmp_path / "mnt" / "data"
    config = write_config(tmp_path / "config.yaml", data_dir, "sim://")
    result = run_cli("check-config", "--config", str(config), timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [
        f"wattchecker-client: warning: general.data_dir: {data_dir} does not exist: start-up creates it, "
        "or exits 1 (systemd retries) when it cannot, as when its disk is not mounted yet"]
    assert result.stdout.splitlines()[0] == f"{config}: OK"
    assert not (tmp_path / "mnt").exists()


@pytest.mark.process
def test_a_ble_meter_without_bleak_fails_both(tmp_path, monkeypatch):
    hide_module(tmp_path, monkeypatch, "bleak")
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    config = tmp_path / "config.yaml"
    config.write_text(f"general:\n  data_dir: {data_dir}\n"
                      "device:\n  address: 'F0:12:34:56:78:9A'\n  model: btwattch2\n")
    checked = run_cli("check-config", "--config", str(config), timeout=30)
    started = run_cli("run", "--config", str(config), timeout=60)
    assert (checked.returncode, started.returncode) == (2, 2), (checked.stderr, started.stderr)
    last = checked.stderr.splitlines()[-1]
    assert last == started.stderr.splitlines()[-1]
    assert last.startswith("wattchecker-client: error: ") and "[ble]" in last
    assert list(data_dir.iterdir()) == []  # nothing started, nothing written
