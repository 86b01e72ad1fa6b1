"""Settings for inner pytest runs (``pytester``) that load the sprites pytest plugin."""

FAST = ("-p", "no:cacheprovider", "-p", "no:hypothesispytest")
"""Inner runs skip plugins they do not need (hypothesis alone costs a second)."""

INI = """
[pytest]
asyncio_mode = auto
asyncio_default_fixture_loop_scope = function
filterwarnings = error
{extra}
"""
