"""Image providers behind one small interface; `build_provider` picks one from settings."""
