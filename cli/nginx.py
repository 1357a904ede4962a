"""nginx from the deploy/nginx templates: fill in their at-sign placeholders under a prefix of its own."""

from __future__ import annotations

import re
from pathlib import Path

NGINX = "/usr/sbin/nginx"  # Debian's nginx-light
TEMPLATES = Path(__file__).resolve().parents[1] / "deploy" / "nginx"


def render(template: Path, prefix: Path, **values: str) -> Path:
    """PREFIX/<template's name>: the template with every @KEY@ replaced. ValueError if one is left unfilled."""
    text = template.read_text()
    for key, value in values.items():
        text = text.replace(f"@{key}@", value)
    left = sorted(set(re.findall(r"@[A-Z_]+@", text)))
    if left:
        raise ValueError(f"{template.name}: placeholders not filled: {left}")
    prefix.mkdir(parents=True, exist_ok=True)
    conf = prefix / template.name
    conf.write_text(text)
    return conf


def command(conf: Path, prefix: Path) -> list[str]:
    """nginx in the foreground (the templates say `daemon off`), its error log on stderr."""
    return [NGINX, "-p", str(prefix), "-c", str(conf), "-e", "stderr"]
