"""The real `run` process loading into a real BigQuery emulator: precision, batches, 403, SIGTERM mid-load."""

from __future__ import annotations

import json
import signal
from pathlib import Path

from .conftest import Emulator, wait_for, write_config
from .datacheck import read
from .test_uploader import BigQueryProxy, write_hours

TABLE = f"{Emulator.PROJECT}.wattchecker.power"


def with_bigquery(config: Path, url: str) -> Path:
    with open(config, "a") as f:
        f.write(
            f"bigquery:\n  dataset_id: wattchecker\n  table_id: power\n  project_id: {Emulator.PROJECT}\n"
            f"  api_endpoint: {url}\n  create_table: true\n  max_backoff: 2\n"
        )
    return config


def ledger(data_dir: Path) -> dict:
    from wattchecker_client.upload.ledger import read_ledger

    return read_ledger(data_dir)


def table_rows(emulator: Emulator) -> list:
    rows = emulator.query(f"SELECT datetime, V, mA, W FROM `{TABLE}` ORDER BY datetime")
    return [(t.strftime("%Y-%m-%d %H:%M:%S"), v, ma, w) for t, v, ma, w in rows]


def test_the_daemon_loads_the_json_files_full_precision_row_for_row(emulator, daemons, tmp_path):
    """Both formats written: the table holds the JSON's floats exactly, not the CSV's two decimals."""
    emulator.start()
    data_dir = tmp_path / "data"
    config = write_config(tmp_path / "config.yaml", data_dir, "sim://?seed=7&clock_speed=1200", poll_interval=0.05)
    daemon = daemons(with_bigquery(config, emulator.url), tmp_path)
    wait_for(lambda: len(ledger(data_dir)["uploaded"]) >= 3, timeout=180, what="three hours uploaded")
    assert daemon.stop() == 0, daemon.stderr()
    uploaded = ledger(data_dir)["uploaded"]
    assert all(e["source"].startswith("wattchecker-data.json.") for e in uploaded.values())
    expected = []
    for key in uploaded:
        stem, rest = key.split(".", 1)
        expected += [json.loads(line) for line in read(data_dir / f"{stem}.json.{rest}.gz")]
    assert any(round(r["W"], 2) != r["W"] for r in expected)  # two decimals would show
    assert table_rows(emulator) == sorted((r["datetime"], r["V"], r["mA"], r["W"]) for r in expected)


def test_a_backlog_waits_out_a_403_then_loads_one_job_per_utc_day(emulator, daemons, tmp_path):
    with BigQueryProxy(emulator.start()) as proxy:
        data_dir = tmp_path / "data"
        written = write_hours(data_dir, 48, per_hour=5)  # two UTC days, made by the real writer
        config = write_config(tmp_path / "config.yaml", data_dir, "sim://?seed=7", poll_interval=1.0)
        proxy.deny = "jobs"  # the service account lacks BigQuery Job User
        daemon = daemons(with_bigquery(config, proxy.url), tmp_path)
        wait_for(lambda: proxy.denied >= 3, what="retries with backoff")
        assert ledger(data_dir)["uploaded"] == {} and not (data_dir / "failed").exists()
        proxy.deny = None  # the role is granted
        wait_for(lambda: len(ledger(data_dir)["uploaded"]) == 48, timeout=180, what="the backlog uploaded")
        assert daemon.stop() == 0, daemon.stderr()
        log = daemon.stderr()
        assert log.count("the service account likely lacks") == 1  # one error line per outage
        assert "likely lacks BigQuery Job User (roles/bigquery.jobUser) on project test-project" in log
        assert proxy.loads == 2  # 48 hours, two days: two load jobs
        assert len(table_rows(proxy.upstream)) == len(written)


def test_sigterm_mid_load_then_restart_credits_that_very_job_exactly_once(emulator, daemons, tmp_path):
    """The proxy holds the load's answer, so the SIGTERM lands inside the load on any machine:
    BigQuery has the rows, the daemon has not heard so."""
    with BigQueryProxy(emulator.start()) as proxy:
        data_dir = tmp_path / "data"
        written = write_hours(data_dir, 8, per_hour=600)
        config = write_config(tmp_path / "config.yaml", data_dir, "sim://?seed=7", poll_interval=1.0)
        with_bigquery(config, proxy.url)
        proxy.hold_loads()
        first = daemons(config, tmp_path)
        wait_for(proxy.held.is_set, what="the load reaching BigQuery")
        ((job_id, batch),) = ledger(data_dir)["pending"].items()
        assert len(batch["hours"]) == 8
        assert first.stop() == 0, first.stderr()
        assert "an upload is still in flight" in first.stderr()  # stopped inside the load ...
        after_stop = ledger(data_dir)
        assert after_stop["uploaded"] == {} and list(after_stop["pending"]) == [job_id]  # ... before its credit
        proxy.release()
        second = daemons(config, tmp_path)
        wait_for(lambda: len(ledger(data_dir)["uploaded"]) == 8, timeout=240, what="the batch credited")
        assert second.stop() == 0, second.stderr()
        assert f"batch {job_id} from an earlier run is in BigQuery: crediting its 8 hour(s)" in second.stderr()
        final = ledger(data_dir)
        assert final["pending"] == {} and {e["job_id"] for e in final["uploaded"].values()} == {job_id}
        assert proxy.loads == 1  # the restart asked about the job, it did not load again
        ((count,),) = emulator.query(f"SELECT COUNT(*) FROM `{TABLE}`")
        assert count == len(written) == 8 * 600


def test_sigkill_once_the_batch_is_written_ahead_then_restart_loads_every_hour_exactly_once(emulator, daemons, tmp_path):
    """Killed wherever the load was (not yet sent, running, done but not credited): the restart settles it."""
    emulator.start()
    data_dir = tmp_path / "data"
    written = write_hours(data_dir, 4, per_hour=600)
    config = with_bigquery(write_config(tmp_path / "config.yaml", data_dir, "sim://?seed=7", poll_interval=1.0),
                           emulator.url)
    first = daemons(config, tmp_path)
    # Written ahead, then pending until BigQuery answers: a fast answer may credit it before a look
    # sees it pending, so either state is where the kill lands (the proxy test above holds one).
    wait_for(lambda: ledger(data_dir)["pending"] or ledger(data_dir)["uploaded"], what="the batch written ahead")
    first.stop(signal.SIGKILL)
    second = daemons(config, tmp_path)
    wait_for(lambda: len(ledger(data_dir)["uploaded"]) == 4, timeout=180, what="the backlog credited")
    assert second.stop() == 0, second.stderr()
    final = ledger(data_dir)
    assert final["pending"] == {} and len({e["job_id"] for e in final["uploaded"].values()}) == 1
    ((count,),) = emulator.query(f"SELECT COUNT(*) FROM `{TABLE}`")
    assert count == len(written) == 4 * 600
