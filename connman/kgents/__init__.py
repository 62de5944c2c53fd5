"""kgents' domain on top of connman's core: the D-gent and Brain stores
(:mod:`.dgent`, :mod:`.brain`), kgents' own names and signatures (:mod:`.compat`),
the tables (:mod:`.schema`), the cross-store check (:mod:`.coherence`), the demo
(:mod:`.demo`) and D-gent's errors (:mod:`.errors`).

The core (URLs, config, resolution, drivers, pools, the manager, stats, logging,
metrics, migration) does not import this package; ``tests/unit/test_layering.py``
checks that, and lists the few core modules that bridge to it on purpose. Importing
``connman.kgents`` imports nothing else: each submodule loads when it is imported.
"""
