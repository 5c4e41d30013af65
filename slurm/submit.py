"""Submit an ablation grid; never redo finished work, never block the terminal.

    python -m slurm.submit GRID.yaml (--cluster NAME|PROFILE.yaml | --executor local) [--dry-run] [--force]
                          [--only key=value ...] [--set key=value ...] [--max-parallel K]
                          [--root DIR] [--wait]

Every config of the grid is validated, and checked against its prepared data and process
count (experiments/contract.py), before anything is submitted or written: the first
mismatch is refused in one line (exit 2). Each run is classified DONE (skipped), ACTIVE (a
live job already has it, or a process outside the root's jobs holds its run directory:
skipped) or SUBMIT. The plan shows, per run, the time limit each attempt gets (and why,
when the profile cuts the request), the expected number of attempts, the memory estimate
per device against the profile's GPU (or the job's) memory, and the estimated GPU-hours
with the throughput figure used and its source; then the requeue policy. Runs with the
same resources go into one job array throttled to K at a time; the command returns as soon
as `sbatch` has answered, after recording the submission (its --set/--only, and run -> job
id) in `<root>/<grid>/manifest.json`, which `slurm.status` and the analysis commands read.

`--executor local` takes the same path through submitit's local executor (jobs run
as background processes here), K at a time (default: this machine's cores divided by
the cores a run asks for). There is no scheduler to hold the queue, so this command
does: it stays until the last run has *started* (with `--wait`, until every run has
ended), and returns at once when all fit. Interrupting it leaves the runs not yet
started unsubmitted (`slurm.status` shows them so; submitting again starts them) and the
started ones training: they run with SIGINT ignored, so a Ctrl-C in the terminal (sent to
its whole foreground process group) does not reach them; `slurm.status --cancel` stops them.

`--force` reruns DONE runs: the old directory moves to `<root>/<grid>/.replaced/<run_id>-<time>/`,
out of the grid's runs (analysis reads the manifest's runs, and counts copies once).

**A configuration in several grids of one root trains once** (experiments/store.py). A run
whose config another grid of the root already has a directory for is that directory: the
grid's entry becomes a link to it at submission, and the plan classifies it by its real
state, the table naming the other grid(s): DONE is not resubmitted, ACTIVE (a live job of
any grid trains it) neither; never started, failed or stalled, this grid submits it, to
train in the shared directory (its owner lock keeps a second trainer out). Of two grids
submitted at once, the second links to the directory the first made. `--force` on a shared
run says so: it reruns it for every grid that shares it (the old directory moves to its
holder's `.replaced/`).
"""
from __future__ import annotations

import argparse
import io
import math
import os
import signal
import sys
import time
from contextlib import contextmanager, redirect_stderr
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterator, Sequence

import submitit

from experiments.atomic import atomic_write_text
from experiments.contract import check_run, planned_device_type, planned_processes
from experiments.grid import DEFAULT_ROOT, Grid, load_grid
from experiments.manifest import add_selection_arguments
from experiments.resources import usable_cpus
from experiments.run_config import RunConfig
from experiments.run_dir import RunDir
from experiments.store import Placement, claim, locate
from experiments.tracking import check_wandb_login
from experiments.train import prepare_run_dir
from model.errors import UserError
from model.summary import activation_bytes, count_parameters, summarize
from experiments.cli import ArgumentParser, at_least, folder, run_cli
from slurm import manifest, progress
from slurm.job import MAX_NUM_TIMEOUT, TrainingJob
from slurm.profile import ClusterProfile, load_profile, profile_label

REPLACED = ".replaced"
"""Folder of the grid's folder where --force moves the runs it replaces."""
GiB = 2**30


