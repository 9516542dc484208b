"""The commands behind the top-level scripts and the console scripts (``taskqueue-emit``,
``taskqueue-worker``, ``taskqueue-report``): parsing and wiring only, each a ``main()``."""
