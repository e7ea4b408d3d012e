"""Tests of the MESH client (issue 3): units, and interop with mesh-sandbox and mesh-client."""
