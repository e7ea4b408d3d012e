"""The browser fixtures of tests/browser.py, and the ledger tests' locations (SQLite and a
real PostgreSQL server), for the web view's tests."""

from tests.browser import browser, pages, screenshot_dir
from tests.ledger.conftest import ledger_location

__all__ = ["browser", "ledger_location", "pages", "screenshot_dir"]
