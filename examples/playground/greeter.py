"""The greeter, written with the official StateFun SDK: ``person`` counts visits, ``greeter`` answers on the
playground egress. ``greeter_embedded.py`` is this very file with the import line changed to rayfun."""

from statefun import IntType, StatefulFunctions, ValueSpec, egress_message_builder, make_json_type, message_builder

GREET_REQUEST = make_json_type("example/GreetRequest")
EGRESS_RECORD = make_json_type("io.statefun.playground/EgressRecord")

functions = StatefulFunctions()


@functions.bind(typename="example/person", specs=[ValueSpec(name="visits", type=IntType)])
def person(context, message):
    request = message.as_type(GREET_REQUEST)
    visits = (context.storage.visits or 0) + 1
    context.storage.visits = visits
    context.send(message_builder(target_typename="example/greeter", target_id=request["name"], int_value=visits))


@functions.bind(typename="example/greeter")
def greeter(context, message):
    visits = message.as_int()
    name = context.address.id
    greeting = f"Hello {name}!" if visits == 1 else f"Hello again {name}, visit number {visits}!"
    record = {"topic": "greetings", "payload": greeting}
    context.send_egress(
        egress_message_builder(target_typename="io.statefun.playground/egress", value=record, value_type=EGRESS_RECORD)
    )