@dataclass
class PlannedRun:
    cfg: RunConfig
    run_dir: RunDir
    state: str  # DONE | ACTIVE | SUBMIT
    gpu_hours: float
    attempt_min: int = 0
    """The time limit each attempt is granted (the request, or the profile's maximum)."""
    expected_attempts: int = 1
    memory_bytes: int = 0
    """Estimated memory of one process (one GPU, or one CPU task)."""
    memory_limit_bytes: int | None = None
    """What one process may use: the profile's GPU memory, or the job's memory per task; None: unknown."""
    notes: list[str] = field(default_factory=list)
    """What the table says after the run's line: the grids it is shared with, the job of another grid training it."""
    placement: Placement | None = None
    """Where the run lives in the results root (experiments/store.py); None: its run_dir, this grid's own."""

    @property
    def dir_config(self) -> RunConfig:
        """The config its directory keeps: in a directory another grid holds, that grid's name for the run
        (the folder is named by it) with this submission's values."""
        if self.placement is None or not self.placement.elsewhere:
            return self.cfg
        return replace(self.cfg, name=self.placement.folder_name, grid=self.placement.holder)

    @property
    def time_cut(self) -> bool:
        return self.attempt_min < self.cfg.slurm.timeout_min

    @property
    def memory_fits(self) -> bool | None:
        return None if self.memory_limit_bytes is None else self.memory_bytes <= self.memory_limit_bytes


def estimate_gpu_hours(cfg: RunConfig, profile: ClusterProfile) -> float:
    """Model FLOPs of the whole run over the profile's sustained throughput per device."""
    tokens = (cfg.train.steps + cfg.train.finetune_steps) * cfg.train.batch_size * cfg.train.block_size
    flops = summarize(cfg.model)["flops_per_token"] * tokens
    return flops / (profile.achieved_tflops_per_gpu * 1e12) / 3600


def devices(cfg: RunConfig) -> int:
    """Processes (one per GPU, or per CPU task) the run is spread over."""
    return planned_processes(cfg)


