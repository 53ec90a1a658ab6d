"""chatserver: a respond()-driven, ChatKit-compatible chat server with durable, resumable streams."""

__version__ = "0.1.0"
