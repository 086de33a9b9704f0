"""The soak harness end to end for ~10 s on the tiny NomicBert folder: traffic of every kind, RSS samples, the slope,
the plot, a server environment for an A/B, and a server that exits 0 on SIGTERM. The real soak (20 minutes, MiniLM)
is `python -m bench.soak`. (Lost in a merge once, with the README still naming it: restored.)"""

from __future__ import annotations

import json

from bench import soak
from tests.conftest import NOMIC


def test_soak_smoke(tmp_path):
    rc = soak.main(["--minutes", "0.15", "--sample-s", "1", "--concurrency", "4", "--model",
                    str(NOMIC / "nomic-text-tiny"), "--out", str(tmp_path), "--date", "2000-01-01",
                    "--env", "MALLOC_ARENA_MAX=3", "--name", "ab"])
    result = json.loads((tmp_path / "2000-01-01-ab.json").read_text())
    assert rc == 0, result["failures"]
    assert result["exit_code"] == 0 and result["failure_count"] == 0
    assert result["server_env"] == {"MALLOC_ARENA_MAX": "3"}
    kinds = {key.split()[0] for key in result["tally"]}
    assert {"texts", "token_ids", "bad"} <= kinds
    assert len(result["samples"]) >= 5 and result["slope_mb_per_1000_requests"] is not None
    assert (tmp_path / "2000-01-01-ab.png").stat().st_size > 10_000


def test_slope_is_least_squares_per_1000_requests():
    assert abs(soak.slope_per_1000([0, 1000, 2000, 3000], [100.0, 101.0, 102.0, 103.0]) - 1.0) < 1e-9
    assert soak.slope_per_1000([0, 0], [1.0, 2.0]) is None
    assert soak.slope_stderr([0, 1000, 2000, 3000], [100.0, 101.0, 102.0, 103.0]) < 1e-9  # on the line: no error
    assert abs(soak.slope_stderr([0, 1000, 2000, 3000], [0.0, 2.0, 0.0, 2.0]) - 0.5657) < 1e-4  # sqrt((3.2 / 2) / 5)
