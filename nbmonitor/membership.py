"""Which job a run belongs to, read from its launcher's environment, or given by hand.

A run made under torchrun (and accelerate, which uses torchrun's variables),
a multi-task SLURM step or an MPI launcher is a *member* of one group: the
launcher's job, together with the run's name. Each member writes its own run
file; readers put the group together (nbmonitor.groups). Nothing here reads
the environment by itself: ``from_environment`` takes it as a mapping, so the
same code runs with or without a launcher, and tests pass made-up ones.

Bad values (a RANK that is no number, a WORLD_SIZE not above the rank) are
said in one warning, and the run is watched as a run of its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from .record import GroupField, RunRecord

__all__ = ["MODES", "Mode", "from_environment", "group_id", "manual"]

Mode = Literal["lockstep", "sharded"]
#: lockstep: ranks walk the same steps, the group is as far as its slowest; sharded: members
#: share a pool of work, the group's progress is theirs added up.
MODES: tuple[Mode, ...] = ("lockstep", "sharded")

# SLURM's batch step and its interactive step are no multi-task job step.
_SLURM_NOT_A_STEP = {"batch", "extern", "interactive", "4294967294", "4294967291"}


def group_id(job: str, name: str) -> str:
    """The group's id (32 hex digits, like a run id): its events are claimed under it."""
    import hashlib  # here: OpenSSL takes milliseconds to load, and only readers need it

    return hashlib.sha256(f"{job}\0{name}".encode()).hexdigest()[:32]


def group_of(run: RunRecord) -> str | None:
    """The id of the group ``run`` is a member of, or None."""
    return None if run.group is None else group_id(run.group.job, run.name)


def subject(run: RunRecord) -> str:
    """Whom a run's events are claimed under: its group when it is a member, else the run."""
    return group_of(run) or run.id


def manual(
    group: str, rank: int | None = None, world_size: int | None = None, mode: Mode = "lockstep"
) -> GroupField:
    """``Run(group=..., rank=..., world_size=...)``; ValueError names what is wrong."""
    if not isinstance(group, str) or not group.strip():
        raise ValueError(f"group must be a non-empty name, got {group!r}")
    for what, value in (("rank", rank), ("world_size", world_size)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise ValueError(f"{what} must be a whole number >= 0, got {value!r}")
    if rank is not None and world_size is not None and rank >= world_size:
        raise ValueError(f"rank {rank} is not below world_size {world_size}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    return GroupField(group.strip(), "manual", rank, world_size, None, mode)


def from_environment(env: Mapping[str, str]) -> tuple[GroupField | None, str | None]:
    """The membership a launcher gave this process, and a warning when its variables are bad
    (then no membership: the run is one of its own)."""
    if "TORCHELASTIC_RUN_ID" in env:
        # Each restart of the job (--max-restarts) is a new group, with incidents of its own.
        job, restart = env["TORCHELASTIC_RUN_ID"], _int(env.get("TORCHELASTIC_RESTART_COUNT"))
        if job and restart:
            job = f"{job} restart {restart}"
        return _ranked(env, "torchrun", job, "RANK", "WORLD_SIZE", local="LOCAL_RANK")
    step = env.get("SLURM_STEP_ID")
    is_step = "SLURM_JOB_ID" in env and step is not None and step not in _SLURM_NOT_A_STEP
    if is_step and _int(env.get("SLURM_NTASKS")) not in (None, 0, 1):
        job = f"{env['SLURM_JOB_ID']}.{step}"
        return _ranked(env, "slurm", job, "SLURM_PROCID", "SLURM_NTASKS", local="SLURM_LOCALID")
    if "OMPI_COMM_WORLD_RANK" in env:
        job = env.get("OMPI_MCA_ess_base_jobid") or env.get("PMIX_NAMESPACE") or env.get("PMIX_ID", "")
        return _ranked(
            env,
            "mpi",
            job.split(".")[0],
            "OMPI_COMM_WORLD_RANK",
            "OMPI_COMM_WORLD_SIZE",
            local="OMPI_COMM_WORLD_LOCAL_RANK",
        )
    if "PMI_RANK" in env and "PMI_SIZE" in env:
        # MPICH's Hydra names no job, but every rank of one is told the same PMI server.
        job = env.get("PMIX_NAMESPACE") or env.get("PMI_PORT", "")
        return _ranked(env, "mpi", job, "PMI_RANK", "PMI_SIZE")
    return None, None


def _ranked(
    env: Mapping[str, str], launcher: str, job: str, rank_var: str, size_var: str, *, local: str | None = None
) -> tuple[GroupField | None, str | None]:
    rank, size = _int(env.get(rank_var)), _int(env.get(size_var))
    problem = None
    if rank is None:
        problem = f"{rank_var}={env.get(rank_var, '')[:40]!r} is not a rank"
    elif size is not None and rank >= size:
        problem = f"{rank_var}={rank} is not below {size_var}={size}"
    elif not job:
        problem = f"{launcher} gave this process no job id"
    if problem is not None:
        return (
            None,
            f"nbmonitor: {problem}; this run is watched as a run of its own, not as a {launcher} member",
        )
    return GroupField(job, launcher, rank, size, _int(env.get(local)) if local else None), None


def _int(text: str | None) -> int | None:
    if text is None or not text.strip().isdigit():
        return None
    return int(text)
