"""What every layer may use: command-line options from config dataclasses, the machine a figure came from."""
