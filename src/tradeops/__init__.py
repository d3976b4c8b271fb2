"""tradeops: the Python side of the tradeops.remediation collection (runner, reports, lab)."""

__version__ = "0.1.0"
