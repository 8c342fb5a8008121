"""Fuzz harnesses (atheris) over the file reader, parser, convention detector and key resolver."""
