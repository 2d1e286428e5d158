"""The peer: a quixstreams app doing the streamrec worker's state work without scoring (``peer_state``): parse,
RocksDB read-modify-write of the user's state with its changelog, one JSON message out per event.

Runs in the benchmark's own venv (``bench/.venv-peers``, made by ``bench/e2e_bench.py``), never the project's:
    python quix_app.py BOOTSTRAP SOURCE SINK GROUP STATE_DIR
"""

import sys

from quixstreams import Application

from peer_state import answer, step


def main() -> None:
    bootstrap, source, sink, group, state_dir = sys.argv[1:6]
    app = Application(broker_address=bootstrap, consumer_group=group, auto_offset_reset="earliest",
                      state_dir=state_dir, loglevel="WARNING", commit_interval=1.0)
    src = app.topic(source, key_deserializer="bytes", value_deserializer="json")
    out = app.topic(sink, key_serializer="bytes", value_serializer="json")

    def process(event: dict, state) -> dict:
        state.set("s", step(state.get("s"), event))
        return answer(event)

    app.dataframe(src).apply(process, stateful=True).to_topic(out)
    app.run()


if __name__ == "__main__":
    main()
