"""The rotation engine: pure decisions over gathered data, I/O through narrow ports."""
