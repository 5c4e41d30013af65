"""Train one run:  python -m experiments.train CONFIG.yaml [--set key=value ...] [--run-dir DIR] [--restart]

The run directory (default `runs/<grid or "single">/<run_id>`) is created or
resumed: running the same command again after a crash continues from the last
checkpoint. Exit status: 0 done, 1 failed, 2 bad input (nothing written), 128+N
stopped by signal N (a checkpoint was written first; Ctrl-C is 130).

Before anything is computed or written, every process checks the run against its
data and process count (`experiments.contract.check_run`); rank 0 then takes the
run directory (one owner: `RunDir.lock`, a second trainer exits at once naming the
holder) and verifies the data's checksums (sizes always; the full sha256 when the
prepared files changed since the run last verified them: `data_verified.json`).
"""
from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

import torch

from experiments.atomic import atomic_write_json, atomic_write_text, os_error_in
from experiments.checkpoint import CheckpointIncomplete, complete_checkpoints
from experiments.cli import ArgumentParser, folder, run_cli
from experiments.contract import check_run
from experiments.data import Corpus, load_corpus
from experiments.data.archive import sha256_file
from experiments.distributed import DistContext, init_distributed, shutdown_distributed
from experiments.memory_check import check_memory
from experiments.resources import usable_cpus
from experiments.run_config import RunConfig, data_path, find_run_dir, load_run_config
from experiments.run_dir import LOCK_FILE, PROJECT_ROOT, OwnerLock, RunDir
from experiments.tracking import check_wandb_login
from experiments.train_checkpoint import accepted_hashes
from experiments.train_step import NonFiniteLoss
from experiments.trainer import Trainer
from model.errors import ConfigError, UserError

log = logging.getLogger("train")
VERIFIED = "data_verified.json"
"""In the run directory: which prepared files (path, size, mtime) this run verified against meta.json's sha256."""
T = TypeVar("T")


def default_run_dir(cfg: RunConfig, root: Path | None = None) -> Path:
    """`runs/<grid or single>/<run_id>`, or the folder an earlier hash rule named (run_config.find_run_dir)."""
    return find_run_dir((root or PROJECT_ROOT / "runs") / (cfg.grid or "single"), cfg)


def prepare_run_dir(cfg: RunConfig, run_dir: RunDir) -> None:
    """Write config.yaml, or check that the existing one is this config. A config that differs only
    in fields outside the run id (cadence, layout, tracking) replaces it: the run continues with them."""
    existing = check_same_run(cfg, run_dir)
    if existing is None or existing.to_dict() != cfg.to_dict():
        atomic_write_text(run_dir.config, cfg.to_yaml())


def check_same_run(cfg: RunConfig, run_dir: RunDir) -> RunConfig | None:
    """The config run_dir holds (None when it holds none yet); UserError if it is another run's, or
    damaged. Reads only."""
    if not run_dir.config.exists():
        _check_checkpoints_are_of(cfg, run_dir)
        return None
    existing = load_run_config(run_dir.config)
    if existing.config_hash != cfg.config_hash:
        raise UserError(f"{run_dir.path} holds a different config ({existing.run_id}); choose another --run-dir")
    return existing


def _check_checkpoints_are_of(cfg: RunConfig, run_dir: RunDir) -> None:
    """Without config.yaml, the newest checkpoint's config hash says whose run the directory holds:
    UserError for another config's, before this config's config.yaml is written over it."""
    newest = complete_checkpoints(run_dir.checkpoints)[:1] if run_dir.checkpoints.is_dir() else []
    try:
        shared = torch.load(newest[0] / "shared.pt", map_location="cpu", weights_only=True, mmap=True) if newest else {}
    except Exception:  # noqa: BLE001 - unreadable: the trainer's restore says so, in its own words
        return
    trained = shared.get("config_hash") if isinstance(shared, dict) else None
    if isinstance(trained, str) and trained not in accepted_hashes(cfg, run_dir):
        raise UserError(f"{run_dir.path} has no config.yaml and its checkpoints belong to another config; "
                        "choose another --run-dir")


