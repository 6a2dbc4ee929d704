"""The library: the serial KernelSHAP engine, its coalitions and row caches, and the Ray front end with its backends."""
