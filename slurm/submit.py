"""Submit an ablation grid; never redo finished work, never block the terminal.

    python -m slurm.submit GRID.yaml (--cluster NAME | --executor local) [--dry-run] [--force]
                          [--only key=value ...] [--set key=value ...] [--max-parallel K]
                          [--root DIR] [--wait]

Every config of the grid is validated before anything is submitted. Each run is
classified DONE (skipped), ACTIVE (a live job already has it: skipped) or
SUBMIT. Runs with the same resources go into one job array throttled to K at a
time; the command returns as soon as `sbatch` has answered, after recording the
submission (its --set/--only, and run -> job id) in `<root>/<grid>/manifest.json`,
which `slurm.status` and the analysis commands read. `--executor local` takes the same
path through submitit's local executor (jobs run as background processes here).
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import submitit

from experiments.atomic import atomic_write_text
from experiments.grid import DEFAULT_ROOT, Grid, load_grid
from experiments.manifest import add_selection_arguments
from experiments.run_config import RunConfig
from experiments.run_dir import RunDir
from experiments.train import prepare_run_dir
from model.errors import UserError
from experiments.cli import run_cli
from slurm import manifest
from slurm.job import TrainingJob
from slurm.profile import ClusterProfile, load_profile


@dataclass
class PlannedRun:
    cfg: RunConfig
    run_dir: RunDir
    state: str  # DONE | ACTIVE | SUBMIT
    gpu_hours: float


def estimate_gpu_hours(cfg: RunConfig, profile: ClusterProfile) -> float:
    """Model FLOPs of the whole run over the profile's sustained throughput per device."""
    from model.summary import summarize

    tokens = (cfg.train.steps + cfg.train.finetune_steps) * cfg.train.batch_size * cfg.train.block_size
    flops = summarize(cfg.model)["flops_per_token"] * tokens
    return flops / (profile.achieved_tflops_per_gpu * 1e12) / 3600


def plan(grid: Grid, root: Path, profile: ClusterProfile, force: bool) -> list[PlannedRun]:
    live = manifest.live_runs(root / grid.name)
    planned = []
    for cfg in grid.runs:
        check_time_limit(cfg, profile)
        run_dir = RunDir(grid.run_dir(cfg, root))
        if run_dir.path.name in live:
            state = "ACTIVE"
        elif run_dir.is_done() and not force:
            state = "DONE"
        else:
            state = "SUBMIT"
        planned.append(PlannedRun(cfg, run_dir, state, estimate_gpu_hours(cfg, profile)))
    return planned


def check_time_limit(cfg: RunConfig, profile: ClusterProfile) -> None:
    """slurmctld checks limits every 30 s and sends SIGUSR2 up to 30 s *before* the lead
    time asked for: an attempt shorter than lead + 60 s could be signalled before it has
    started training, and would be requeued without progress."""
    attempt_s = 60 * min(cfg.slurm.timeout_min, profile.max_time_min)
    if attempt_s < profile.signal_delay_s + 60:
        raise UserError(f"slurm.timeout_min={cfg.slurm.timeout_min} is too short for the profile's signal_delay_s="
                        f"{profile.signal_delay_s}: an attempt needs at least {profile.signal_delay_s + 60} s")


def shape_of(cfg: RunConfig) -> tuple:
    s = cfg.slurm
    return (s.nodes, s.gpus_per_node, s.cpu_tasks_per_node, s.cpus_per_task, s.mem_gb, s.timeout_min)


def print_table(planned: list[PlannedRun]) -> None:
    print(f"{'run':<58} {'state':<7} {'nodes x gpus':>12} {'est. GPU-h':>11}")
    for p in planned:
        s = p.cfg.slurm
        print(f"{p.run_dir.path.name:<58} {p.state:<7} {f'{s.nodes} x {s.gpus_per_node}':>12} {p.gpu_hours:>11.2f}")
    counts = {k: sum(p.state == k for p in planned) for k in ("DONE", "ACTIVE", "SUBMIT")}
    total = sum(p.gpu_hours for p in planned if p.state == "SUBMIT")
    print(f"{len(planned)} runs: {counts['DONE']} done, {counts['ACTIVE']} active, "
          f"{counts['SUBMIT']} to submit ({total:.1f} GPU-hours estimated)")