def setup_logging(rank: int) -> None:
    """Plain timestamped lines on stderr: they read well in SLURM log files."""
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, stream=sys.stderr, force=True,
                        format=f"%(asctime)s [rank {rank}] %(message)s", datefmt="%Y-%m-%d %H:%M:%S")


def run_training(cfg: RunConfig, run_dir: RunDir, *, restart: bool = False,
                 on_start: Callable[[], None] | None = None) -> int:
    """Train (or resume) `cfg` in `run_dir`; the exit status of the run. `on_start` is called on
    every rank once the run directory is this trainer's (slurm/job.py records the attempt there).

    Bad input found before the start (data contract, checksums, another trainer on the run
    directory, another run's config in it) raises UserError with nothing written. A DONE run
    (eval.json readable) is left as it is, unless `restart`. Any error after start-up marks the
    run FAILED in status.json (with the error tail that `slurm.status --tail` shows) and is said
    in one line on stderr; a full disk is that one line alone ("no space left on ... while
    writing ...").
    """
    ctx = init_distributed(cfg.train.device)
    setup_logging(ctx.rank)
    lock: OwnerLock | None = None
    trainer: Trainer | None = None
    try:
        corpus = _preflight(cfg, ctx)
        lock = _on_rank0(ctx, lambda: _take(run_dir))
        _on_rank0(ctx, lambda: check_same_run(cfg, run_dir))  # refused, the run's status stays as it was
        verified = _on_rank0(ctx, lambda: _verify_or_leave(cfg, corpus, run_dir, lock))  # damaged data: said even so
        # DONE, and of this config: check_same_run cannot vouch for a run whose config.yaml is gone
        if not restart and ctx.all_agree(run_dir.config.exists() and run_dir.is_done()):
            log.info("%s is DONE (eval.json holds its final evaluation): nothing to do; --restart trains it again",
                     run_dir.path)
            return 0
        if on_start is not None:
            on_start()
        try:
            trainer = _start(cfg, run_dir, ctx, corpus, restart, verified)
            trainer.run()
        except (NonFiniteLoss, CheckpointIncomplete) as err:
            _fail(run_dir, ctx, str(err), trainer)
            return 1
        except UserError as err:  # said in one line by the command (experiments/cli.py)
            _settle(run_dir, ctx, "FAILED", str(err), trainer)
            raise
        except Exception as err:
            failed = os_error_in(err)
            if failed is not None and failed.errno in (errno.ENOSPC, errno.EDQUOT):
                _fail(run_dir, ctx, disk_full_line(failed), trainer)  # that line alone: no traceback
                return 1
            _settle(run_dir, ctx, "FAILED", _traceback_tail(), trainer)
            log.error("run failed at step %s: %s (status.json: FAILED; the traceback follows)", _step(trainer),
                      _one_line(err))
            raise
        except KeyboardInterrupt:  # Ctrl-C twice: no checkpoint, the previous one stays
            _settle(run_dir, ctx, "PENDING", "interrupted (Ctrl-C twice) before a checkpoint; the run resumes "
                                             "from its previous checkpoint", trainer)
            raise
    finally:
        stopped = trainer.interrupt.stopped_by if trainer is not None else None
        trainer = None  # its DDP wrapper holds the process group: freed before the group is left
        shutdown_distributed(ctx)
        if lock is not None:
            lock.release()
    return 128 + stopped if stopped else 0


def _preflight(cfg: RunConfig, ctx: DistContext) -> Corpus:
    """The data contract against this process count (experiments/contract.py), the training state
    against the memory available (experiments/memory_check.py), and the data opened (sizes
    checked): read-only; the contract's warnings logged."""
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
        cpus = usable_cpus()
        if ctx.is_main and cfg.train.threads > cpus:  # oversubscribed: each step many times slower
            log.warning("train.threads is %d but this process may use %d CPUs: the threads will contend",
                        cfg.train.threads, cpus)
    for warning in check_run(cfg, ctx.world_size):
        if ctx.is_main:
            log.warning("%s", warning)
    check_wandb_login(cfg)
    memory_warning = check_memory(cfg, ctx.device, ctx.world_size)
    if memory_warning and ctx.is_main:
        log.warning("%s", memory_warning)
    try:
        return load_corpus(data_path(cfg), cfg.data.dataset)
    except ConfigError as err:
        raise err.under("data") from None


