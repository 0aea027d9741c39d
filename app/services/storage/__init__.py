"""Object storage behind one small interface; `build_storage` picks one from settings."""
