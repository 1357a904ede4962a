"""publish: follows aggregate's changes and writes the static site (see docs/layout.md)."""

from pathlib import Path

SQL_DIR = Path(__file__).parent / "sql"
SITE_ASSETS = Path(__file__).parent / "site"  # the page: index.html, app.css, app.js
