"""Where a result came from: device, versions, commit, command."""

import datetime
import platform
import shlex
import subprocess
import sys

import jax

import lowprec_jax


def git_commit() -> str:
  """Short commit hash, with '-dirty' if tracked files have changes."""
  try:
    commit = subprocess.run(
      ["git", "rev-parse", "--short", "HEAD"],
      capture_output=True,
      text=True,
      check=True,
    ).stdout.strip()
    dirty = subprocess.run(
      ["git", "status", "--porcelain", "--untracked-files=no"],
      capture_output=True,
      text=True,
      check=True,
    ).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return "unknown"
  return commit + ("-dirty" if dirty else "")


def provenance(command: str | None = None) -> dict:
  """Device, versions, commit, command and date of a result."""
  device = jax.devices()[0]
  return {
    "device": f"{device.platform}:{device.device_kind}",
    "device_count": jax.device_count(),
    "host": platform.processor() or platform.machine(),
    "jax": jax.__version__,
    "lowprec_jax": lowprec_jax.__version__,
    "python": platform.python_version(),
    "commit": git_commit(),
    "command": command or shlex.join(sys.argv),
    "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
  }
