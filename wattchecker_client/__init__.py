"""wattchecker-client: read a RATOC REX-BTWATTCH1 power meter and keep every reading."""

__version__ = "0.1.0"
