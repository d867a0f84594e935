"""The StateFun greeter, embedded: each person is greeted with how often they have been seen.

Run it with ``python examples/greeter.py`` (a local Ray is started) or ``ray job submit -- python
examples/greeter.py`` on a cluster: the program is the same.
"""

from __future__ import annotations

import rayfun
from rayfun import IntType, StatefulFunctions, StringType, ValueSpec, egress_message_builder, message_builder
from rayfun.connectors.memory import MemorySource

functions = StatefulFunctions()


@functions.bind(typename="example/person", specs=[ValueSpec(name="visits", type=IntType)])
def person(context, message):
    visits = (context.storage.visits or 0) + 1
    context.storage.visits = visits
    context.send(message_builder(target_typename="example/greeter", target_id=context.address.id, int_value=visits))


@functions.bind(typename="example/greeter")
def greeter(context, message):
    visits = message.as_int()
    name = context.address.id
    greeting = f"Hello {name}!" if visits == 1 else f"Hello again {name}, visit number {visits}!"
    context.send_egress(
        egress_message_builder(target_typename="example/greetings", value=greeting, value_type=StringType)
    )


def main() -> None:
    names = ["Alice", "Bob", "Alice", "Carol", "Bob", "Alice"]
    ingress = MemorySource([("example/person", name, "visit") for name in names], id="example/names")
    app = rayfun.start(functions, shards=2, ingresses=[ingress], ray_init={"num_cpus": 2})
    try:
        app.send("example/person", "Dave", "visit")
        for greeting in app.egress("greetings"):
            print(greeting)
        print("Alice's state:", app.state("example/person", "Alice"))
    finally:
        app.stop()


if __name__ == "__main__":
    main()
