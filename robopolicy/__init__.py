"""robopolicy: teleoperated demonstrations to policies on robots."""

__version__ = "0.1.0"
