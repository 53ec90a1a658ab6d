"""chatserver: a respond()-driven, ChatKit-compatible chat server with resumable streams."""

__version__ = "0.1.0"
