"""A light reading of deploy/docker/Dockerfile: its stages and their instructions."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Stage:
    name: str
    base: str  # an image, or the name of an earlier stage
    instructions: list[tuple[str, str]] = field(default_factory=list)  # (KEYWORD, arguments)

    def arguments(self, keyword: str) -> list[str]:
        return [rest for word, rest in self.instructions if word == keyword]


def instructions(path: Path) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) for each instruction, with continued lines joined and comments dropped."""
    joined, current = [], ""
    for line in path.read_text().splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        joined.append(current + line)
        current = ""
    result = []
    for line in joined:
        keyword, _, rest = line.strip().partition(" ")
        result.append((keyword.upper(), " ".join(rest.split())))
    return result


def stages(path: Path) -> dict[str, Stage]:
    """The stages by name, with FROM's build arguments replaced by their defaults."""
    defaults: dict[str, str] = {}
    found: dict[str, Stage] = {}
    stage: Stage | None = None
    for keyword, rest in instructions(path):
        if keyword == "ARG" and stage is None:
            name, _, value = rest.partition("=")
            defaults[name] = value
        elif keyword == "FROM":
            match = re.fullmatch(r"(?:--platform=\S+ )?(\S+) AS (\S+)", rest, re.IGNORECASE)
            assert match, f"every stage is named: FROM {rest}"
            base = re.sub(r"\$\{(\w+)\}", lambda m: defaults[m.group(1)], match.group(1))
            stage = found[match.group(2)] = Stage(match.group(2), base)
        else:
            assert stage is not None, f"{keyword} before the first FROM"
            stage.instructions.append((keyword, rest))
    return found


def lineage(all_stages: dict[str, Stage], name: str) -> list[Stage]:
    """The stage and the stages it is built on, nearest first."""
    chain = [all_stages[name]]
    while chain[-1].base in all_stages:
        chain.append(all_stages[chain[-1].base])
    return chain


def last(all_stages: dict[str, Stage], name: str, keyword: str) -> str | None:
    """The arguments of the instruction that is in force in the image (the latest one)."""
    for stage in lineage(all_stages, name):
        found = stage.arguments(keyword)
        if found:
            return found[-1]
    return None


def exec_form(arguments: str) -> list[str]:
    return json.loads(arguments)
