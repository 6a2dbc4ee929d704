"""Root conftest: the plugin itself is installed with the package (entry point ``pytest11``)."""
