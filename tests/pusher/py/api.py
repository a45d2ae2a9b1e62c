"""Drives the HTTP API of a uringcast --mode pusher server with the real Python `pusher` SDK.

Run by tests/pusher/clients.rs with PUSHER_HOST, PUSHER_PORT, PUSHER_APP_ID, PUSHER_KEY and
PUSHER_SECRET set, after it has subscribed one raw client to presence-py as user py-user
(and signed it in as py-user). Prints `ok api` and exits 0 when every check passed.
"""
import os
import sys

import pusher

env = os.environ
client = pusher.Pusher(
    app_id=env["PUSHER_APP_ID"],
    key=env["PUSHER_KEY"],
    secret=env["PUSHER_SECRET"],
    host=env["PUSHER_HOST"],
    port=int(env["PUSHER_PORT"]),
    ssl=False,
)


def check(what, got, want):
    if got != want:
        print(f"{what}: got {got!r}, want {want!r}", file=sys.stderr)
        sys.exit(1)


check("trigger", client.trigger("presence-py", "from-python", {"n": 1}), {})
check(
    "trigger_batch",
    client.trigger_batch(
        [
            {"channel": "presence-py", "name": "batch-1", "data": "one"},
            {"channel": "presence-py", "name": "batch-2", "data": "two"},
        ]
    ),
    {"batch": [{}, {}]},
)
check(
    "channels_info",
    client.channels_info(prefix_filter="presence-", attributes=["user_count"]),
    {"channels": {"presence-py": {"user_count": 1}}},
)
check(
    "channel_info",
    client.channel_info("presence-py", attributes=["user_count", "subscription_count"]),
    {"occupied": True, "user_count": 1, "subscription_count": 1},
)
check("channel_info empty", client.channel_info("nobody-here"), {"occupied": False})
check("users_info", client.users_info("presence-py"), {"users": [{"id": "py-user"}]})
# A wrong secret is refused with 401, which the SDK raises as AuthenticationError.
wrong = pusher.Pusher(
    app_id=env["PUSHER_APP_ID"],
    key=env["PUSHER_KEY"],
    secret="not-the-secret",
    host=env["PUSHER_HOST"],
    port=int(env["PUSHER_PORT"]),
    ssl=False,
)
try:
    wrong.trigger("presence-py", "forged", {})
    print("a wrong secret was accepted", file=sys.stderr)
    sys.exit(1)
except pusher.errors.PusherBadAuth:
    pass
check("terminate", client.terminate_user_connections("py-user"), {})
print("ok api")
