"""The zoo catalogue: one embedded SQLite file per zoo folder.

``runs``: one row per training run (architecture, hyperparameters, seed, data set, status,
training curve, final metrics). ``checkpoints``: one row per saved checkpoint (run, epoch,
file, metrics, and any extra targets of an imported zoo). A run and its checkpoints are
written in one transaction, after its files are in place: a killed build leaves each run
either fully catalogued or absent, never half.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

FILENAME = "catalogue.sqlite"
METRICS = ("test_acc", "test_loss", "train_acc", "train_loss", "gap")

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY, family TEXT NOT NULL, arch TEXT NOT NULL, hparams TEXT NOT NULL,
    seed INTEGER, dataset TEXT, status TEXT NOT NULL, curve TEXT NOT NULL,
    {", ".join(f"{m} REAL" for m in METRICS)}, seconds REAL);
CREATE TABLE IF NOT EXISTS checkpoints (
    run_id TEXT NOT NULL REFERENCES runs(run_id), epoch INTEGER NOT NULL, path TEXT NOT NULL,
    {", ".join(f"{m} REAL" for m in METRICS)}, extra TEXT NOT NULL DEFAULT '{{}}',
    PRIMARY KEY (run_id, epoch));
"""


class Catalogue:
    """The SQLite catalogue of the zoo in folder ``root`` (created if missing)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.root / FILENAME)
        self.db.row_factory = sqlite3.Row
        self.db.executescript(_SCHEMA)

    def close(self) -> None:
        self.db.close()

    def meta(self) -> dict[str, object]:
        return {r["key"]: json.loads(r["value"]) for r in self.db.execute("SELECT key, value FROM meta")}

    def set_meta(self, **values) -> None:
        with self.db:
            self.db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                                [(k, json.dumps(v)) for k, v in values.items()])

    def claim(self, **settings) -> dict[str, object]:
        """Record the zoo's build settings; a folder built with other settings is refused
        rather than mixed. Returns the settings recorded before."""
        old = self.meta()
        clash = {k: (old[k], v) for k, v in settings.items() if k in old and old[k] != v}
        if clash:
            raise ValueError(f"{self.root} holds a zoo built with other settings (old, new): {clash}")
        self.set_meta(**settings)
        return old

    def done(self) -> set[str]:
        return {r[0] for r in self.db.execute("SELECT run_id FROM runs")}

    def add_run(self, run: dict) -> None:
        """Insert a run and its checkpoints in one transaction (replacing an earlier record)."""
        family = run.get("family") or run["arch"]["family"]
        row = (run["run_id"], family, json.dumps(run["arch"]), json.dumps(run["hparams"]), run.get("seed"),
               run.get("dataset"), run["status"], json.dumps(run.get("curve", [])),
               *(run.get(m) for m in METRICS), run.get("seconds"))
        with self.db:
            self.db.execute("DELETE FROM checkpoints WHERE run_id = ?", (run["run_id"],))
            self.db.execute(f"INSERT OR REPLACE INTO runs VALUES ({', '.join('?' * len(row))})", row)
            self.db.executemany(
                f"INSERT INTO checkpoints VALUES ({', '.join('?' * (4 + len(METRICS)))})",
                [(run["run_id"], c["epoch"], c["path"], *(c.get(m) for m in METRICS), json.dumps(c.get("extra", {})))
                 for c in run["checkpoints"]])

    def runs(self) -> list[dict]:
        out = []
        for r in self.db.execute("SELECT * FROM runs ORDER BY run_id"):
            d = dict(r)
            for key in ("arch", "hparams", "curve"):
                d[key] = json.loads(d[key])
            out.append(d)
        return out

    def checkpoints(self) -> list[dict]:
        """Every checkpoint with its run's family, architecture, status and hyperparameters."""
        query = ("SELECT c.*, r.family, r.arch, r.hparams, r.status, r.dataset, r.seed FROM checkpoints c "
                 "JOIN runs r USING (run_id) ORDER BY c.run_id, c.epoch")
        out = []
        for r in self.db.execute(query):
            d = dict(r)
            for key in ("arch", "hparams", "extra"):
                d[key] = json.loads(d[key])
            out.append(d)
        return out
