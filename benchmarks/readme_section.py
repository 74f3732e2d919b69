"""Replace one marked section of benchmarks/README.md (the `--write` of every benchmark script)."""

from __future__ import annotations

from pathlib import Path

README = Path(__file__).with_name("README.md")


def write_section(name: str, heading: str, text: str, readme: Path = README) -> None:
    """Put `text` between `<!-- name:begin -->` and `<!-- name:end -->`; append the section under `heading` if new."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    content = readme.read_text()
    block = f"{begin}\n{text}\n{end}"
    if begin in content:
        head, rest = content.split(begin, 1)
        content = head + block + rest.split(end, 1)[1]
    else:
        content = content.rstrip() + f"\n\n## {heading}\n\n" + block + "\n"
    readme.write_text(content)
