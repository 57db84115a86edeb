"""The command line: `exfacegan <command>` (main.py, one module per command), the one error wrapper every entry
point uses (entry.py) and the sweep callback (sweep.py). Nothing here holds method logic; commands call stages."""
