"""Django Channels, a peer in uringcast's benchmarks (scripts/bench.sh), written as Channels'
tutorial shows (docs/tutorial/part_2 and part_3): an AsyncWebsocketConsumer that joins a group
(`channel_layer.group_add`) and broadcasts with `group_send` to a handler method, a group per
topic, and the in-memory channel layer on one node (`InMemoryChannelLayer`); served by Daphne.

The benchmark's URL convention (scripts/peers/README.md):
  /<topic>          joins <topic>; every message it sends goes to the topic, itself included
  /publish/<topic>  joins nothing; every message it sends goes to <topic>'s subscribers
MODE=echo sends each message back to its sender instead. The opcode is kept.
Backpressure: the in-memory layer holds at most CAPACITY messages per consumer and drops what
comes beyond (its own policy); CAPACITY is 16384, 1 MiB of 64-byte messages.

Run: PYTHONPATH=scripts/peers/channels daphne -b 127.0.0.1 -p PORT --ping-interval 86400 server:application
"""
import os
import re

import django
from django.conf import settings

settings.configure(
    DEBUG=False,
    ALLOWED_HOSTS=["*"],
    SECRET_KEY="uringcast-bench",
    INSTALLED_APPS=["channels"],
    CHANNEL_LAYERS={
        "default": {
            "BACKEND": "channels.layers.InMemoryChannelLayer",
            "CONFIG": {"capacity": 16384},
        }
    },
)
django.setup()

from channels.generic.websocket import AsyncWebsocketConsumer  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.urls import re_path  # noqa: E402

ECHO = os.environ.get("MODE") == "echo"


def group_of(topic):
    """A group name Channels accepts: ASCII letters, digits, '-', '_' and '.', under 100."""
    return "t." + re.sub(r"[^A-Za-z0-9._-]", "_", topic)[:90]


class TopicConsumer(AsyncWebsocketConsumer):
    async def connect(self):
        path = self.scope["path"]
        self.publish_only = path.startswith("/publish/")
        if self.publish_only:
            path = path[len("/publish"):]
        self.group = group_of("/" if path == "/" else path[1:])
        self.subscribed = not ECHO and not self.publish_only
        if self.subscribed:
            await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()

    async def disconnect(self, code):
        if self.subscribed:
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def receive(self, text_data=None, bytes_data=None):
        if ECHO:
            await self.send(text_data=text_data, bytes_data=bytes_data)
            return
        await self.channel_layer.group_send(
            self.group, {"type": "topic.message", "text": text_data, "bytes": bytes_data}
        )

    async def topic_message(self, event):
        await self.send(text_data=event["text"], bytes_data=event["bytes"])


application = ProtocolTypeRouter(
    {"websocket": URLRouter([re_path(r"^.*$", TopicConsumer.as_asgi())])}
)
