"""A grid's manifest: the record of every submission of the grid and the runs it submitted.

`<root>/<grid>/manifest.json` is written by `slurm.submit` (through `record_jobs`) and
read by `slurm.status` and the analysis commands, which show the runs that were
actually submitted, whatever `--set` / `--only` they were submitted with, instead of
a fresh expansion of the grid file (whose run ids change with every `--set`).

    {"format": 2,
     "runs": {RUN_ID: {"job_id", "array_index", "executor", "submitted", "run_dir", "submission"}},
     "submissions": [{"number", "time", "grid_file", "overrides", "only", "executor",
                      "runs": {RUN_ID: {"job_id", "array_index", "run_dir"}}}]}

`runs` holds each run's latest job (what resubmission and cancel act on); `submissions`
is the history, one entry per `slurm.submit` that submitted something, with the
`--set` overrides and `--only` filters it was given. `run_dir` is relative to the
grid's folder, so a results root can be moved. Manifests written before submissions
were recorded (a flat `{RUN_ID: {"job_id", "array_index", "executor", "submitted"}}`)
still read: their runs form one submission whose settings are unknown.

`select` turns a grid file (plus optional `--set` / `--only`) into the runs to show:
with neither, every recorded run, plus the runs the grid would produce with the
submissions' overrides that were never submitted ("not submitted"); with them, the
runs of that expansion, recorded or not.

A run directory that grids share (experiments/store.py: the grid's entry is a link to the
directory another grid holds) shows its latest job whichever grid of the root submitted it
(`latest_jobs`), so that every grid sees the job that trains it, and counts as submitted.
"""
from __future__ import annotations

import argparse
import fcntl
import json
import os
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from experiments.atomic import atomic_write_json
from experiments.grid import load_grid
from experiments.run_config import find_run_dir
from model.errors import UserError

FILENAME = "manifest.json"
FORMAT = 2
TIME_FORMAT = "%Y-%m-%dT%H:%M:%S"


@dataclass
class Submission:
    """One `slurm.submit` of a grid. `overrides`/`only` are None when not recorded (old manifests)."""

    number: int
    time: str
    overrides: list[str] | None = None
    only: list[str] | None = None
    grid_file: str | None = None
    executor: str | None = None
    runs: dict[str, dict[str, Any]] = field(default_factory=dict)
    key: str = ""  # identifies the submission across the writes of one command (one per job array)

    @property
    def settings_known(self) -> bool:
        return self.overrides is not None

    def flags(self) -> str:
        """The selection flags it was submitted with, as on the command line."""
        if not self.settings_known:
            return "settings not recorded"
        words = [f"--set {o}" for o in self.overrides or []] + [f"--only {o}" for o in self.only or []]
        return " ".join(words) or "no --set/--only"

    def describe(self) -> str:
        return f"#{self.number} {self.time.replace('T', ' ')} ({self.flags()}, {len(self.runs)} runs)"

    def to_json(self) -> dict[str, Any]:
        return {"number": self.number, "time": self.time, "overrides": self.overrides, "only": self.only,
                "grid_file": self.grid_file, "executor": self.executor, "runs": self.runs, "key": self.key}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Submission":
        return cls(number=int(data["number"]), time=str(data.get("time", "")), overrides=data.get("overrides"),
                   only=data.get("only"), grid_file=data.get("grid_file"), executor=data.get("executor"),
                   runs=dict(data.get("runs") or {}), key=str(data.get("key", "")))


def new_submission(grid_file: str | os.PathLike | None = None, overrides: Iterable[str] | None = None,
                   only: Iterable[str] | None = None) -> Submission:
    """A submission about to be made (numbered when first recorded); None: settings unknown."""
    return Submission(number=0, time=time.strftime(TIME_FORMAT),
                      overrides=None if overrides is None else list(overrides),
                      only=None if overrides is None else list(only or []),
                      grid_file=None if grid_file is None else str(grid_file), key=uuid.uuid4().hex)


