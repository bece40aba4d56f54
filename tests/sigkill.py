"""Kill a run the hard way: the resume tests of train/main.py and rl/main.py share this."""
import signal
import subprocess
import time
from pathlib import Path


def kill_after_checkpoint(args, env, checkpoint: Path, *, timeout: float = 300.0) -> None:
  """Starts ``args`` and SIGKILLs it as soon as the ``checkpoint`` directory appears (a step
  Orbax has finished writing); fails if the run ended, or never got there, before the kill."""
  proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline, killed = time.time() + timeout, False
  while time.time() < deadline and proc.poll() is None:
    if Path(checkpoint).is_dir():
      proc.send_signal(signal.SIGKILL)
      killed = True
      break
    time.sleep(0.02)
  if not killed:
    proc.kill()  # it ended, or overstayed the deadline: do not leave it running
  proc.wait()
  assert killed and proc.returncode == -signal.SIGKILL, (
      f"the run ended (rc {proc.returncode}) or ran {timeout:.0f} s before {checkpoint} "
      "appeared")
