"""The ledger fixtures (SQLite and PostgreSQL) for the GP tests' ledger checks."""

from tests.ledger.conftest import ledger, ledger_location

__all__ = ["ledger", "ledger_location"]
