"""The zoo catalogue: one embedded SQLite file per zoo folder.

``runs``: one row per training run (architecture, hyperparameters, seed, data set, status,
training curve, final metrics). ``checkpoints``: one row per saved checkpoint (run, epoch,
file, metrics, and any extra targets of an imported zoo). A run and its checkpoints are
written in one transaction, after its files are in place: a killed build leaves each run
either fully catalogued or absent, never half; an import writes all its runs in one
transaction (all or nothing). A file that is not a readable catalogue is one ``ValueError``
naming it.
"""

from __future__ import annotations

import contextlib
import json
import os
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
    """The SQLite catalogue of the zoo in folder ``root``, created if missing; ``readonly``: an
    existing catalogue opened to be read (read-only where the file or folder is not writable,
    so a zoo on a read-only disk can be read)."""

    def __init__(self, root: str | Path, readonly: bool = False):
        self.root = Path(root)
        self.path = self.root / FILENAME
        with self._named():
            if readonly:
                if not self.path.is_file():
                    raise FileNotFoundError(f"{self.root} holds no zoo catalogue ({FILENAME}); build or import one "
                                            "first")
                writable = os.access(self.path, os.W_OK) and os.access(self.root, os.W_OK)  # (rolls back a
                # transaction a killed process left open)
                self.db = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode={'rw' if writable else 'ro'}", uri=True)
                self.db.execute("SELECT count(*) FROM runs JOIN checkpoints USING (run_id)").fetchone()
            else:
                self.root.mkdir(parents=True, exist_ok=True)
                self.db = sqlite3.connect(self.path)
                self.db.executescript(_SCHEMA)
        self.db.row_factory = sqlite3.Row

    @contextlib.contextmanager
    def _named(self):
        """sqlite's errors ("file is not a database", "no such table") with the file they concern."""
        try:
            yield
        except sqlite3.Error as err:
            raise ValueError(f"{self.path}: not a readable zoo catalogue ({type(err).__name__}: {err})") from None
        except json.JSONDecodeError as err:
            raise ValueError(f"{self.path}: a catalogue entry is not valid JSON ({err})") from None

    def _rows(self, query: str, params: tuple = ()) -> list[sqlite3.Row]:
        with self._named():
            return self.db.execute(query, params).fetchall()

    def close(self) -> None:
        self.db.close()

    def meta(self) -> dict[str, object]:
        with self._named():
            return {r["key"]: json.loads(r["value"]) for r in self._rows("SELECT key, value FROM meta")}

    def set_meta(self, **values) -> None:
        with self._named(), self.db:
            self.db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                                [(k, json.dumps(v)) for k, v in values.items()])

    def claim(self, **settings) -> dict[str, object]:
        """Record the zoo's build settings; a folder built with other settings is refused
        rather than mixed. Returns the settings recorded before."""
        old = self.check_claim(**settings)
        self.set_meta(**settings)
        return old

    def check_claim(self, **settings) -> dict[str, object]:
        """:meth:`claim`'s check without the write (the settings then go with :meth:`add_runs`'s
        ``meta``, in its transaction). Returns the settings recorded before."""
        old = self.meta()
        clash = {k: (old[k], v) for k, v in settings.items() if k in old and old[k] != v}
        if clash:
            raise ValueError(f"{self.root} holds a zoo built with other settings (old, new): {clash}")
        return old

    def done(self) -> set[str]:
        return {r[0] for r in self._rows("SELECT run_id FROM runs")}

    def add_run(self, run: dict) -> None:
        """Insert a run and its checkpoints in one transaction (replacing an earlier record)."""
        self.add_runs([run])

    def add_runs(self, runs: list[dict], meta: dict[str, object] | None = None) -> None:
        """Insert runs and their checkpoints, and ``meta`` settings, in one transaction: a killed
        process leaves all of them catalogued or none (earlier records of the same runs are
        replaced)."""
        with self._named(), self.db:
            if meta:
                self.db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                                    [(k, json.dumps(v)) for k, v in meta.items()])
            for run in runs:
                self._insert(run)

    def _insert(self, run: dict) -> None:
        family = run.get("family") or run["arch"]["family"]
        row = (run["run_id"], family, json.dumps(run["arch"]), json.dumps(run["hparams"]), run.get("seed"),
               run.get("dataset"), run["status"], json.dumps(run.get("curve", [])),
               *(run.get(m) for m in METRICS), run.get("seconds"))
        self.db.execute("DELETE FROM checkpoints WHERE run_id = ?", (run["run_id"],))
        self.db.execute(f"INSERT OR REPLACE INTO runs VALUES ({', '.join('?' * len(row))})", row)
        self.db.executemany(
            f"INSERT INTO checkpoints VALUES ({', '.join('?' * (4 + len(METRICS)))})",
            [(run["run_id"], c["epoch"], c["path"], *(c.get(m) for m in METRICS), json.dumps(c.get("extra", {})))
             for c in run["checkpoints"]])

    def _checked(self, row: dict) -> dict:
        """A row whose fields have the types the code reads (an edited catalogue may differ)."""
        arch = row["arch"]
        problem = None
        if not isinstance(arch, dict) or not isinstance(arch.get("family"), str):
            problem = f"architecture {arch!r} is not an object with a family"
        elif not isinstance(row.get("hparams"), dict) or not isinstance(row.get("extra", {}), dict):
            problem = "hparams or extra targets are not objects"
        elif "path" in row and (not isinstance(row["path"], str) or not isinstance(row["epoch"], int)):
            problem = f"checkpoint path {row['path']!r} / epoch {row['epoch']!r} are not a text and an integer"
        elif any(not isinstance(row.get(m), (int, float, type(None))) for m in METRICS):
            problem = "a metric is not a number"
        if problem:
            raise ValueError(f"{self.path}: run {row.get('run_id')!r}: {problem} (an edited or corrupt catalogue)")
        return row

    def runs(self) -> list[dict]:
        out = []
        with self._named():
            for r in self._rows("SELECT * FROM runs ORDER BY run_id"):
                d = dict(r)
                for key in ("arch", "hparams", "curve"):
                    d[key] = json.loads(d[key])
                out.append(self._checked(d))
        return out

    def checkpoints(self) -> list[dict]:
        """Every checkpoint with its run's family, architecture, status and hyperparameters."""
        query = ("SELECT c.*, r.family, r.arch, r.hparams, r.status, r.dataset, r.seed FROM checkpoints c "
                 "JOIN runs r USING (run_id) ORDER BY c.run_id, c.epoch")
        out = []
        with self._named():
            for r in self._rows(query):
                d = dict(r)
                for key in ("arch", "hparams", "extra"):
                    d[key] = json.loads(d[key])
                out.append(self._checked(d))
        return out