def estimate_memory_bytes(cfg: RunConfig) -> int:
    """One process: fp32 weights, gradients and optimizer state (Adagrad 1, Adam 2 tensors per
    weight) plus `model.summary`'s activation estimate for its micro-batch. An estimate."""
    params = count_parameters(cfg.model)["params_total"]
    states = 2 if cfg.optim.name == "adam" else 1
    rows = max(1, cfg.train.batch_size // devices(cfg) // cfg.train.batch_split)
    attention = cfg.model.attention_on(planned_device_type(cfg))
    return 4 * params * (2 + states) + activation_bytes(cfg.model, rows, cfg.train.block_size, attention)


def memory_limit_bytes(cfg: RunConfig, profile: ClusterProfile) -> int | None:
    if cfg.slurm.gpus_per_node:
        return None if profile.gpu_mem_gb is None else int(profile.gpu_mem_gb * GiB)
    return int(cfg.slurm.mem_gb * GiB / cfg.slurm.tasks_per_node)


def expected_attempts(cfg: RunConfig, profile: ClusterProfile, gpu_hours: float, attempt_min: int) -> int:
    """Attempts the estimate needs: wall time over what an attempt trains (its limit less the signal lead)."""
    wall_min = 60 * gpu_hours / devices(cfg)
    usable_min = max(1.0, attempt_min - profile.signal_delay_s / 60)
    return max(1, math.ceil(wall_min / usable_min))


def plan(grid: Grid, root: Path, profile: ClusterProfile, force: bool) -> list[PlannedRun]:
    """Classify every run; refuses (UserError) the first run that cannot work, before anything is written."""
    manifest.load_manifest(root / grid.name)  # damaged, it is refused here: the jobs would be recorded nowhere
    warnings: dict[str, None] = {}
    for cfg in grid.runs:
        check_time_limit(cfg, profile)
        try:
            for w in check_run(cfg, planned_processes(cfg), data_elsewhere=profile.data_elsewhere):
                warnings.setdefault(w, None)
        except UserError as err:
            raise UserError(f"run {cfg.run_id}: {err}") from None
        try:  # a warning only here: the jobs' environment (a profile's setup lines) may hold the key
            check_wandb_login(cfg)
        except UserError as err:
            warnings.setdefault(f"{err}; the jobs stop at start unless their environment has one", None)
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    live = manifest.live_dirs(root)
    planned = []
    for cfg in grid.runs:
        placement = locate(root, grid.name, cfg)
        job = live.get(str(placement.directory))
        holder = None if job is not None else RunDir(placement.directory).holder()
        if job is not None or holder is not None:
            state = "ACTIVE"
        elif RunDir(placement.directory).is_done() and not force:
            state = "DONE"
        else:
            state = "SUBMIT"
        hours = estimate_gpu_hours(cfg, profile)
        attempt_min = min(cfg.slurm.timeout_min, profile.max_time_min)
        planned.append(PlannedRun(cfg, RunDir(placement.entry), state, hours, attempt_min,
                                  expected_attempts(cfg, profile, hours, attempt_min),
                                  estimate_memory_bytes(cfg), memory_limit_bytes(cfg, profile),
                                  sharing_notes(placement, job, grid.name, force and state == "SUBMIT")
                                  + ([f"trained by a process outside this root's jobs: {holder}"] if holder else []),
                                  placement))
    return planned


def sharing_notes(placement: Placement, job: manifest.LiveJob | None, grid_name: str, forced: bool) -> list[str]:
    """The table's words on a run other grids share, and on a live job another grid submitted."""
    notes = []
    if placement.sharers:
        notes.append(f"shared with grid {', '.join(placement.sharers)}")
    if job is not None and job.grid != grid_name:
        notes.append(f"job {job.job_id} of grid {job.grid}")
    if forced and placement.sharers:
        notes.append(f"--force reruns it for grid {', '.join(placement.sharers)} too (the old directory moves to "
                     f"{placement.holder}/{REPLACED}/)")
    return notes


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


def _gb(n: int | None) -> str:
    return "?" if n is None else f"{n / GiB:.1f}" if n >= GiB / 10 else f"{n / GiB:.2g}"


def print_table(planned: list[PlannedRun], profile: ClusterProfile | None = None, label: str = "",
                local: bool = False) -> None:
    """The plan: one line per run (a '*' marks a cut time limit, a '!' memory that does not fit),
    then what the marks mean, the throughput behind the estimates and the requeue policy."""
    print(f"{'run':<58} {'state':<7} {'nodes x gpus':>12} {'limit min':>10} {'attempts':>8} "
          f"{'mem GB/dev':>12} {'est. GPU-h':>11}")
    for p in planned:
        s = p.cfg.slurm
        limit = f"{p.attempt_min}{'*' if p.time_cut else ''}"
        fits = p.memory_fits
        memory = f"{_gb(p.memory_bytes)}/{_gb(p.memory_limit_bytes)}{'!' if fits is False else ''}"
        notes = f"  {'; '.join(p.notes)}" if p.notes else ""
        print(f"{p.run_dir.path.name:<58} {p.state:<7} {f'{s.nodes} x {s.gpus_per_node}':>12} {limit:>10} "
              f"{f'~{p.expected_attempts}':>8} {memory:>12} {p.gpu_hours:>11.2f}{notes}")
    counts = {k: sum(p.state == k for p in planned) for k in ("DONE", "ACTIVE", "SUBMIT")}
    total = sum(p.gpu_hours for p in planned if p.state == "SUBMIT")
    print(f"{len(planned)} runs: {counts['DONE']} done, {counts['ACTIVE']} active, "
          f"{counts['SUBMIT']} to submit ({total:.1f} GPU-hours estimated)")
    if profile is not None:
        for line in plan_notes(planned, profile, label, local):
            print(line)


def plan_notes(planned: list[PlannedRun], profile: ClusterProfile, label: str, local: bool) -> list[str]:
    """What the table's figures rest on, and where they do not fit."""
    notes = []
    for request in sorted({p.cfg.slurm.timeout_min for p in planned if p.time_cut}):
        cut = [p for p in planned if p.cfg.slurm.timeout_min == request]
        notes.append(f"time limit*: {len(cut)} run(s) ask slurm.timeout_min={request}, more than {label}'s "
                     f"max_time_min={profile.max_time_min}: each attempt gets {profile.max_time_min} min and the "
                     "run continues from its checkpoint in further attempts")
    for p in planned:
        if p.memory_fits is False:
            what = (f"the profile's GPU memory (gpu_mem_gb={profile.gpu_mem_gb:g})" if p.cfg.slurm.gpus_per_node
                    else f"slurm.mem_gb={p.cfg.slurm.mem_gb} per node over {p.cfg.slurm.tasks_per_node} task(s)")
            notes.append(f"warning: {p.run_dir.path.name} needs ~{_gb(p.memory_bytes)} GB per process (estimate), "
                         f"more than {what}: use more GPUs, train.batch_split, or a smaller batch")
    if any(p.cfg.slurm.gpus_per_node for p in planned) and profile.gpu_mem_gb is None:
        notes.append(f"memory: {label} does not say its GPUs' memory (gpu_mem_gb): not checked")
    notes.append("memory: fp32 weights, gradients, optimizer state and model.summary's activation estimate per "
                 "process; GB = 2^30 bytes")
    source = profile.throughput_source or "a guess, not measured (set throughput_source)"
    notes.append(f"estimates: model FLOPs / {profile.achieved_tflops_per_gpu:g} TFLOP/s per device "
                 f"(achieved_tflops_per_gpu in {label}; source: {source}); attempts = estimated wall time / "
                 f"(limit - {profile.signal_delay_s} s signal lead)")
    if local:
        notes.append("requeue: local executor: on the time limit the run checkpoints and submitit restarts it "
                     "(at most 6 times per job); SIGTERM (slurm.status --cancel) checkpoints and stops it")
    else:
        notes.append(f"requeue: --requeue; SIG{profile.time_limit_signal()} {profile.signal_delay_s} s before each "
                     "limit: checkpoint, then requeued as long as the attempt advanced the checkpointed step; "
                     f"after {profile.max_stalled_attempts} attempts in a row without progress the run stops "
                     "as STALLED (resubmit to continue); SIGTERM (preemption, scancel, scontrol requeue): "
                     "checkpoint and stop, SLURM requeues it when it preempted or requeued it")
    return notes


def make_executor(grid_dir: Path, cfg: RunConfig, runs: list[PlannedRun], profile: ClusterProfile,
                  local: bool, max_parallel: int) -> submitit.Executor:
    """An executor for runs that share `cfg`'s resources; logs go to <grid_dir>/.submitit/<job id>/.

    submitit's limit on timeouts is set out of reach: TrainingJob.checkpoint requeues on progress."""
    s = cfg.slurm
    attempt_min = min(s.timeout_min, profile.max_time_min)
    executor = submitit.AutoExecutor(folder=grid_dir / ".submitit" / "%j", cluster="local" if local else "slurm",
                                     slurm_max_num_timeout=MAX_NUM_TIMEOUT, local_max_num_timeout=MAX_NUM_TIMEOUT)
    params = dict(name=grid_dir.name, timeout_min=attempt_min, nodes=s.nodes,
                  tasks_per_node=s.tasks_per_node, cpus_per_task=s.cpus_per_task, mem_gb=s.mem_gb)
    if not local:
        # --requeue: a site whose default is no requeue would otherwise end the run at its first time limit.
        extra: dict[str, object] = {"requeue": True}
        if profile.stop_signal:
            extra["signal"] = f"{profile.stop_signal}@{profile.signal_delay_s}"
        params.update(slurm_partition=profile.partition, slurm_array_parallelism=max_parallel,
                      slurm_signal_delay_s=profile.signal_delay_s, slurm_setup=list(profile.setup),
                      slurm_additional_parameters=extra)
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


def training_job(run_dir: RunDir, profile: ClusterProfile) -> TrainingJob:
    """The pickled job: its run directory, the time-limit signal SLURM is told, the stall limit."""
    return TrainingJob(run_dir.path, [profile.time_limit_signal()], max_stalled=profile.max_stalled_attempts)


def submit_group(grid_dir: Path, runs: list[PlannedRun], executor: submitit.Executor,
                 submission: manifest.Submission | None = None,
                 profile: ClusterProfile | None = None) -> list[submitit.Job]:
    profile = profile or ClusterProfile(partition="")
    for p in runs:
        Path(os.path.realpath(p.run_dir.path)).mkdir(parents=True, exist_ok=True)  # through a shared run's link
        prepare_run_dir(p.dir_config, p.run_dir)
        p.run_dir.write_status("PENDING", stage="submitted", error=None)
    with _sbatch_errors_held(), submitit.helpers.clean_env(), \
            _controllers_detached(executor, grid_dir / ".submitit" / "controllers.log"):
        with executor.batch():
            jobs = [executor.submit(training_job(p.run_dir, profile)) for p in runs]
    manifest.record_jobs(grid_dir, submission or manifest.new_submission(),
                         [(p.run_dir.path.name, p.run_dir.path, job.job_id, index) for index, (p, job) in enumerate(zip(runs, jobs))],
                         executor.cluster)
    if executor.cluster == "local":  # its job id is a pid: record what makes it unique
        identities = {p.run_dir.path.name: {"job_id": job.job_id, "process": _identity(job.job_id)}
                      for p, job in zip(runs, jobs)}
        manifest.annotate(grid_dir, identities)
    for p, job in zip(runs, jobs):
        _link_logs(p.run_dir, Path(job.paths.folder))
    return jobs


@contextmanager
def _sbatch_errors_held() -> Iterator[None]:
    """submitit prints sbatch's stderr when sbatch fails, then raises it as FailedJobError: the
    caller says it once, in its one line. Anything else written here is passed on."""
    held = io.StringIO()
    try:
        with redirect_stderr(held):
            yield
    except submitit.core.utils.FailedJobError:
        raise
    except BaseException:
        sys.stderr.write(held.getvalue())
        raise
    sys.stderr.write(held.getvalue())


@contextmanager
def _controllers_detached(executor: submitit.Executor, log: Path) -> Iterator[None]:
    """The local executor starts each job's controller with Popen, inheriting this process's stdout,
    stderr and signal dispositions. Its output: a pipe (`slurm.submit ... | tail`) would stay open
    until the last run ends, so the controllers get `log` instead (each run's own output goes to
    its own log files anyway). Its SIGINT: a Ctrl-C in the terminal reaches the whole foreground
    process group, and the controller would then kill its run (SIGINT, SIGKILL a second later,
    leaving it LOST); started with SIGINT ignored, the controller and its run keep it ignored
    (experiments/interrupt.py), so interrupting this command stops only the submitting."""
    if executor.cluster != "local":
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    log.parent.mkdir(parents=True, exist_ok=True)
    interrupt = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with open(log, "ab") as sink:
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
        yield
    finally:
        signal.signal(signal.SIGINT, interrupt)
        for fd, saved_fd in zip((1, 2), saved):
            os.dup2(saved_fd, fd)
            os.close(saved_fd)


def _identity(pid: str) -> dict | None:
    found = manifest.process_identity(pid)  # our child: alive or a zombie until reaped, never reused before
    return None if found is None else {k: found[k] for k in ("pid", "start_ticks", "boot_id", "host")}


def _link_logs(run_dir: RunDir, folder: Path) -> None:
    """run_dir/slurm -> the job's submitit folder (pickles, stdout, stderr), relative to where the run
    directory really is (another grid's folder, for a shared run)."""
    link = run_dir.slurm
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(os.path.relpath(os.path.realpath(folder), os.path.realpath(run_dir.path)))


def _archive_for_rerun(run_dir: RunDir) -> Path | None:
    """--force keeps the previous results out of the grid's runs: the old directory moves to
    <grid>/.replaced/<run_id>-<time>/ (never deleted), <grid> the folder that holds it (another
    grid's, for a shared run: the link stays, and leads to the new run)."""
    path = Path(os.path.realpath(run_dir.path))
    if not path.exists():
        return None
    folder = path.parent / REPLACED
    folder.mkdir(exist_ok=True)
    stamp = time.strftime('%Y%m%d-%H%M%S')
    target = folder / f"{path.name}-{stamp}"
    n = 1
    while target.exists():
        n += 1
        target = folder / f"{path.name}-{stamp}-{n}"
    path.rename(target)
    link = target / "slurm"  # relative link to <grid>/.submitit/<job>: one level deeper now
    if link.is_symlink():
        old = os.readlink(link)
        link.unlink()
        link.symlink_to(os.path.relpath(os.path.normpath(path / old), target))
    return target


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = ArgumentParser(prog="python -m slurm.submit", description=__doc__.split("\n")[0])
    parser.add_argument("grid", type=Path, help="grid YAML")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--cluster", help="cluster profile: a name in slurm/clusters/ (e.g. local) or a YAML file")
    where.add_argument("--executor", choices=["local"], help="run on this machine through submitit's local executor")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and write the sbatch script; submit nothing")
    parser.add_argument("--force", action="store_true",
                        help=f"rerun DONE runs (their old directory moves to <grid>/{REPLACED}/)")
    parser.add_argument("--max-parallel", type=at_least(1), default=None,
                        help="runs at once (SLURM: the array throttle, default 64; local executor: default "
                             "this machine's cores // the cores a run asks for)")
    parser.add_argument("--root", type=folder, default=DEFAULT_ROOT, help=f"results root (default {DEFAULT_ROOT})")
    add_selection_arguments(parser, purpose="submit")
    parser.add_argument("--wait", action="store_true", help="wait for the submitted jobs and report how they ended")
    args = parser.parse_args(argv)
    return args


def local_parallel(planned: list[PlannedRun]) -> int:
    """Runs at once on this machine: its cores over the most cores one run asks for."""
    cores = usable_cpus()
    per_run = max((p.cfg.slurm.cpus_per_task * p.cfg.slurm.tasks_per_node for p in planned), default=1)
    return max(1, cores // per_run)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    grid = load_grid(args.grid, args.only, args.set)
    if not grid.runs:
        raise UserError(f"no run of {args.grid} matches {' '.join(args.only)}")
    local = args.executor == "local"
    name = "local" if local else args.cluster
    profile = load_profile(name)
    planned = plan(grid, args.root, profile, args.force)
    to_submit = [p for p in planned if p.state == "SUBMIT"]
    max_parallel = args.max_parallel or (local_parallel(to_submit) if local else 64)
    print_table(planned, profile, profile_label(name), local)
    if args.dry_run:
        return _dry_run(args.root / grid.name, planned, profile, local, max_parallel)
    if "SLURM_JOB_ID" in os.environ and not local:
        print("warning: submitting from inside a SLURM allocation; the job's SLURM_* variables are cleared "
              "for the submission", file=sys.stderr)
    submission = manifest.new_submission(args.grid, args.set, args.only)
    try:
        jobs = submit_planned(args.root / grid.name, planned, profile, local, max_parallel, args.force, submission)
        if not args.wait:
            return 0
        # record_jobs numbered this command's submission in place (another command may have recorded one since)
        return progress.wait(jobs, submission=f"#{submission.number}" if jobs and submission.number else "-")
    except KeyboardInterrupt:
        print(f"interrupted: the runs already started keep running (python -m slurm.status {args.grid} "
              f"{'--root ' + str(args.root) + ' ' if args.root != DEFAULT_ROOT else ''}shows them; --cancel stops "
              f"them); the runs not started stay unsubmitted (submit again to start them)", file=sys.stderr)
        return 130


def submit_planned(grid_dir: Path, planned: list[PlannedRun], profile: ClusterProfile, local: bool,
                   max_parallel: int, force: bool = False,
                   submission: manifest.Submission | None = None) -> list[submitit.Job]:
    """Submit the runs planned SUBMIT, one array per resource shape (local: `max_parallel` at a time),
    recorded in the manifest as one submission (settings unknown when `submission` is None); returns their jobs."""
    submission = submission or manifest.new_submission()
    rerun = [p for p in planned if force and p.state == "SUBMIT" and _where(p).is_dir()]
    for p in planned:
        _claim(grid_dir, p)
    for p in rerun:  # those that had a directory before the claims made new ones
        _archive_for_rerun(p.run_dir)
    for p in planned:
        if p.state == "DONE" and not p.run_dir.config.exists():  # the analysis reads runs by it
            prepare_run_dir(p.dir_config, p.run_dir)
            print(f"{p.run_dir.path.name}: DONE, its config.yaml was missing: written again from the grid")
    to_submit = [p for p in planned if p.state == "SUBMIT"]
    if local:
        jobs = _submit_local(grid_dir, to_submit, profile, max_parallel, submission)
    else:
        jobs = []
        for shape_runs in _groups(to_submit).values():
            executor = make_executor(grid_dir, shape_runs[0].cfg, shape_runs, profile, local, max_parallel)
            try:
                jobs += submit_group(grid_dir, shape_runs, executor, submission, profile)
            except submitit.core.utils.FailedJobError as err:  # its message is sbatch's whole stderr
                raise UserError(f"sbatch refused {len(shape_runs)} run(s): {_sbatch_error(err)}; they stay unsubmitted"
                                + (f" ({len(jobs)} run(s) submitted before are recorded)" if jobs else "")) from None
    ids = sorted({j.job_id.split("_")[0] for j in jobs})
    print(f"submitted {len(jobs)} runs" + (f": jobs {', '.join(ids)}" if jobs else ""))
    return jobs


def _sbatch_error(err: Exception) -> str:
    """sbatch's error lines ("sbatch: error: ..."), else its last line."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    said = [line for line in lines if "error:" in line]
    return "; ".join(said or lines[-1:]) or type(err).__name__


def _where(p: PlannedRun) -> Path:
    """The run's real directory as planned (another grid's, for a shared run not linked yet)."""
    return p.placement.directory if p.placement is not None else p.run_dir.path


def _claim(grid_dir: Path, p: PlannedRun) -> None:
    """Make the run's entry in the grid's folder (experiments/store.py: a link to the directory another
    grid holds, or its own new directory). A run planned new that another grid made meanwhile (submitted
    at the same time) is that grid's to train: it is not submitted here."""
    placement = claim(grid_dir.parent, grid_dir.name, p.cfg)
    if p.state == "SUBMIT" and placement.elsewhere and not (p.placement and p.placement.elsewhere):
        p.state = "DONE" if RunDir(placement.directory).is_done() else "ACTIVE"
        print(f"{p.run_dir.path.name}: grid {placement.holder} made its directory meanwhile: shared with it, "
              f"not submitted here ({p.state})")
    p.placement, p.run_dir = placement, RunDir(placement.entry)


def _submit_local(grid_dir: Path, runs: list[PlannedRun], profile: ClusterProfile, max_parallel: int,
                  submission: manifest.Submission, poll_s: float = 1.0) -> list[submitit.Job]:
    """Start `runs` through the local executor, at most `max_parallel` alive at once; returns
    when the last one has started (see the module docstring)."""
    if len(runs) > max_parallel:
        print(f"local executor: {len(runs)} runs, {max_parallel} at a time: this command stays until the last "
              "one has started (interrupted, the runs not started yet stay unsubmitted, the started ones train on)", flush=True)
    pending, running, jobs = list(runs), [], []
    while pending:
        running = [job for job in running if not job.done()]
        while pending and len(running) < max_parallel:
            p = pending.pop(0)
            executor = make_executor(grid_dir, p.cfg, [p], profile, True, max_parallel)
            (job,) = submit_group(grid_dir, [p], executor, submission, profile)
            running.append(job)
            jobs.append(job)
            if len(runs) > max_parallel:
                print(f"started {p.run_dir.path.name} (pid {job.job_id}; {len(jobs)} of {len(runs)})", flush=True)
        if pending:
            time.sleep(poll_s)
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


if __name__ == "__main__":
    run_cli(main)