def _on_rank0(ctx: DistContext, action: Callable[[], T]) -> T | None:
    """`action()` on rank 0; when it raises there, every rank raises (none waits forever)."""
    result, error = None, None
    if ctx.is_main:
        try:
            result = action()
        except Exception as err:  # noqa: BLE001 - re-raised below, after every rank knows
            error = err
    if not ctx.all_agree(error is None):
        raise error or UserError("rank 0 refused to start the run (its error line says why)")
    return result


def _take(run_dir: RunDir) -> OwnerLock:
    """The run directory for this trainer (created if new), or RunDirBusy naming the trainer that has it."""
    created = not run_dir.path.exists()
    run_dir.path.mkdir(parents=True, exist_ok=True)
    lock = run_dir.lock()
    lock.created_dir = created
    if lock.warning:
        log.warning("%s", lock.warning)
    return lock


def _verify_or_leave(cfg: RunConfig, corpus: Corpus, run_dir: RunDir, lock: OwnerLock | None) -> dict[str, Any]:
    """verify_data; when it refuses the data of a new run, the run directory just made goes again."""
    try:
        return verify_data(corpus.path, corpus.meta, run_dir.path / VERIFIED, write=False)
    except UserError:
        if lock is not None and lock.created_dir:
            lock.release()
            (run_dir.path / LOCK_FILE).unlink(missing_ok=True)
            try:
                run_dir.path.rmdir()
            except OSError:
                pass
        raise


def verify_data(location: Path, meta: dict[str, Any], stamp: Path, *, write: bool = True) -> dict[str, Any]:
    """Check the prepared split files against meta.json's sha256 when they changed (size or mtime)
    since this run last verified them (`stamp`, written after a successful check, in the run
    directory); their sizes were checked already (load_corpus). UserError, in one line, on a mismatch.
    Returns the verification record (`"hashed"`: whether the files were read this time); with
    `write=False` the caller writes it (`write_stamp`)."""
    digests = meta.get("sha256")
    if not isinstance(digests, dict) or not digests:
        return {"hashed": False, "note": "meta.json records no checksums"}
    files = {}
    for name in sorted(digests):
        st = (location / name).stat()
        files[name] = [st.st_size, st.st_mtime_ns]
    previous = _read_stamp(stamp)
    seen = {"path": str(location.resolve()), "files": files, "sha256": digests}
    if all(previous.get(k) == v for k, v in seen.items()):
        return {"hashed": False, **previous}
    for name, expected in sorted(digests.items()):
        actual = sha256_file(location / name)
        if actual != expected:
            raise UserError(f"{location / name}: sha256 {actual[:16]}... differs from {expected[:16]}... recorded in "
                            f"meta.json: the prepared data was damaged or changed after preparation; prepare it "
                            f"again with --force")
    record = {"hashed": True, "stamp": str(stamp), **seen, "verified": time.strftime("%Y-%m-%dT%H:%M:%S")}
    if write:
        write_stamp(record)
    return record


def write_stamp(record: dict[str, Any]) -> None:
    """Record a verification that read the files (verify_data) in its stamp file."""
    if record.get("hashed") and record.get("stamp"):
        stamp = Path(record["stamp"])
        stamp.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(stamp, {k: v for k, v in record.items() if k not in ("hashed", "stamp")})


