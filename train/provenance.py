"""Where a result came from: device, versions, commit, command."""

import datetime
import os
import platform
import shlex
import subprocess
import sys

import jax

import lowprec_jax


def _git(*args: str) -> str:
  return subprocess.run(
    ["git", *args], capture_output=True, text=True, check=True
  ).stdout.strip()


def git_commit() -> str:
  """Short commit hash, with '-dirty' if tracked files have changes."""
  try:
    commit = _git("rev-parse", "--short", "HEAD")
    dirty = _git("status", "--porcelain", "--untracked-files=no")
  except (OSError, subprocess.CalledProcessError):
    return "unknown"
  return commit + ("-dirty" if dirty else "")


def _cpu_name() -> str:
  fallback = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      names = [x for x in f if x.startswith("model name")]
  except OSError:
    return fallback
  return names[0].split(":", 1)[1].strip() if names else fallback


def provenance(command: str | None = None) -> dict:
  """Device, versions, commit, command and date of a result."""
  device = jax.devices()[0]
  return {
    "device": f"{device.platform}:{device.device_kind}",
    "device_count": jax.device_count(),
    "host_cpu": f"{_cpu_name()} ({os.cpu_count()} cores)",
    "jax": jax.__version__,
    "lowprec_jax": lowprec_jax.__version__,
    "python": platform.python_version(),
    "commit": git_commit(),
    "command": command or shlex.join(sys.argv),
    "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
  }