def add_selection_arguments(parser: argparse.ArgumentParser, purpose: str = "select") -> None:
    """The --set / --only flags, the same for slurm.submit, slurm.status and the analysis commands."""
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help=f"override a value of every run of the grid, as at submission (changes run ids); "
                             f"{purpose} the runs of that expansion")
    parser.add_argument("--only", action="append", default=[], metavar="KEY=VALUE",
                        help=f"{purpose} the runs whose config has KEY=VALUE only")


@dataclass
class Manifest:
    grid_dir: Path
    runs: dict[str, dict[str, Any]] = field(default_factory=dict)
    submissions: list[Submission] = field(default_factory=list)
    exists: bool = False

    def run_dir(self, run_id: str) -> Path:
        """Where a recorded run lives (the grid's folder / run id when not recorded)."""
        rel = self.runs.get(run_id, {}).get("run_dir") or run_id
        return self.grid_dir / rel

    def submissions_of(self, run_id: str) -> list[int]:
        return [s.number for s in self.submissions if run_id in s.runs]

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "runs": self.runs, "submissions": [s.to_json() for s in self.submissions]}


def load(grid_dir: str | os.PathLike) -> Manifest:
    """The grid's manifest; an empty one when the grid was never submitted."""
    grid_dir = Path(grid_dir)
    path = grid_dir / FILENAME
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        return Manifest(grid_dir)
    except (ValueError, OSError) as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise UserError(f"{path}: {_one_line(err)}, not as slurm.submit writes it ({RECOVERY})") from None
    problem = _shape_problem(data)
    if problem:
        raise UserError(f"{path}: {problem}, not as slurm.submit writes it ({RECOVERY})")
    if "format" not in data:
        return _from_flat(grid_dir, data)
    submissions = [Submission.from_json(s) for s in data.get("submissions", [])]
    return Manifest(grid_dir, dict(data.get("runs", {})), submissions, exists=True)


RECOVERY = ("restore it, or move it aside: the run folders stay, resubmitting skips the finished ones, "
            "and jobs still running are then not tracked")


def _one_line(err: Exception) -> str:
    if isinstance(err, json.JSONDecodeError):
        return f"not valid JSON ({err})"
    if isinstance(err, UnicodeDecodeError):
        return f"not UTF-8 text (byte {err.start})"
    return getattr(err, "strerror", None) or str(err)


def _shape_problem(data: Any) -> str | None:
    """What in a parsed manifest.json is not of the shape the readers use (module docstring), or None."""
    if not isinstance(data, dict):
        return "not a JSON object"
    if "format" not in data:  # the flat form: run id -> latest job
        return _mapping_problem(data, "manifest")
    problem = _mapping_problem(data.get("runs", {}), "runs")
    submissions = data.get("submissions", [])
    if problem or not isinstance(submissions, list):
        return problem or "submissions is not a list"
    for index, entry in enumerate(submissions):
        where = f"submissions[{index}]"
        if not isinstance(entry, dict) or not _is_int(entry.get("number")):
            return f"{where} has no integer number"
        if any(not (entry.get(k) is None or isinstance(entry[k], list) and all(isinstance(x, str) for x in entry[k]))
               for k in ("overrides", "only")):
            return f"{where}'s overrides or only is not a list of strings"
        problem = _mapping_problem(entry.get("runs") or {}, f"{where}.runs")
        if problem:
            return problem
    return None


def _mapping_problem(runs: Any, where: str) -> str | None:
    """Whether `runs` maps run ids to objects whose run_dir (if any) is a string and submission an integer."""
    if not isinstance(runs, dict):
        return f"{where} is not an object of runs"
    for run_id, entry in runs.items():
        if not isinstance(entry, dict):
            return f"{where}[{run_id!r}] is not an object"
        if entry.get("run_dir") is not None and not isinstance(entry["run_dir"], str):
            return f"{where}[{run_id!r}].run_dir is not a string"
        if "submission" in entry and not _is_int(entry["submission"]):
            return f"{where}[{run_id!r}].submission is not an integer"
    return None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _from_flat(grid_dir: Path, entries: dict[str, dict[str, Any]]) -> Manifest:
    """A manifest written before submissions were recorded: run id -> latest job."""
    runs = {run_id: {**entry, "run_dir": entry.get("run_dir") or run_id} for run_id, entry in entries.items()}
    submissions = []
    if runs:
        times = sorted(str(e.get("submitted", "")) for e in runs.values())
        executors = sorted({str(e.get("executor")) for e in runs.values()})
        submissions.append(Submission(number=1, time=times[0], executor=",".join(executors), runs={
            run_id: {k: e.get(k) for k in ("job_id", "array_index", "run_dir")} for run_id, e in runs.items()}))
    for entry in runs.values():
        entry.setdefault("submission", 1)
    return Manifest(grid_dir, runs, submissions, exists=True)


