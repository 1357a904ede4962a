"""What the test packages share: rigs, factories, oracles, processes, waiting.

Plain modules named for what they hold; a test imports what it needs from here, never from
another package's conftest or test module. The fixtures defined here are registered once, in
tests/conftest.py (`pytest_plugins`), so every package can ask for them by name.
"""
