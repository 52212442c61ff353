"""The commands: cli (argument parsing, exit codes), run, compare, export; console (rich output)."""
