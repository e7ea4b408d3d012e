"""The browser fixtures of tests/browser.py for the web view's tests."""

from tests.browser import browser, pages, screenshot_dir

__all__ = ["browser", "pages", "screenshot_dir"]
