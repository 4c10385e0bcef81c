"""The README's testing guide as data: its shell commands in order, each with the results it promises.

The guide is the user-facing contract, so its commands are parsed from README.md rather than copied into a test:
every fenced ``sh`` block of the "Testing guide" section, split into complete shell commands (a command ends
where bash would run it: ``bash -n`` accepts it and it does not end in a line continuation). A comment line
``# → TEXT`` right after a command promises that TEXT appears in the command's output. Guide authors put those
only after commands that read (curl GET, SELECT, grep), because a test may run them again until the promise holds,
as a reader would a moment later.
"""
from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass, field

from fleetcore import paths

README = paths.PROJECT_ROOT / "README.md"
GUIDE_HEADING = "## Testing guide"
EXPECT_PREFIX = "# →"


@dataclass
class Command:
    text: str
    section: str
    expect: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return f"[{self.section}] {self.text}"


def guide_text() -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index(GUIDE_HEADING)
    end = text.find("\n## ", start + len(GUIDE_HEADING))
    return text[start:end if end != -1 else len(text)]


def _complete(lines: list[str]) -> bool:
    text = "\n".join(lines)
    if not text.strip() or text.rstrip().endswith("\\"):
        return False
    return subprocess.run(["bash", "-n", "-c", text], capture_output=True).returncode == 0


def guide_commands() -> list[Command]:
    """Every command of the guide's ``sh`` blocks, in order, with its ``# →`` promises."""
    commands: list[Command] = []
    section = "Testing guide"
    pending: list[str] = []
    in_block = False
    for line in guide_text().splitlines():
        if not in_block:
            if line.startswith("### "):
                section = line[4:].strip()
            elif line.strip() == "```sh":
                in_block = True
            continue
        if line.strip() == "```":
            assert not pending, f"an unfinished command at the end of a block in {section!r}: {pending}"
            in_block = False
            continue
        stripped = line.strip()
        if not pending and stripped.startswith(EXPECT_PREFIX):
            assert commands, f"a promise before any command in {section!r}"
            commands[-1].expect.append(stripped[len(EXPECT_PREFIX):].strip())
            continue
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        pending.append(line)
        if _complete(pending):
            commands.append(Command("\n".join(pending), section))
            pending = []
    return commands


def substitute(text: str, replacements: dict[str, str]) -> str:
    """Replace the path prefixes ``var/`` and ``.venv/bin/`` where they start a path (not inside another)."""
    for prefix, value in replacements.items():
        text = re.sub(rf"(?<![\w./-]){re.escape(prefix)}", value, text)
    return text
