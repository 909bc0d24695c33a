"""ucgate: a security gateway for Skype for Business / Lync and Exchange ActiveSync."""

__version__ = "0.1.0"
