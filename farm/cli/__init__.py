"""The `farm` command line, one module per command (group).

Each module in this package that defines a click command named ``command`` (or a list
``commands``) is added to the
``farm`` group by ``main.py``; heavy imports (celery, ray, pandas) stay inside the functions so
``farm --help`` is fast.
"""
