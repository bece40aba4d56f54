"""Helper for tests that run README code: the ```python blocks of one README section."""
import pathlib


def python_blocks(readme: pathlib.Path, heading: str) -> list[str]:
  """The ```python blocks between the line ``heading`` and the next heading of the same or a
  higher level (lines inside code fences, e.g. ``# comments``, are not headings)."""
  level = len(heading.split(" ")[0])
  blocks, current, in_section, fence = [], None, False, None
  for line in readme.read_text().splitlines():
    if fence is None and line.startswith("#"):
      hashes = len(line) - len(line.lstrip("#"))
      if line.strip() == heading:
        in_section = True
        continue
      if in_section and hashes <= level and line[hashes:hashes + 1] == " ":
        break
    if line.startswith("```"):
      if fence is None:
        fence = line[3:].strip()
        current = [] if fence == "python" else None
      else:
        if current is not None and in_section:
          blocks.append("\n".join(current) + "\n")
        fence, current = None, None
      continue
    if current is not None:
      current.append(line)
  return blocks
