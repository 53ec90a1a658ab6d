from chatserver.responders.echo import EchoChatServer
from chatserver.responders.messages import stream_assistant_message

__all__ = ["EchoChatServer", "stream_assistant_message"]
