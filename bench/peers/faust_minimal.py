"""Faust's own ceiling: a textbook Faust app (one ``async for`` step per event, one table write, one send) doing
the same state work as the peers (``peer_state``). Runs in the project venv (Faust is a project dependency):
    python faust_minimal.py worker -l warning --web-port PORT     (settings from BENCH_* env vars)
"""

import os

import faust
import orjson

from peer_state import answer, step

env = os.environ
app = faust.App(env["BENCH_APP_ID"], broker="kafka://" + env["BENCH_BOOTSTRAP"], store="rocksdb://",
                datadir=env["BENCH_DATA_DIR"], topic_partitions=4, broker_commit_interval=1.0,
                web_port=int(env["BENCH_WEB_PORT"]))
source = app.topic(env["BENCH_SOURCE"], key_serializer="raw", value_serializer="raw")
sink = app.topic(env["BENCH_SINK"], key_serializer="raw", value_serializer="raw")
state = app.Table("state", default=None, partitions=4, key_type=bytes, value_type=bytes)


@app.agent(source)
async def process(stream):
    async for event in stream.events():
        ev = orjson.loads(event.value)
        raw = state.get(event.key)
        state[event.key] = orjson.dumps(step(None if raw is None else orjson.loads(raw), ev))
        await sink.send(key=event.key, value=orjson.dumps(answer(ev)))


if __name__ == "__main__":
    app.main()
