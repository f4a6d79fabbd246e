"""Configuration helpers: defaults shared by configs/, argument parsing, validation."""
