"""The showcase, written with the official StateFun SDK. ``functions_embedded.py`` is this very file with the
import line changed to rayfun (tests/compat/test_showcase.py checks that).

- showcase/types: what kind of value came, by the SDK's type checks; keeps the last one as text
- showcase/messaging: sends every built-in type and a JSON value to types, one message to itself, one delayed
  message, and asks showcase/async for a profile, which it passes on to types
- showcase/egress: one record to the Kafka egress
- showcase/storage: an int, a string that expires, a JSON value set and then deleted
- showcase/async: builds a protobuf UserProfile with awaits, keeps it, replies to its caller
- showcase/serving: counts the greet requests of each name (from Kafka) and answers on the Kafka egress
"""

import asyncio
from datetime import timedelta

from statefun import (
    IntType,
    StatefulFunctions,
    StringType,
    ValueSpec,
    kafka_egress_message,
    make_json_type,
    make_protobuf_type,
    message_builder,
)

from .profile import UserProfile

GREET_REQUEST = make_json_type("showcase/GreetRequest")
USER_PROFILE = make_protobuf_type(UserProfile)
KAFKA_EGRESS = "showcase/greets"
FUTURE_DELAY = timedelta(seconds=1)

functions = StatefulFunctions()


@functions.bind("showcase/types", specs=[ValueSpec("last", StringType)])
def types(context, message):
    if message.is_bool():
        kind, value = "bool", message.as_bool()
    elif message.is_int():
        kind, value = "int", message.as_int()
    elif message.is_long():
        kind, value = "long", message.as_long()
    elif message.is_float():
        kind, value = "float", message.as_float()
    elif message.is_string():
        kind, value = "string", message.as_string()
    elif message.is_double():
        kind, value = "double", message.as_double()
    elif message.is_type(GREET_REQUEST):
        kind, value = "json", message.as_type(GREET_REQUEST)
    elif message.is_type(USER_PROFILE):
        profile = message.as_type(USER_PROFILE)
        kind, value = "protobuf", (profile.name, profile.favorite_ice_cream, profile.favorite_tv_show)
    else:
        kind, value = "unknown " + message.value_typename(), message.raw_value()
    context.storage.last = f"{kind} {value!r}"


@functions.bind("showcase/messaging", specs=[ValueSpec("trigger", StringType), ValueSpec("echoes", IntType)])
def messaging(context, message):
    if message.is_type(USER_PROFILE):  # showcase/async answered: hand the profile on to types
        profile = message.as_type(USER_PROFILE)
        context.send(message_builder("showcase/types", "profile", value=profile, value_type=USER_PROFILE))
        return
    if message.is_string() and message.as_string() == "echo":  # the message this function sent itself
        context.storage.echoes = (context.storage.echoes or 0) + 1
        return
    context.storage.trigger = f"{message.value_typename()} {len(message.raw_value())} bytes"
    to = "showcase/types"
    context.send(message_builder(target_typename=to, target_id="bool", bool_value=True))
    context.send(message_builder(target_typename=to, target_id="int", int_value=-7))
    context.send(message_builder(target_typename=to, target_id="long", long_value=2**40 + 1))
    context.send(message_builder(target_typename=to, target_id="float", float_value=3.14159e11))
    context.send(message_builder(target_typename=to, target_id="double", double_value=3.14159e11))
    context.send(message_builder(target_typename=to, target_id="string", str_value="grüß dich"))
    context.send(message_builder(to, "json", value={"name": "Ada", "tags": [1, 2]}, value_type=GREET_REQUEST))
    me = context.address
    context.send(message_builder(target_typename=me.typename, target_id=me.id, str_value="echo"))
    later = message_builder(target_typename=to, target_id="future", str_value="sent a second ago")
    context.send_after(FUTURE_DELAY, later)
    context.send(message_builder("showcase/async", "Gordon", str_value="who are you?"))


@functions.bind("showcase/egress")
def egress(context, message):
    record = kafka_egress_message(
        typename=KAFKA_EGRESS, topic="showcase-egress", key=context.address.id, value=message.as_string().upper()
    )
    context.send_egress(record)


@functions.bind(
    "showcase/storage",
    specs=[
        ValueSpec(name="an_int", type=IntType),
        ValueSpec(name="an_expiring_str", type=StringType, expire_after_write=timedelta(days=7)),
        ValueSpec(name="greet_json", type=GREET_REQUEST),
    ],
)
def storage(context, message):
    store = context.storage
    store.an_int = (store.an_int or 0) + message.as_int()
    if store.an_expiring_str is None:  # never set, or expired
        store.an_expiring_str = f"first set by call number {store.an_int}"
    if store.greet_json is None:
        store.greet_json = {"name": context.address.id}
    else:
        del store.greet_json


async def favorite_ice_cream(name):
    await asyncio.sleep(0.05)
    return "pistachio" if name.startswith("G") else "vanilla"


async def favorite_tv_show(name):
    await asyncio.sleep(0.02)
    return f"{name} and the Quiet Shard"


@functions.bind("showcase/async", specs=[ValueSpec("user_profile", USER_PROFILE)])
async def async_ops(context, message):
    profile = context.storage.user_profile
    if profile is None:
        name = context.address.id
        profile = UserProfile(name=name)
        profile.favorite_ice_cream = await favorite_ice_cream(name)
        profile.favorite_tv_show = await favorite_tv_show(name)
        context.storage.user_profile = profile
    caller = context.caller
    if caller is not None:
        context.send(message_builder(caller.typename, caller.id, value=profile, value_type=USER_PROFILE))


@functions.bind("showcase/serving", specs=[ValueSpec("seen", IntType)])
def serving(context, message):
    seen = (context.storage.seen or 0) + 1
    context.storage.seen = seen
    name = message.as_type(GREET_REQUEST)["name"]
    greeting = f"Hello {name}! I've seen you {seen} times!"
    context.send_egress(kafka_egress_message(typename=KAFKA_EGRESS, topic="greetings", key=name, value=greeting))