def make_executor(grid_dir: Path, cfg: RunConfig, runs: list[PlannedRun], profile: ClusterProfile,
                  local: bool, max_parallel: int) -> submitit.Executor:
    """An executor for runs that share `cfg`'s resources; logs go to <grid_dir>/.submitit/<job id>/."""
    s = cfg.slurm
    attempt_min = min(s.timeout_min, profile.max_time_min)
    longest_h = max(p.gpu_hours / max(1, s.gpus_per_node * s.nodes) for p in runs)
    # Enough requeues to finish the longest run, plus slack for preemptions.
    max_timeouts = math.ceil(60 * longest_h / attempt_min) + 2
    executor = submitit.AutoExecutor(folder=grid_dir / ".submitit" / "%j", cluster="local" if local else "slurm",
                                     slurm_max_num_timeout=max_timeouts, local_max_num_timeout=max_timeouts)
    params = dict(name=grid_dir.name, timeout_min=attempt_min, nodes=s.nodes,
                  tasks_per_node=s.tasks_per_node, cpus_per_task=s.cpus_per_task, mem_gb=s.mem_gb)
    if not local:
        params.update(slurm_partition=profile.partition, slurm_array_parallelism=max_parallel,
                      slurm_signal_delay_s=profile.signal_delay_s, slurm_setup=list(profile.setup))
        params.update({f"slurm_{k}": getattr(profile, k) for k in ("account", "qos", "constraint") if getattr(profile, k)})
        if s.gpus_per_node and profile.gpu_flag == "gres":
            params.update(slurm_gres=f"gpu:{s.gpus_per_node}")
        elif s.gpus_per_node:
            params.update(gpus_per_node=s.gpus_per_node)
    elif s.gpus_per_node:
        params.update(gpus_per_node=s.gpus_per_node)
    executor.update_parameters(**params)
    return executor


def sbatch_script(executor: submitit.Executor, array_size: int) -> str:
    """The sbatch file submitit would write for an array of `array_size` runs."""
    inner = executor._executor  # the SlurmExecutor behind AutoExecutor
    inner.parameters["map_count"] = array_size
    try:
        return inner._make_submission_file_text(inner._submitit_command_str, "dry-run")
    finally:
        inner.parameters.pop("map_count")


def submit_group(grid_dir: Path, runs: list[PlannedRun], executor: submitit.Executor,
                 submission: manifest.Submission | None = None) -> list[submitit.Job]:
    for p in runs:
        p.run_dir.path.mkdir(parents=True, exist_ok=True)
        prepare_run_dir(p.cfg, p.run_dir)
        p.run_dir.write_status("PENDING", stage="submitted", error=None)
    with submitit.helpers.clean_env():
        with executor.batch():
            jobs = [executor.submit(TrainingJob(p.run_dir.path)) for p in runs]
    manifest.record_jobs(grid_dir, submission or manifest.new_submission(),
                         [(p.run_dir.path.name, p.run_dir.path, job.job_id, index) for index, (p, job) in enumerate(zip(runs, jobs))],
                         executor.cluster)
    for p, job in zip(runs, jobs):
        _link_logs(p.run_dir, Path(job.paths.folder))
    return jobs


def _link_logs(run_dir: RunDir, folder: Path) -> None:
    """run_dir/slurm -> the job's submitit folder (pickles, stdout, stderr)."""
    link = run_dir.slurm
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(os.path.relpath(folder, run_dir.path))


