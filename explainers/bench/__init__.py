"""The bench: the pytest plugin (options, session, fixtures), benchmark records, CPU accounting, reports."""