@contextmanager
def _locked(grid_dir: Path) -> Iterator[None]:
    """Serialise read-modify-write of the manifest between concurrent submissions."""
    grid_dir.mkdir(parents=True, exist_ok=True)
    with open(grid_dir / f".{FILENAME}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def record_jobs(grid_dir: str | os.PathLike, submission: Submission,
                jobs: Sequence[tuple[str, Path, str, int]], executor: str) -> Submission:
    """Record (run id, run dir, job id, array index) of jobs just submitted as part of `submission`.

    Called once per job array of a command; the first call numbers the submission and
    appends it to the history, later ones add to it. Returns the recorded submission.
    """
    grid_dir = Path(grid_dir)
    with _locked(grid_dir):
        current = load(grid_dir)
        recorded = next((s for s in current.submissions if submission.key and s.key == submission.key), None)
        if recorded is None:
            submission.number = max((s.number for s in current.submissions), default=0) + 1
            submission.executor = submission.executor or executor
            current.submissions.append(submission)
            recorded = submission
        stamp = time.strftime(TIME_FORMAT)
        for run_id, run_dir, job_id, index in jobs:
            rel = _relative(Path(run_dir), grid_dir)
            recorded.runs[run_id] = {"job_id": job_id, "array_index": index, "run_dir": rel}
            current.runs[run_id] = {"job_id": job_id, "array_index": index, "executor": executor,
                                    "submitted": stamp, "run_dir": rel, "submission": recorded.number}
        atomic_write_json(grid_dir / FILENAME, current.to_json())
    submission.number = recorded.number
    return recorded


def _relative(path: Path, grid_dir: Path) -> str:
    """`path` relative to the grid's folder; the run's own name is kept when it is a link to a
    directory another grid holds (experiments/store.py), so that it follows the link when read."""
    path = path.parent.resolve() / path.name
    try:
        return str(path.relative_to(grid_dir.resolve()))
    except ValueError:
        return str(path)


# --- selecting the runs to show -------------------------------------------------------------


@dataclass
class SelectedRun:
    run_id: str
    run_dir: Path
    entry: dict[str, Any] | None  # the run's latest job in the manifest; None: never submitted
    submissions: list[int]
    steps: int | None = None
    """Steps the grid's config trains in all (train.steps + finetune_steps); None when the grid
    no longer expands to it."""

    @property
    def submitted(self) -> bool:
        return self.entry is not None


@dataclass
class Selection:
    grid_name: str
    manifest: Manifest
    runs: list[SelectedRun]
    overrides: list[str]
    only: list[str]
    notes: list[str] = field(default_factory=list)

    @property
    def filtered(self) -> bool:
        return bool(self.overrides or self.only)

    @property
    def shown(self) -> list[Submission]:
        """The submissions with at least one of the selected runs."""
        numbers = {n for r in self.runs for n in r.submissions}
        return [s for s in self.manifest.submissions if s.number in numbers]

    def submitted_runs(self) -> list[SelectedRun]:
        return [r for r in self.runs if r.submitted]

    def selection_flags(self) -> str:
        return " ".join([f"--set {o}" for o in self.overrides] + [f"--only {o}" for o in self.only])

    def header(self) -> list[str]:
        """Which submission(s) the selection shows, a few lines for a terminal."""
        where = f"{self.grid_name} in {self.manifest.grid_dir.parent}"
        selected = f"runs matching {self.selection_flags()}" if self.filtered else "every submission"
        shown = self.shown
        linked = sum(Path(r.run_dir).is_symlink() for r in self.runs)
        if not self.manifest.exists and linked:  # its submissions found every run trained by another grid
            lines = [f"{where}: no job submitted from this grid (no {FILENAME}); {linked} run(s) shared with "
                     "other grids, shown with their jobs"]
        elif not self.manifest.exists:
            lines = [f"{where}: never submitted (no {FILENAME})"]
        else:
            lines = [f"{where}: {selected}; {len(shown)} of {len(self.manifest.submissions)} submission(s) shown"]
            lines += [f"  submission {s.describe()}" for s in shown]
        return lines + [f"  note: {n}" for n in self.notes]

    def summary(self) -> str:
        """The same in one line (for the analysis commands' stderr)."""
        selected = f" matching {self.selection_flags()}" if self.filtered else ""
        if not self.shown:
            return f"{self.grid_name}: no submitted run{selected} in {self.manifest.grid_dir}"
        shown = "; ".join(s.describe() for s in self.shown)
        return f"{self.grid_name}: {len(self.submitted_runs())} submitted run(s){selected} from submission(s) {shown}"