def _archive_for_rerun(run_dir: RunDir) -> None:
    """--force keeps the previous results: the old directory is renamed, not deleted."""
    if run_dir.path.exists():
        run_dir.path.rename(run_dir.path.with_name(f"{run_dir.path.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}"))


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m slurm.submit", description=__doc__.split("\n")[0])
    parser.add_argument("grid", type=Path, help="grid YAML")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--cluster", help="cluster profile in slurm/clusters/ (e.g. local)")
    where.add_argument("--executor", choices=["local"], help="run on this machine through submitit's local executor")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and write the sbatch script; submit nothing")
    parser.add_argument("--force", action="store_true", help="rerun DONE runs (their old directory is kept, renamed)")
    parser.add_argument("--max-parallel", type=int, default=64, help="array throttle: runs at once (default 64)")
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT, help=f"results root (default {DEFAULT_ROOT})")
    add_selection_arguments(parser, purpose="submit")
    parser.add_argument("--wait", action="store_true", help="wait for the submitted jobs and report how they ended")
    args = parser.parse_args(argv)
    if args.max_parallel < 1:
        parser.error("--max-parallel must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    grid = load_grid(args.grid, args.only, args.set)
    if not grid.runs:
        raise UserError(f"no run of {args.grid} matches {' '.join(args.only)}")
    local = args.executor == "local"
    profile = load_profile("local" if local else args.cluster)
    planned = plan(grid, args.root, profile, args.force)
    print_table(planned)
    if args.dry_run:
        return _dry_run(args.root / grid.name, planned, profile, local, args.max_parallel)
    if "SLURM_JOB_ID" in os.environ and not local:
        print("warning: submitting from inside a SLURM allocation; the job's SLURM_* variables are cleared "
              "for the submission", file=sys.stderr)
    submission = manifest.new_submission(args.grid, args.set, args.only)
    jobs = submit_planned(args.root / grid.name, planned, profile, local, args.max_parallel, args.force, submission)
    return wait_for(jobs) if args.wait else 0


def submit_planned(grid_dir: Path, planned: list[PlannedRun], profile: ClusterProfile, local: bool,
                   max_parallel: int, force: bool = False,
                   submission: manifest.Submission | None = None) -> list[submitit.Job]:
    """Submit the runs planned SUBMIT, one array per resource shape, recorded in the manifest as one
    submission (settings unknown when `submission` is None); returns their jobs."""
    submission = submission or manifest.new_submission()
    jobs = []
    for shape_runs in _groups([p for p in planned if p.state == "SUBMIT"]).values():
        if force:
            for p in shape_runs:
                _archive_for_rerun(p.run_dir)
        executor = make_executor(grid_dir, shape_runs[0].cfg, shape_runs, profile, local, max_parallel)
        jobs += submit_group(grid_dir, shape_runs, executor, submission)
    ids = sorted({j.job_id.split("_")[0] for j in jobs})
    print(f"submitted {len(jobs)} runs" + (f": jobs {', '.join(ids)}" if jobs else ""))
    return jobs


def _groups(planned: list[PlannedRun]) -> dict[tuple, list[PlannedRun]]:
    groups: dict[tuple, list[PlannedRun]] = {}
    for p in planned:
        groups.setdefault(shape_of(p.cfg), []).append(p)
    return groups


def _dry_run(grid_dir: Path, planned: list[PlannedRun], profile: ClusterProfile, local: bool, k: int) -> int:
    if local:
        print("dry run: the local executor writes no sbatch script")
        return 0
    for shape, runs in _groups([p for p in planned if p.state == "SUBMIT"]).items():
        executor = make_executor(grid_dir, runs[0].cfg, runs, profile, False, k)
        path = grid_dir / "dry-run" / f"array-{'-'.join(map(str, shape))}.sbatch"
        atomic_write_text(path, sbatch_script(executor, len(runs)))
        print(f"dry run: would submit {len(runs)} runs with {path}")
    return 0


def wait_for(jobs: list[submitit.Job]) -> int:
    failed = 0
    for job in jobs:
        try:
            job.result()
        except Exception as err:  # noqa: BLE001 - report every failed run, then fail once
            failed += 1
            print(f"job {job.job_id} failed: {_cause(str(err))} (log: {job.paths.stderr})", file=sys.stderr)
    print(f"{len(jobs) - failed} of {len(jobs)} runs finished")
    return 1 if failed else 0


def _cause(message: str) -> str:
    """The exception line of submitit's failure message (the traceback sits between dashed rules)."""
    lines = message.strip().splitlines()
    rules = [i for i, line in enumerate(lines) if line.startswith("-----")]
    return lines[rules[1] - 1].strip() if len(rules) >= 2 else lines[0]


if __name__ == "__main__":
    run_cli(main)
