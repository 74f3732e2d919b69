"""Exit codes and output helpers shared by the subcommands."""

from __future__ import annotations

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


def print_table(values: dict[str, float], title: str) -> None:
    """A markdown table of metric values, printed by process 0 only (nothing when `values` is empty)."""
    import jax

    if jax.process_index() != 0 or not values:
        return
    print(f"\n{title}\n")
    print("| metric | value |\n|---|---|")
    for k, v in values.items():
        print(f"| {k} | {v:.4f} |")