def select(grid_file: str | os.PathLike, root: str | os.PathLike, overrides: Sequence[str] = (),
           only: Sequence[str] = ()) -> Selection:
    """The runs of a grid to show (module docstring), in a stable order."""
    grid_file, overrides, only = Path(grid_file), list(overrides), list(only)
    if not grid_file.is_file():
        raise UserError(f"{grid_file}: no such grid file")
    name = grid_file.stem
    current = load(Path(root) / name)
    latest = latest_jobs(Path(root), name)
    chosen: dict[str, SelectedRun] = {}
    notes: list[str] = []

    def add(run_id: str, steps: int | None = None) -> None:
        if run_id not in chosen:
            run_dir = current.run_dir(run_id)
            entry = latest.get(os.path.realpath(run_dir), current.runs.get(run_id))
            chosen[run_id] = SelectedRun(run_id, run_dir, entry, current.submissions_of(run_id), steps)

    def add_config(cfg) -> None:
        """A run of the expansion under the id it was recorded or made with (a folder named by
        the hash rule before cadence left it keeps its name: run_config.find_run_dir)."""
        add(cfg.run_id if cfg.run_id in current.runs else find_run_dir(current.grid_dir, cfg).name,
            cfg.train.steps + cfg.train.finetune_steps)

    if overrides or only:
        for cfg in load_grid(grid_file, only, overrides).runs:
            add_config(cfg)
    else:
        for settings in _distinct_overrides(current.submissions):
            try:
                expansion = load_grid(grid_file, (), settings).runs
            except UserError as err:  # the grid file changed since: its recorded runs still show
                if not current.submissions:
                    raise
                notes.append(f"the grid no longer expands with {' '.join(settings)} ({err})")
                continue
            for cfg in expansion:
                add_config(cfg)
        for submission in current.submissions:
            for run_id in submission.runs:
                add(run_id)
    return Selection(name, current, list(chosen.values()), overrides, only, notes)


def latest_jobs(root: Path, own: str) -> dict[str, dict[str, Any]]:
    """Real run directory -> its latest job as recorded by any grid of the root (on a tie, by the
    grid `own`), with the "grid" that recorded it: a directory grids share shows the job that
    trains it, whichever grid submitted it."""
    grid_dirs = sorted((p for p in root.iterdir() if (p / FILENAME).is_file()),
                       key=lambda p: (p.name == own, p.name)) if root.is_dir() else []
    latest: dict[str, dict[str, Any]] = {}
    for grid_dir in grid_dirs:
        try:
            recorded = load(grid_dir)
        except UserError:  # another grid's damaged manifest: its jobs are not shown here (its own status says why)
            continue
        for run_id, entry in recorded.runs.items():
            key = os.path.realpath(recorded.run_dir(run_id))
            if key not in latest or str(entry.get("submitted", "")) >= str(latest[key].get("submitted", "")):
                latest[key] = {**entry, "grid": grid_dir.name}
    return latest


def _distinct_overrides(submissions: list[Submission]) -> list[list[str]]:
    """The --set lists of the submissions, each once, in order; [] (the plain grid) when none."""
    found: list[list[str]] = []
    for s in submissions:
        settings = list(s.overrides or [])
        if settings not in found:
            found.append(settings)
    return found or [[]]
