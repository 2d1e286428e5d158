"""``streamrec worker --processes N``: what each child process is told."""

from streamrec.config import Settings
from streamrec.tools.processes import child_env


def test_each_child_gets_every_setting_its_own_data_dir_and_port_and_runs_alone():
    s = Settings(processes=3, data_dir="/data/w", web_port=7000, take_batch=512, kafka_sasl_password="pw")
    envs = [child_env(s, i, {"PATH": "/bin"}) for i in range(3)]
    assert [e["STREAMREC_DATA_DIR"] for e in envs] == ["/data/w/p0", "/data/w/p1", "/data/w/p2"]
    assert [e["STREAMREC_WEB_PORT"] for e in envs] == ["7000", "7001", "7002"]
    for e in envs:
        child = Settings.from_env(e)
        assert child.processes == 1 and child.take_batch == 512 and child.kafka_sasl_password == "pw"
        assert e["PATH"] == "/bin"
