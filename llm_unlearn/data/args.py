"""Options that say where the QA data comes from and how it is formatted."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..runs.options import ConfigError, check_field_types, require, suggest
from .qa import PROMPT_FORMATS


@dataclass
class DataArgs:
    """Where the TOFU-format data comes from and how examples are formatted."""

    data_dir: str | None = field(
        default=None, metadata={"help": "Local folder of TOFU-format `<split>.json` files."}
    )
    dataset_name: str | None = field(default=None, metadata={"help": "Hub dataset id, e.g. locuslab/TOFU."})
    forget_split: str = field(
        default="forget10", metadata={"help": "Split to forget (forget01, forget05, forget10)."}
    )
    retain_split: str | None = field(
        default=None,
        metadata={"help": "Split to retain; defaults to the forget split's pair (forget10 -> retain90)."},
    )
    prompt_format: str = field(
        default="chat_template", metadata={"help": f"How a question is wrapped: {', '.join(PROMPT_FORMATS)}."}
    )
    system_prompt: str | None = field(default=None, metadata={"help": "System message for `chat_template`."})
    max_length: int = field(
        default=1024,
        metadata={
            "help": "Longest prompt + answer in tokens; longer examples are an error, never truncated. A check, "
            "not a padding size (batches pad to their longest example); 1024 fits the real TOFU."
        },
    )

    def __post_init__(self):
        check_field_types(self)
        # An empty path is the current folder to pathlib: a mistake to name, not a folder to search.
        if self.data_dir is not None and not self.data_dir.strip():
            raise ConfigError(
                "--data_dir is empty; pass the folder of TOFU-format split files, or leave it out to read "
                "--dataset_name"
            )
        if not self.forget_split.strip():
            raise ConfigError(
                "--forget_split is empty; name the split to forget (forget01, forget05, forget10)"
            )
        require(
            self.max_length >= 2, "max_length", self.max_length, "at least 2 tokens (a prompt and an answer)"
        )
        if self.prompt_format not in PROMPT_FORMATS:
            raise ConfigError(
                f"unknown prompt_format {self.prompt_format!r}{suggest(self.prompt_format, PROMPT_FORMATS)}; "
                f"choose {', '.join(PROMPT_FORMATS)}"
            )
