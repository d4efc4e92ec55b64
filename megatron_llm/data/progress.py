"""Progress display for preprocessing, merging and tokenizer training: a tqdm bar on a terminal, Megatron-style log
lines on stderr otherwise (Slurm logs): documents, a rate (tokens/s by default) and the ETA from input bytes."""

from __future__ import annotations

import sys
import time


class Progress:
    """Tracks on-disk input bytes (so the ETA is right for compressed inputs) plus documents and tokens."""

    def __init__(self, total_bytes: int, show_bar: bool, log_interval: int = 1000, quiet: bool = False,
                 position: int = 0, desc: str = "preprocess", unit: str = "tokens") -> None:
        self.desc = desc
        self.unit = unit  # what the third count is: tokens (preprocess, merge) or sentences (tokenizer train)
        self.total = total_bytes
        self.log_interval = max(1, int(log_interval))
        self.quiet = quiet
        self.start = time.perf_counter()
        self.done_bytes = 0
        self._next_log = self.log_interval
        self._last_postfix = 0.0
        self.bar = None
        if show_bar and not quiet:
            from tqdm import tqdm

            self.bar = tqdm(total=total_bytes or None, unit="B", unit_scale=True, unit_divisor=1000,
                            desc=desc, dynamic_ncols=True, position=position, leave=True)

    def update(self, disk_bytes: int, docs: int, tokens_total: int, docs_total: int) -> None:
        self.done_bytes += disk_bytes
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        if self.bar is not None:
            self.bar.update(disk_bytes)
            now = time.perf_counter()
            if now - self._last_postfix > 0.5:
                self._last_postfix = now
                self.bar.set_postfix_str(f"{docs_total / elapsed:,.0f} docs/s, {tokens_total / elapsed:,.0f} {self.unit}/s",
                                         refresh=False)
            return
        if self.quiet or docs_total < self._next_log:
            return
        self._next_log = (docs_total // self.log_interval + 1) * self.log_interval
        mbs = self.done_bytes / 1e6 / elapsed
        eta = ""
        if self.total and self.done_bytes:
            eta = f", ETA {max(self.total - self.done_bytes, 0) / (self.done_bytes / elapsed):,.0f} s"
        head = "" if self.desc == "preprocess" else f"{self.desc}: "
        print(f"{head}Processed {docs_total:,} documents ({docs_total / elapsed:,.0f} docs/s, {mbs:,.2f} MB/s, "
              f"{tokens_total / elapsed:,.0f} {self.unit}/s{eta}).", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
