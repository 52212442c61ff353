"""Optional TensorBoard event logging (`--tensorboard`): every numeric field of a round's record.

Events go to <run>/<method>/tensorboard/ (`tensorboard --logdir RUN_OR_GRID_DIR` shows every method
of a run or a grid). Needs the `tensorboard` package: `pip install 'fedsub[tensorboard]'`.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from fedsub.errors import ConfigError

INSTALL_HINT = "--tensorboard needs the tensorboard package; pip install 'fedsub[tensorboard]' (or tensorboard==2.21.0)"
GROUPS = {"accuracy": "eval", "macro_f1": "eval", "test_loss": "eval", "rougeL": "eval", "bleu4": "eval",
          "perplexity": "eval",
          "train_loss": "train"}  # fmt: skip


def check_tensorboard() -> None:
    """Fail before any training when the package is missing."""
    if importlib.util.find_spec("tensorboard") is None:
        raise ConfigError(INSTALL_HINT)


def scalar_tag(key: str) -> str:
    """eval/accuracy, train/train_loss, bytes/bytes_up, seconds/seconds_round, diag/diag_..., method/..."""
    if key in GROUPS:
        return f"{GROUPS[key]}/{key}"
    for prefix, group in (("bytes", "bytes"), ("seconds", "seconds"), ("diag_", "diag"), ("peak", "memory")):
        if key.startswith(prefix):
            return f"{group}/{key}"
    return f"method/{key}"


class RoundBoard:
    """A SummaryWriter fed one metrics.jsonl record per round (step = round)."""

    def __init__(self, log_dir: Path):
        check_tensorboard()
        from torch.utils.tensorboard import SummaryWriter  # late: tensorboard is an optional extra

        self.writer = SummaryWriter(log_dir=str(log_dir))
        self.cumulative_bytes = 0

    def log(self, record: dict) -> None:
        step = int(record["round"])
        self.cumulative_bytes += record["bytes_up"] + record["bytes_down"]
        self.writer.add_scalar("bytes/cumulative_bytes", self.cumulative_bytes, step)
        for key, value in record.items():
            if key != "round" and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(scalar_tag(key), value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
