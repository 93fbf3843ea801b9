"""Shared command-line parsing for the training commands: ``--config RECIPE.yaml`` plus dotted overrides."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Optional, Sequence

from .config import Config, load_config


def _config_keys() -> str:
    default = Config()
    lines = []
    for section in dataclasses.fields(default):
        values = getattr(default, section.name)
        keys = ", ".join(f"{f.name}={getattr(values, f.name)!r}" for f in dataclasses.fields(values))
        lines.append(f"  {section.name}: {keys}")
    return "\n".join(lines)


def config_from_argv(argv: Optional[Sequence[str]], prog: str, description: str, example: str = "") -> Config:
    """Parse ``[--config PATH] [key=value ...]`` into a :class:`Config`; ``--help`` lists every key."""
    parser = argparse.ArgumentParser(
        prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(f"example:\n  {example}\n\n" if example else "") + "config keys (section: key=default):\n"
        + _config_keys(),
    )
    parser.add_argument("--config", "-c", default=None, help="YAML recipe (see configs/)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. optim.lr=1e-4")
    args = parser.parse_args(list(argv) if argv is not None else None)
    return load_config(args.config, args.overrides)