def _read_stamp(stamp: Path) -> dict[str, Any]:
    try:
        record = json.loads(stamp.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _start(cfg: RunConfig, run_dir: RunDir, ctx: DistContext, corpus: Corpus, restart: bool,
           verified: dict[str, Any] | None) -> Trainer:
    """Write the run directory (rank 0), then build the trainer on every rank."""
    meta = corpus.meta
    if ctx.is_main:
        prepare_run_dir(cfg, run_dir)
        write_stamp(verified or {})
        if restart:
            _set_aside(run_dir)
        attempt = int(run_dir.read_status().get("attempt") or 0) + 1
        location = data_path(cfg)
        run_dir.record_provenance(
            attempt, data={"name": location.name, "path": str(location), "sha256": meta.get("sha256")},
            data_verified=(verified or {}).get("verified"),
            layout={"world_size": ctx.world_size, "batch_split": cfg.train.batch_split},
            checkpoint_caches=cfg.train.checkpoint_caches)
        if verified and verified.get("hashed"):
            log.info("data checksums verified (%s)", ", ".join(sorted(meta.get("sha256") or {})))
        if cfg.train.checkpoint_caches == "none":
            log.info("train.checkpoint_caches: none: checkpoints hold no layer caches; a resumed run starts "
                     "them empty (not bit-identical to an uninterrupted run)")
    ctx.barrier()  # rank 0 has set the run directory up before any rank reads its checkpoints
    trainer = Trainer(cfg, run_dir, corpus, ctx)
    trainer.restart = restart
    return trainer


def _set_aside(run_dir: RunDir) -> None:
    """--restart: the old checkpoints, metrics and evaluation move to `before-restart-<time>/`
    (delete it when sure); the run starts over at step 0."""
    old = [p for p in (run_dir.checkpoints, run_dir.metrics, run_dir.eval_file, run_dir.path / "tensorboard")
           if p.exists()]
    aside = run_dir.path / f"before-restart-{time.strftime('%Y%m%d-%H%M%S')}"
    if old:
        aside.mkdir()
        for path in old:
            path.rename(aside / path.name)
    log.warning("--restart: starting over at step 0%s", f"; the run's earlier files are in {aside}" if old else "")


def disk_full_line(err: OSError) -> str:
    """"no space left on <filesystem> while writing <file>" (or "quota exceeded on ...")."""
    what = "quota exceeded" if err.errno == errno.EDQUOT else "no space left"
    if not err.filename:
        return f"{what} on a filesystem while writing a file of the run ({err.strerror})"
    path = Path(os.fsdecode(err.filename))
    return f"{what} on {_mount_point(path)} while writing {path}"


def _mount_point(path: Path) -> Path:
    path = path.absolute()
    while not os.path.ismount(path) and path != path.parent:
        path = path.parent
    return path


def _fail(run_dir: RunDir, ctx: DistContext, error: str, trainer: Trainer | None) -> None:
    _settle(run_dir, ctx, "FAILED", error, trainer)
    log.error("run failed: %s", error.strip().splitlines()[-1])


def _settle(run_dir: RunDir, ctx: DistContext, state: str, error: str, trainer: Trainer | None) -> None:
    """Leave a final state in status.json (rank 0), whatever the disk says."""
    if not (ctx.is_main and run_dir.path.exists()):
        return
    fields: dict[str, Any] = {"error": error}
    if trainer is not None:
        fields.update(step=trainer.state.step, attempt=trainer.status.attempt)
    try:
        run_dir.write_status(state, **fields)
    except OSError as err:
        log.error("status.json could not be written either: %s", _one_line(err))


def _step(trainer: Trainer | None) -> str:
    return "?" if trainer is None else str(trainer.state.step)


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[-1] if text else ''}".rstrip(": ")


def _traceback_tail() -> str:
    return traceback.format_exc()[-3000:]


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = ArgumentParser(prog="python -m experiments.train", description=__doc__.split("\n")[0])
    parser.add_argument("config", help="run config YAML")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set model.num_persistent=256 (repeatable)")
    parser.add_argument("--run-dir", type=folder, help="run directory (default runs/<grid>/<run_id>)")
    parser.add_argument("--restart", action="store_true",
                        help="start the run over at step 0: its checkpoints, metrics and eval.json move to "
                             "before-restart-<time>/ (needed when every checkpoint is unreadable)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    cfg = load_run_config(args.config, args.set)
    run_dir = RunDir(args.run_dir or default_run_dir(cfg))
    return run_training(cfg, run_dir, restart=args.restart)


if __name__ == "__main__":
    run_cli(main)
