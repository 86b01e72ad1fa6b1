"""pytest plugin: fixtures that run tests against the local Sprites emulator."""
