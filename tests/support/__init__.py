"""Helpers shared by the test folders, imported one way everywhere:
``from tests.support.<module> import ...``.

- ``faultkit``: fault-test tools (wait_until, admin connections, peak monitor, ...).
- ``helpers``: a recording PoolObserver and a log capture.
- ``membrane_factory``: a generated kgents membrane.db holding every track.
- ``migrate_cli``: running ``connman migrate|verify`` as a user does, and reading its summary.
- ``userproc``: a user's process (fresh environment, ``python -c``) for end-to-end tests.
- ``pgbouncer_load``: the multi-process load driven through PgBouncer.
- ``pg_access``: URLs written by hand that keep the plugin's password; roles of a test's own.
"""
